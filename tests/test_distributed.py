"""recsys.distributed.on_main on two real gloo ranks: rank 0's failure reaches every rank, none waits for the timeout."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.distributed import DistContext, MainRankError, on_main

TIMEOUT_S = 60  # the process group's; the old `if is_main: ...; barrier()` waited this long, then failed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, init: str, out: str, fail: bool) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    ctx = DistContext(rank=rank, world_size=world_size, device=torch.device("cpu"))
    marker = Path(out) / "written"

    def work() -> int:
        if fail:
            raise OSError(28, "No space left on device", "checkpoints/latest.pt")
        marker.write_text("rank 0")
        return 41

    try:
        result = on_main(ctx, work)
        seen = marker.exists()  # rank 0's write is done before on_main returns anywhere
        record = {"result": result, "seen": seen}
    except Exception as e:
        record = {"raised": type(e).__name__, "message": str(e)}
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def _run(tmp_path: Path, fail: bool) -> list[dict]:
    mp.spawn(_worker, args=(2, f"tcp://127.0.0.1:{_free_port()}", str(tmp_path), fail), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_on_main_returns_rank_0s_result_after_its_work(tmp_path) -> None:
    rank0, rank1 = _run(tmp_path, fail=False)
    assert rank0 == {"result": 41, "seen": True}
    assert rank1 == {"result": None, "seen": True}


def test_a_failure_on_rank_0_is_raised_on_every_rank(tmp_path) -> None:
    rank0, rank1 = _run(tmp_path, fail=True)
    assert rank0["raised"] == "OSError" and "No space left" in rank0["message"]
    assert rank1["raised"] == "MainRankError"
    assert "rank 0 failed" in rank1["message"] and "No space left on device" in rank1["message"], rank1


def test_one_process_runs_the_work_plainly() -> None:
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    assert on_main(ctx, lambda: "done") == "done"
    with pytest.raises(ValueError, match="bad file"):
        on_main(ctx, lambda: (_ for _ in ()).throw(ValueError("bad file")))
    assert MainRankError.__mro__[1] is RuntimeError
