"""Fused CPU kernels for the passes over the frozen multimodal history.

Notation:

* ``B``: batch size; ``L``: padded history length; ``D``: vector width.
* ``T``: SimTier tiers; ``H``: width of an attention unit's one hidden layer.

Two passes of a multimodal training step read every (frozen) history
vector against a per-impression query: SimTier's soft tiers (forward and
the learned metric's backward) and MAKE's target attention when it runs
without gradients (``make_frozen``, and every model at evaluation). As
eager ops each is 6 to 10 whole-tensor passes with (B, L, H) temporaries;
the kernels in ``csrc/frozen_history.cpp`` walk each impression's history
once (2-3x faster on one CPU thread, ``bench/train``).

They are C++ built on first use with ``torch.utils.cpp_extension`` (g++
and ninja; about 20 s once, then cached by source hash) and registered as
``torch.ops.mmctr_fused``. They run only where they apply: CPU float32
tensors on a CPU with AVX2 (the build uses ``-mavx2 -mfma``), D in
{8, 16, 32, 64}, H in {8, 16, 32}. Everywhere else (GPU, other widths, no
compiler) the modules keep their eager ops, which compute the same values:
the tests hold the two to 1e-5. ``MMCTR_FUSED=0`` in the environment, or
:func:`disabled`, turns the kernels off.

Example::

    >>> history = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    >>> query, weight = history[:, 0].contiguous(), torch.ones(2, 3)
    >>> if applies(history, query):  # the shares of each row sum to 1
    ...     counts = torch.ops.mmctr_fused.soft_tiers(history, query, weight, 4)
    ... else:
    ...     counts = torch.full((2, 4), 0.25)
    >>> counts.sum(dim=1).round(decimals=5).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "frozen_history.cpp"
EXTENSION = "mmctr_fused"  # torch.ops namespace, and the name the build is cached under
ENV_SWITCH = "MMCTR_FUSED"  # "0": keep the eager ops
TIER_WIDTHS = (8, 16, 32, 64)  # D the SimTier kernels take
HIDDEN_WIDTHS = (8, 16, 32)  # H the attention kernel takes
AVX2_CAPABILITIES = ("AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability() values the build targets
_CFLAGS = ["-O3", "-mavx2", "-mfma"]

_switched_off = False


@functools.cache
def _load() -> bool:
    """Builds (once per source hash) and loads the kernels; False, with a warning, where it cannot."""
    if torch.backends.cpu.get_cpu_capability() not in AVX2_CAPABILITIES:
        return False
    _ninja_on_path()
    try:
        from torch.utils.cpp_extension import load

        load(name=EXTENSION, sources=[str(SOURCE)], extra_cflags=_CFLAGS, is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, no ninja, a read-only cache: the eager ops still run
        warnings.warn(f"{SOURCE.name}: fused kernels not built ({type(e).__name__}: {e}); using eager ops", stacklevel=3)
        return False
    return True


def _ninja_on_path() -> None:
    """cpp_extension runs ``ninja`` from PATH: add the ``ninja`` wheel's binary when PATH has none
    (``.venv/bin/mmctr`` run without activating the venv)."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def enabled() -> bool:
    """Whether the kernels are switched on and built (builds them on the first call)."""
    return not _switched_off and os.environ.get(ENV_SWITCH, "1") != "0" and _load()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Runs the block with the eager ops (to compare, or to time the two)."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: all float32 on CPU, and the kernels enabled."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and enabled()
