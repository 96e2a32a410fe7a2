"""``python -m bench.pretrain``: pre-training samples/s per process and catalogue embedding time.

Everything runs in this one process, with the default towers
(``TowerConfig()``) and batch size unless told otherwise, and torch limited
to ``--threads`` threads (default 1: what each DDP rank gets under torchrun,
which sets ``OMP_NUM_THREADS=1``):

* training: ``--steps`` optimizer steps of ``scl`` and of ``clip`` (one
  untimed warm-up step first), as samples/s per process;
* embedding: ``embed_items`` over the whole catalogue (batches of
  ``EMBED_BATCH``), against the baseline of embedding one item at a time
  (image, title, fusion) for a sample of ``--sample`` items; the ratio of
  the two throughputs is printed, and both sides' vectors are compared.

The world is ``--world``, else ``runs/bench-world-small`` when it exists
(``python -m bench.loader`` generates it), else the ``tiny`` preset
generated once into ``runs/bench-world-tiny``.

Usage::

    python -m bench.pretrain [--world DIR] [--steps 30] [--sample 500] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.config import SclConfig
from pretrain.train import EMBED_BATCH, Pretrainer, embed_items
from recsys.allocator import pin_malloc_thresholds
from recsys.data.schema import MANIFEST
from recsys.distributed import init_distributed

SMALL_WORLD = Path("runs/bench-world-small")
TINY_WORLD = Path("runs/bench-world-tiny")


def ensure_world(world: Path | None) -> Path:
    """``world``, else the small bench world if present, else the tiny preset generated once."""
    if world is not None:
        if not (world / MANIFEST).is_file():
            raise FileNotFoundError(f"{world}: no {MANIFEST}; expected a dataset directory")
        return world
    if (SMALL_WORLD / MANIFEST).is_file():
        return SMALL_WORLD
    if not (TINY_WORLD / MANIFEST).is_file():
        from recsys.world.generate import generate_world

        print(f"no {SMALL_WORLD}; generating the tiny world into {TINY_WORLD}")
        generate_world(TINY_WORLD, preset="tiny", seed=0)
    return TINY_WORLD


def time_training(trainer: Pretrainer, steps: int) -> tuple[float, float]:
    """(seconds, final loss) of ``steps`` optimizer steps after one untimed warm-up step."""
    trainer.train_step()
    t = time.perf_counter()
    loss = float("nan")
    for _ in range(steps):
        loss = trainer.train_step()
    return time.perf_counter() - t, loss


@torch.no_grad()
def embed_one_at_a_time(trainer: Pretrainer, rows: np.ndarray) -> np.ndarray:
    """The baseline: fused vectors (len(rows), D') from one forward per item."""
    enc, dev = trainer.encoder.eval(), trainer.ctx.device
    out = []
    for r in rows:
        img = enc.encode_image(torch.from_numpy(trainer.items.images[r : r + 1]).to(dev))
        txt = enc.encode_text(trainer.item_tokens[r : r + 1].to(dev))
        out.append(enc.fuse(img, txt).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _row(name: str, batch: int | str, count: int, seconds: float, rate: float) -> str:
    return f"{name:<32}{batch:>8}{count:>10}{seconds:>12.2f}{rate:>14.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, help=f"dataset directory (default: {SMALL_WORLD}, else {TINY_WORLD})")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per method (default: 30)")
    batch = SclConfig().batch_size
    p.add_argument("--batch-size", type=int, default=batch, help=f"B per process (default: {batch})")
    p.add_argument("--sample", type=int, default=500, help="items embedded one at a time (default: 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as one torchrun rank)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.sample < 1 or args.threads < 1:
        raise SystemExit("--steps, --sample and --threads must be >= 1")

    pin_malloc_thresholds()  # process-wide, here at the entry point (recsys.allocator)
    torch.set_num_threads(args.threads)
    world = ensure_world(args.world)
    cfg = dataclasses.replace(SclConfig(), batch_size=args.batch_size, max_steps=args.steps + 1)
    ctx = init_distributed()
    tw = cfg.tower
    print(
        f"world {world}; device {ctx.device}; torch threads {torch.get_num_threads()}; towers: "
        f"ViT {tw.vision_layers}x{tw.vision_width}, text {tw.text_layers}x{tw.text_width}, D={tw.embed_dim}"
    )

    rows: list[str] = []
    trainers: dict[str, Pretrainer] = {}
    with tempfile.TemporaryDirectory() as out:  # nothing is written there: no checkpoint, no export
        for method in ("scl", "clip"):
            t = time.perf_counter()
            trainer = trainers[method] = Pretrainer(cfg, method, world, Path(out) / method, ctx)
            load_s = time.perf_counter() - t
            seconds, loss = time_training(trainer, args.steps)
            n = args.steps * cfg.batch_size
            print(f"  {method}: data loaded in {load_s:.1f}s, final loss {loss:.3f}")
            rows.append(_row(f"train {method} (samples/s/process)", cfg.batch_size, n, seconds, n / seconds))

    trainer = trainers["scl"]  # its trained towers embed the catalogue
    n_items = len(trainer.items.item_ids)
    t = time.perf_counter()
    batched = embed_items(trainer.encoder, trainer.items.images, trainer.item_tokens, ctx.device)["item"]
    batched_s = time.perf_counter() - t
    rows.append(_row("embed catalogue, batched", EMBED_BATCH, n_items, batched_s, n_items / batched_s))

    sample = np.random.default_rng(0).choice(n_items, size=min(args.sample, n_items), replace=False)
    t = time.perf_counter()
    single = embed_one_at_a_time(trainer, sample)
    single_s = time.perf_counter() - t
    rows.append(_row("embed one item at a time", 1, len(sample), single_s, len(sample) / single_s))
    gap = float(np.abs(single - batched[sample]).max())

    print(f"\n{'':<32}{'batch':>8}{'samples':>10}{'seconds':>12}{'per second':>14}")
    print("\n".join(rows))
    ratio = (n_items / batched_s) / (len(sample) / single_s)
    print(f"\nbatched / one-at-a-time embedding throughput: {ratio:.1f}x (max |difference| {gap:.1e})")
    print(f"whole catalogue ({n_items} items) embedded in {batched_s:.1f}s in one process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
