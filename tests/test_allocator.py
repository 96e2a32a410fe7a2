"""glibc's malloc thresholds: pinned by the entry points, never by a library call."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = platform.libc_ver()[0] == "glibc"


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's: other C libraries have no malloc thresholds to pin")
def test_init_distributed_leaves_the_allocator_alone_and_the_cli_pins_it() -> None:
    code = (
        "import contextlib\n"
        "from recsys import allocator\n"
        "from recsys.distributed import init_distributed\n"
        "init_distributed()\n"
        "before = allocator.pinned()\n"
        "from recsys.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
        "    main(['--help'])\n"
        "print(before, allocator.pinned())\n"
    )
    assert run_python(code) == "False True"
