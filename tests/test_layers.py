"""Layers import only downward: every import in the production packages is checked against the layer map.

The map is the README's "Architecture" section in code. A module belongs to
the most specific layer whose prefix names it; it may import its own layer
and the layers listed for it, nothing else (imports inside functions count
too: a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "pretrain", "serving", "torchx_components")

# layer -> module prefixes (the most specific prefix wins)
LAYERS: dict[str, tuple[str, ...]] = {
    "ground": ("recsys", "recsys.config_file", "recsys.settings", "recsys.allocator", "recsys.distributed"),
    "data": ("recsys.data",),
    "metrics": ("recsys.eval.metrics",),  # pure tensor functions: the ground floor of evaluation
    "world": ("recsys.world",),
    "models": ("recsys.models",),
    "pretrain": ("pretrain",),
    "train": ("recsys.train",),
    "eval": ("recsys.eval",),
    "serving": ("serving",),
    # the online ranker: a finished CTR run (train, eval's run checks) behind Triton and the encoder's client
    "ranking": ("serving.ranker", "serving.ranker_export", "serving.ranker_client", "serving.ranker_log",
                "serving.ranker_online", "serving.ranker_script", "serving.ranker_production",
                "serving.triton_models.ranker", "serving.triton_models.ranker_features"),
    "components": ("torchx_components",),
    "top": ("recsys.pipeline", "recsys.cli"),
}

# layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "data": {"ground"},
    "metrics": set(),
    "world": {"ground", "data"},
    "models": {"ground", "data"},
    "pretrain": {"ground", "data"},
    "train": {"ground", "data", "metrics", "models"},
    "eval": {"ground", "data", "metrics", "models", "train"},
    "serving": {"ground", "data", "pretrain"},
    "ranking": {"ground", "data", "metrics", "models", "train", "eval", "serving"},
    # job definitions: their defaults name the stages' config fields (config modules load no torch)
    "components": {"ground", "data", "world", "models", "pretrain", "train", "serving", "ranking"},
    "top": set(LAYERS),
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, or ``None`` outside the production packages.

    Example::

        >>> layer_of("recsys.eval.metrics"), layer_of("recsys.eval.report"), layer_of("torch")
        ('metrics', 'eval', None)
    """
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, here: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement of module ``here`` (file ``path``), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # `from recsys import eval` names a module too
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names if layer_of(f"{mod}.{a.name}") != layer_of(mod)]
    return found


def _files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def upward_imports(modules: list[tuple[Path, str]]) -> list[str]:
    """Every import that leaves its layer's allowed set, as ``file:line: a (layer) imports b (layer)``."""
    bad = []
    for f, name in modules:
        src = layer_of(name)
        assert src is not None, f"{f}: no layer; add its package to LAYERS"
        for line, mod in imports_of(f, name):
            dst = layer_of(mod)
            if dst is None or dst == src or dst in ALLOWED[src]:
                continue
            bad.append(f"{f}:{line}: {name} ({src}) imports {mod} ({dst})")
    return bad


def test_every_production_module_imports_only_downward() -> None:
    bad = upward_imports([(f, _module_name(f)) for f in _files()])
    assert not bad, "imports against the layer order (tests/test_layers.py LAYERS/ALLOWED):\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The walker sees a lazy import from the data layer into training (the kind of import the test exists for)."""
    fake = tmp_path / "probe.py"
    fake.write_text("import numpy\nfrom recsys.data import schema\ndef f():\n"
                    "    from recsys.train.trainer import TrainJob\n    from ..eval import report\n")
    bad = upward_imports([(fake, "recsys.data.probe")])
    assert len(bad) == 2, bad
    assert "recsys.data.probe (data) imports recsys.train.trainer (train)" in bad[0]
    assert ":5: recsys.data.probe (data) imports recsys.eval (eval)" in bad[1]


@pytest.mark.parametrize("module,allowed", [("recsys.train.x", "recsys.eval.metrics"), ("serving.x", "pretrain.encoder")])
def test_allowed_edges_pass(module: str, allowed: str) -> None:
    assert layer_of(allowed) in ALLOWED[layer_of(module)] | {layer_of(module)}
