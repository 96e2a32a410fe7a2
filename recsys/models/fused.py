"""Fused CPU kernels for the passes over a history: the frozen multimodal one, and the ID model's.

Notation:

* ``B``: batch size; ``L``: padded history length; ``D``: vector width.
* ``T``: SimTier tiers; ``H``: width of an attention unit's one hidden layer.

Two parts of a multimodal training step read every (frozen) history
vector against a per-impression query: SimTier's tiers (soft: forward and
the learned metric's backward; the paper's hard tiers: forward, as they
pass no gradient) and MAKE's target attention (forward, and
the backward of its weights and query when MAKE trains: stage 1, and stage 2
unless ``make_frozen`` or ``make_attention_frozen``; forward only at evaluation). As eager ops each is 6
to 10 whole-tensor passes with (B, L, H) temporaries; the kernels in
``csrc/frozen_history.cpp`` walk each impression's history once, skipping
padded positions; in training the attention keeps one (B, L, H) tensor, its
hidden layer's pre-activations, for its backward, where the eager ops keep
several (2-5x faster on one CPU thread, ``bench/fused``). The same
attention kernels run the ID model's target attention, whose keys are its
trained embeddings: their backward also gives the keys' gradient (zeros at
padded positions), which flows on to the embedding tables. MAKE's bilinear
attention (``ModelConfig.make_attention: bilinear``) has its own pair, one
pass forward and one backward over the frozen history, any D.

They are C++ built with ``torch.utils.cpp_extension`` (g++ and ninja;
about 20 s once, then cached by source hash) and registered as
``torch.ops.mmctr_fused``. A module asked for them (``fused=True``, from
``ModelConfig.fused_kernels``) builds them in its constructor, so no forward
compiles anything. They run only where they apply: CPU float32 tensors on a
CPU with AVX2 (the build uses ``-mavx2 -mfma``), SimTier's D in {8, 16, 32,
64}, the attention's H in {8, 16, 32} (any D). Everywhere else (GPU, other
widths, no compiler) the modules keep their eager ops, which compute the
same values: the tests hold the two to 1e-5 (values) and 1e-4 (gradients).
``fused_kernels: false`` in the model config turns them off; ``MMCTR_FUSED=0``
(or ``1``) at launch overrides the config
(:func:`config_override`, applied once where the job's config is read).

Example::

    >>> history = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    >>> query, weight = history[:, 0].contiguous(), torch.ones(2, 3)
    >>> if load() and applies(history, query):  # the shares of each row sum to 1
    ...     counts = torch.ops.mmctr_fused.soft_tiers(history, query, weight, 4)
    ... else:
    ...     counts = torch.full((2, 4), 0.25)
    >>> counts.sum(dim=1).round(decimals=5).tolist()
    [1.0, 1.0]
    >>> env_override({"MMCTR_FUSED": "0"}), env_override({})
    (False, None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from recsys.models.config import ModelConfig

SOURCE = Path(__file__).with_name("csrc") / "frozen_history.cpp"
EXTENSION = "mmctr_fused"  # torch.ops namespace, and the name the build is cached under
ENV_OVERRIDE = "MMCTR_FUSED"  # "0" / "1": overrides ModelConfig.fused_kernels at launch
TIER_WIDTHS = (8, 16, 32, 64)  # D the SimTier kernels take
HIDDEN_WIDTHS = (8, 16, 32)  # H the attention kernel takes
AVX2_CAPABILITIES = ("AVX2", "AVX512")  # torch.backends.cpu.get_cpu_capability() values the build targets
_CFLAGS = ["-O3", "-mavx2", "-mfma"]


def env_override(environ: Mapping[str, str] | None = None) -> bool | None:
    """``MMCTR_FUSED`` as an override of ``ModelConfig.fused_kernels``: ``"0"`` False, ``"1"`` True, unset None.

    Args:
        environ (Mapping[str, str] | None): the environment to read (``None``: ``os.environ``).

    Returns:
        bool | None: the override, or None where the variable is unset or empty.
    """
    value = (os.environ if environ is None else environ).get(ENV_OVERRIDE, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_OVERRIDE} must be 0 (eager ops) or 1 (fused kernels), got {value!r}")
    return value == "1"


def config_override(config: ModelConfig, environ: Mapping[str, str] | None = None) -> ModelConfig:
    """``config`` with ``fused_kernels`` set by ``MMCTR_FUSED`` where it is set (a new config; read it once, at launch).

    Example::

        >>> config_override(ModelConfig(), {"MMCTR_FUSED": "0"}).fused_kernels
        False
        >>> config_override(ModelConfig(fused_kernels=False), {}).fused_kernels
        False
    """
    override = env_override(environ)
    if override is None or override == config.fused_kernels:
        return config
    return dataclasses.replace(config, fused_kernels=override)


@functools.cache
def load() -> bool:
    """Builds (once per source hash) and loads the kernels; False, with a warning, where it cannot.

    Called by the constructors of modules built with ``fused=True``; the
    result is kept for the process, so only the first call builds or loads.
    Nothing is built on a machine with a GPU: the models run there, on the eager ops.
    """
    if torch.backends.cpu.get_cpu_capability() not in AVX2_CAPABILITIES or torch.cuda.is_available():
        return False
    try:
        from torch.utils.cpp_extension import load as build

        with _ninja_on_path():
            build(name=EXTENSION, sources=[str(SOURCE)], extra_cflags=_CFLAGS, is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, no ninja, a read-only cache: the eager ops still run
        warnings.warn(f"{SOURCE.name}: fused kernels not built ({type(e).__name__}: {e}); using eager ops", stacklevel=3)
        return False
    return True


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """During the build only: cpp_extension runs ``ninja`` from PATH, so add the ``ninja`` wheel's binary
    when PATH has none (``.venv/bin/mmctr`` run without activating the venv); PATH is restored after."""
    ninja_bin = None
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            ninja_bin = ninja.BIN_DIR
    if ninja_bin is None:
        yield
        return
    before = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join([ninja_bin, before or ""])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: all float32 on CPU (the caller checks its widths,
    and that it was built with ``fused=True``, i.e. that :func:`load` succeeded)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
