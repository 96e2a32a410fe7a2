"""The served ranker's ID tables in fp32, fp16 and int8: table memory and the test day's GAUC, one process.

Each precision loads the same finished run (``serving.ranker.Ranker.load``,
TorchRec's ``quantize_embeddings`` for fp16 and int8) and scores every
impression of the test day through the reader's batches (the ranker's own
joins and statistics); the GAUC of each precision is printed against fp32's.

    python -m bench.ranker_precision --run runs/demo/ctr/simtier_make --world runs/demo/world --store runs/demo/vectors.sqlite

The issue's goal: fp16 and int8 within 0.001 GAUC of fp32 on the small world's test day.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from recsys.data.reader import ImpressionReader
from recsys.data.schema import Manifest
from recsys.eval.metrics import ranking_metrics
from serving.ranker import PRECISIONS, Ranker

BATCH = 8192  # impressions per forward pass


@torch.inference_mode()
def score_day(ranker: Ranker, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, labels, user IDs) of every impression of ``day``, file order."""
    config = dataclasses.replace(ranker.reader.config, days=(day,), batch_size=BATCH, shuffle=False)
    reader = ImpressionReader(ranker.reader.root, config)
    probs, labels, users = [], [], []
    for batch in reader:
        probs.append(torch.sigmoid(ranker.model(batch.dense_features, batch.sparse_features)).numpy())
        labels.append(batch.labels.numpy())
        users.append(batch.user_ids.numpy())
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(users)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished CTR run")
    parser.add_argument("--world", type=Path, required=True, help="its dataset")
    parser.add_argument("--day", type=int, help="the day scored (default: the dataset's test day)")
    parser.add_argument("--store", type=Path, help="a vector store: new items scored with its vectors (as evaluate --store)")
    args = parser.parse_args(argv)
    day = args.day if args.day is not None else Manifest.read(args.world).test_day
    rows, base = [], None
    for precision in PRECISIONS:
        ranker = Ranker.load(args.run, args.world, store=args.store, precision=precision)
        p, y, u = score_day(ranker, day)
        m = ranking_metrics(torch.from_numpy(p.astype(np.float64)), torch.from_numpy(y.astype(np.float64)), torch.from_numpy(u))
        base = base or (ranker.table_bytes(), m["gauc"], p)
        rows.append((precision, ranker.table_bytes(), m["auc"], m["gauc"], float(np.abs(p - base[2]).max())))
    print(f"{args.run} on day {day}: {len(base[2]):,} impressions")
    print(f"{'precision':<10}{'ID tables':>14}{'vs fp32':>9}{'AUC':>9}{'GAUC':>9}{'GAUC - fp32':>13}{'max |p - fp32|':>16}")
    for precision, size, a, g, diff in rows:
        print(f"{precision:<10}{size / 2**20:>11.2f} MiB{size / base[0]:>9.3f}{a:>9.4f}{g:>9.4f}{g - base[1]:>+13.5f}{diff:>16.2e}")


if __name__ == "__main__":
    main()
