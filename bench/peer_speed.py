"""mmctr's training speed against the peer DIN (``bench.peer``), and with wide item vectors; run by ``python -m bench.train``.

Two measurements, in the manner of ``bench.train`` (one thread, turns taken,
medians over rounds; the machine's speed drifts, so only ratios within a
round are compared):

1. :func:`peer_vs_mmctr`, at one batch size, in this process on the same
   in-memory batches of the training days (``ImpressionReader``, as both
   train): samples/s of mmctr's ``id_only`` and ``simtier`` (its defaults,
   and the paper's form: hard tiers, fixed cosine, 20 tiers) through
   ``trainer.build``'s DMP step, and of the peer DIN and the peer DIN +
   SimTier at their own widths (DIN's: attention 80-40, MLP 200-80, PReLU)
   and at mmctr's (attention 32, MLP 128-64, ReLU), each with SparseAdam +
   Adam. Ratios: ``id_only`` / peer DIN and ``simtier`` / peer DIN + SimTier
   (goal >= 1.0 each), at both peer widths (:data:`PEER_OF`).
2. :func:`vector_width_ratios`: the default ``simtier_make`` step over
   ``id_only``'s with the narrow (64-d) and the wide (384-d) input vectors
   (goal <= 1.3 each), and the wide over the narrow ``simtier_make`` step
   (goal <= 1.1); the default ``ModelConfig.mm_width`` decides the frozen
   table's width (wider inputs are projected to it once per run,
   ``recsys.train.setup.projected_vectors``, inside the timed job's build,
   not its steps); every run its own spawned process
   (``bench.train.measure``), the three taking turns each round.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from bench.peer import PeerConfig, PeerDin, PeerTrain, peer_optimizer, vocabularies
from bench.train import PAPER_SIMTIER, Run, built_model, in_memory_batches, median_ratio, one_rank_group, step_times, take_turns
from recsys.data.reader import ReaderConfig
from recsys.data.schema import Manifest
from recsys.data.vectors import load_vectors
from recsys.models.config import ModelConfig

MMCTR_WIDTHS = PeerConfig(attention_hidden=ModelConfig().attention_hidden, mlp_hidden=ModelConfig().mlp_hidden,
                          activation="relu")  # the peer at mmctr's id_only widths (torchrec's MLP is ReLU)
# mmctr contender -> the peer contender it is held against (goal: samples/s ratio >= 1.0), at either peer width
PEER_OF: dict[str, str] = {
    "id_only": "peer DIN",
    "simtier (defaults)": "peer DIN + SimTier",
    "simtier (paper: hard, cosine, 20)": "peer DIN + SimTier",
}
AT_MMCTR_WIDTHS = " at mmctr's widths"


def peer_vs_mmctr(run: Run, rounds: int) -> dict[str, float]:
    """Samples/s of each contender (module docstring, 1.) at ``run.batch_size``, by name.

    Args:
        run (Run): world, vectors (any width), batch size, warmup and timed steps per turn.
        rounds (int): turns of every contender; the median is returned.

    Returns:
        dict[str, float]: contender -> median samples/s.
    """
    # built per variant (a config's unset SimTier fields take its variant's form); fused kernels as MMCTR_FUSED says
    mmctr = {"id_only": replace(run, variant="id_only").model_config(),
             "simtier (defaults)": replace(run, variant="simtier").model_config(),
             "simtier (paper: hard, cosine, 20)": replace(replace(run, variant="simtier").model_config(), **PAPER_SIMTIER)}
    with one_rank_group() as ctx, tempfile.TemporaryDirectory() as tmp:
        contenders: dict[str, tuple[nn.Module, object]] = {}
        built = None
        for name, config in mmctr.items():
            built = built_model(run, config, ctx, Path(tmp) / name.replace(" ", "_"))
            contenders[name] = (built.model, built.optimizer)
        assert built is not None
        days, stats = built.split.train, built.dense_stats
        batches = in_memory_batches(run.world, ReaderConfig(batch_size=run.batch_size, days=days, shuffle=True,
                                                            table_sizes=built.sizes, dense_stats=stats or None),
                                    run.warmup + run.steps)
        spec = Manifest.read(Path(run.world)).features
        vocab, vectors = vocabularies(Path(run.world), days, stats), load_vectors(Path(run.vectors))
        peers = {"peer DIN": PeerConfig(), "peer DIN" + AT_MMCTR_WIDTHS: MMCTR_WIDTHS,
                 "peer DIN + SimTier": PeerConfig(simtier=True),
                 "peer DIN + SimTier" + AT_MMCTR_WIDTHS: replace(MMCTR_WIDTHS, simtier=True)}
        for name, config in peers.items():
            torch.manual_seed(0)
            model = PeerDin(spec, vocab, config, vectors, stats)
            contenders[name] = (PeerTrain(model).train(), peer_optimizer(model, config.lr))
        return take_turns(contenders, batches, run, ctx.device, rounds)


def print_peer_rates(batch_size: int, rates: dict[str, float]) -> dict[str, float]:
    """Prints one batch size's samples/s and each mmctr contender over its peer at both widths; returns the ratios."""
    print(f"  batch {batch_size:,}: " + ", ".join(f"{name} {rate:,.0f}" for name, rate in rates.items()))
    ratios: dict[str, float] = {}
    for ours, peer in PEER_OF.items():
        for suffix in ("", AT_MMCTR_WIDTHS):
            label = f"{ours} / {peer}{suffix}"
            ratios[label] = rates[ours] / rates[peer + suffix]
            print(f"    {label:<72} {ratios[label]:.2f}x")
    return ratios


def vector_width_ratios(base: Run, narrow: str, wide: str, rounds: int) -> dict[str, float]:
    """Step-time ratios of the default ``simtier_make`` with ``narrow`` and ``wide`` vectors (module docstring, 2.).

    Args:
        base (Run): the ``id_only`` run (world, batch size, steps).
        narrow (str): the narrow (64-d) vectors.
        wide (str): the wide (384-d) vectors.
        rounds (int): turns of the three runs.

    Returns:
        dict[str, float]: label -> median ratio over rounds.
    """
    n, w = load_vectors(Path(narrow)).dim, load_vectors(Path(wide)).dim
    sm = replace(base, variant="simtier_make")
    times = step_times({"id_only": base, "narrow": replace(sm, vectors=narrow), "wide": replace(sm, vectors=wide)}, rounds)
    return {f"simtier_make / id_only, {n}-d input vectors (goal <= 1.3)": median_ratio(times, "narrow", "id_only"),
            f"simtier_make / id_only, {w}-d input vectors (goal <= 1.3)": median_ratio(times, "wide", "id_only"),
            f"simtier_make {w}-d / {n}-d input vectors (goal <= 1.1)": median_ratio(times, "wide", "narrow")}
