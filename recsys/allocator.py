"""Fixed glibc malloc thresholds for training processes: steady step times from one process to the next.

A training step allocates and frees activations of several MB ((B, L, H)
tensors: 2,048 x 50 x 32 floats = 13 MB). glibc serves blocks above its mmap
threshold with fresh ``mmap`` pages, each zero-filled on first touch and
unmapped on free, and moves that threshold with the process's allocation
history. So the same step ran at 35k samples/s in one process and 47k in the
next (``bench/train``, id_only on one CPU thread): ReLU and its backward
took 10x longer when their outputs were freshly mapped. Fixing the threshold
at its maximum (32 MiB on 64-bit) and never trimming the heap below 1 GiB
keeps such blocks on the reused heap: every process gets the fast case.

It is process-wide, so only entry points call it: ``mmctr`` (``recsys.cli.main``,
also what ``torchrun``/TorchX start through ``python -m recsys.cli``) and the
``bench`` scripts, each first thing; :func:`pinned` tells a run's log whether it happened.

Example::

    >>> import platform
    >>> pin_malloc_thresholds() == (platform.libc_ver()[0] == "glibc")  # applied exactly where glibc runs
    True
    >>> pinned() == (platform.libc_ver()[0] == "glibc")
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_pinned = False  # whether pin_malloc_thresholds succeeded in this process (a record, read by pinned())


def pin_malloc_thresholds() -> bool:
    """Sets glibc's mmap and trim thresholds (module docstring); True if applied.

    Returns:
        bool: False where the C library has no ``mallopt`` (not glibc) or refuses.
    """
    global _pinned
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    _pinned = _pinned or applied
    return applied


def pinned() -> bool:
    """Whether this process pinned the thresholds (:func:`pin_malloc_thresholds` succeeded), for the run's log."""
    return _pinned
