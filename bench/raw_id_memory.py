"""``python -m bench.raw_id_memory``: peak memory of validate and training on raw 64-bit IDs vs dense IDs.

One world generated twice with the same seed (the simulated world is the
same; only the written IDs differ): once as is (dense IDs, ``identity``
tables sized by the manifest's ID ranges) and once with ``--raw-ids`` (user,
item, shop and brand IDs random in [1, 2^62], ``managed`` tables of count + 1
rows). Each command then runs on each, in its own child process, and its peak
RSS is read from that child's ``os.wait4`` resource usage (``ru_maxrss``:
the largest resident set of the child and of any process it waited for; the
largest, not the sum), with ``OMP_NUM_THREADS=1`` unless set:

* ``mmctr validate DIR``;
* ``mmctr train --variant id_only`` for one epoch (``--epochs 1``; build,
  the epoch over the training days and the test-day evaluation).

The baseline is the dense world; the ratio raw / dense is printed per
command (goal <= 1.5). Per command a floor (a child that only imports the
modules it runs, ``FLOORS``; for training that is torch and torchrec) is
measured too, and the ratio of the peaks above it: on ``tiny`` most of a
training peak is that floor. The
generation itself (``mmctr world``) is measured on the way, for information.

Usage::

    python -m bench.raw_id_memory [--preset tiny] [--seed 0] [--content both] [--batch-size 2048] [--skip-train]
                                  [--out runs/bench-raw-id-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("runs/bench-raw-id-memory")
KINDS = ("dense", "raw")
FLOORS = {  # per command, a child that only imports what it runs (torch and torchrec for training)
    "world": "import recsys.cli, recsys.world.generate",
    "validate": "import recsys.cli, recsys.data.validate",
    "train": "import recsys.cli, recsys.train.trainer",
}


def peak_rss(cmd: list[str], log: Path) -> tuple[float, float]:
    """Runs ``cmd`` as a child (stdout and stderr to ``log``); returns (peak RSS in MiB, seconds).

    Raises:
        RuntimeError: the command failed (with the tail of its log).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")  # as bench.collisions: 2 threads on 2 shared cores crawl; same on both sides
    start = time.perf_counter()
    with log.open("w") as f:
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone (RUSAGE_CHILDREN would be the max so far)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {child.returncode}:\n{log.read_text()[-4000:]}")
    return usage.ru_maxrss / 1024, seconds  # Linux: KiB


def mmctr(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_id_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="world preset (tiny, small, large)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--content", default="both", help="mmctr world --content (both, text, image)")
    parser.add_argument("--batch-size", type=int, default=2048, help="training batch (mmctr train's default)")
    parser.add_argument("--skip-train", action="store_true", help="measure validate only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="worlds, runs, logs and results.json")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {"config": vars(args) | {"out": str(out)}, "floor": {}, "world": {}, "validate": {}, "train": {}}

    for key, code in FLOORS.items():
        results["floor"][key] = peak_rss([sys.executable, "-c", code], out / f"floor-{key}.log")[0]
    for kind in KINDS:
        world = out / f"world-{kind}"
        flags = ["--raw-ids"] if kind == "raw" else []
        cmd = mmctr("world", "--preset", args.preset, "--seed", str(args.seed), "--out", str(world),
                    "--content", args.content, "--quiet", *flags)
        mib, s = peak_rss(cmd, out / f"world-{kind}.log")
        results["world"][kind] = {"peak_rss_mib": mib, "seconds": s}
    for kind in KINDS:
        world = out / f"world-{kind}"
        mib, s = peak_rss(mmctr("validate", str(world)), out / f"validate-{kind}.log")
        results["validate"][kind] = {"peak_rss_mib": mib, "seconds": s}
    for kind in () if args.skip_train else KINDS:
        run = out / f"run-{kind}"
        if run.exists():
            shutil.rmtree(run)  # `mmctr train` resumes from a checkpoint in --out
        mib, s = peak_rss(mmctr("train", "--world", str(out / f"world-{kind}"), "--out", str(run), "--variant", "id_only",
                                "--epochs", "1", "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--quiet"),
                          out / f"train-{kind}.log")
        samples = json.loads((run / "metrics.json").read_text())["train_samples_per_s"]
        results["train"][kind] = {"peak_rss_mib": mib, "seconds": s, "train_samples_per_s": samples}

    print(f"peak RSS of one child process per command, {args.preset} world, seed {args.seed}: dense IDs vs raw IDs in [1, 2^62]")
    print(f"  {'command':<42} {'dense MiB':>9} {'raw MiB':>9} {'raw/dense':>9}   "
          f"{'above floor: dense, raw MiB, ratio':<36} seconds dense / raw")
    rows = [("mmctr world (for information)", "world"), ("mmctr validate", "validate"),
            (f"mmctr train id_only, 1 epoch, batch {args.batch_size}", "train")]
    for label, key in rows:
        if not results[key]:
            continue
        d, r = results[key]["dense"], results[key]["raw"]
        ratio = r["peak_rss_mib"] / d["peak_rss_mib"]
        floor = results["floor"][key]
        above = (d["peak_rss_mib"] - floor, r["peak_rss_mib"] - floor)
        results[key].update(ratio=ratio, ratio_above_floor=above[1] / above[0] if above[0] > 0 else None)
        goal = "" if key == "world" else f"   goal raw/dense <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}"
        above_s = f"{above[0]:,.0f}, {above[1]:,.0f}" + (f": {above[1] / above[0]:.2f}x" if above[0] > 0 else "")
        print(f"  {label:<42} {d['peak_rss_mib']:>9,.0f} {r['peak_rss_mib']:>9,.0f} {ratio:>8.2f}x   {above_s:<36} "
              f"{d['seconds']:.0f} / {r['seconds']:.0f}{goal}")
    print("  floor: a child only importing the command's modules: "
          + ", ".join(f"{k} {v:,.0f} MiB" for k, v in results["floor"].items()))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{out / 'results.json'}")


if __name__ == "__main__":
    main()
