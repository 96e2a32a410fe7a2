"""``python -m bench.quality``: choosing defaults on a validation day, then scoring the test day once.

The protocol, per dataset (a world directory and optional item vectors), in
one process; ``T`` is the manifest's test day and ``T - 1`` the validation day:

1. **Selection.** Every model (an mmctr variant, or the peer DIN of
   ``bench.peer``) and every candidate configuration of the grid
   (:data:`GRIDS`, ``--grid quick|full``; ModelConfig fields, and MAKE stage 1's
   epoch cap, a TrainConfig field) trains on the days before ``T - 1``
   (``TrainJob.train_until = T - 2``) and is scored on day ``T - 1``, for
   each of ``--select-seeds``; per model the candidate of the best mean
   validation GAUC is chosen (ties: the first listed); ``--select-seeds N``
   runs seeds 0..N-1.
2. **Test.** Each chosen configuration trains on the days before ``T``
   (``train_until = T - 1``) and is scored on day ``T``, for each of
   ``--seeds``: the only time day ``T`` is read. The peer DIN and the peer
   DIN + SimTier run in the same process, on the same days, seeds and batches.

mmctr models train through ``recsys.train.trainer.run_train`` (DMP, one
rank, ``TrainConfig`` defaults but ``--batch-size`` and the seed; one
epoch); the peers through ``bench.peer.train_peer`` (one epoch). MAKE
variants run MAKE stage 1 as ``mmctr train`` does (``build``, into the run's
``make_stage1/``): it fits on the days before its ID model's last training
day and early-stops on that day (``setup.split_days``), i.e. on ``T - 2``
during selection and on ``T - 1`` for the test: never on the day being
scored (checked here). As the pipeline shares stage 1 between ``make`` and
``simtier_make``, a stage 1 is reused by every later run of the same MAKE
widths, frozen-table width (``mm_width``), stage-1 epoch cap, seed and days (``make_from``).

Prints per dataset every candidate's validation GAUC, then the table: model,
chosen config, validation GAUC, test GAUC mean ± sd over seeds, relative
lift over ``id_only``'s mean test GAUC, and training samples/s; ``--json``
writes every number.

A dataset is ``WORLD`` or ``WORLD:VECTORS`` (a vector table or pretrain run;
``WORLD:truth`` writes and uses the world's hidden semantic vectors,
``bench.vectors``). Without vectors only ``id_only`` and the peer DIN run.

Usage::

    python -m bench.quality --datasets runs/world-tiny-raw:truth [--variants id_only simtier peer ...]
        [--grid quick|full] [--select-seeds 1] [--seeds 0 1 2] [--batch-size 256] [--json FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.peer import PeerConfig, evaluate_peer, train_peer
from bench.vectors import write_truth_vectors
from recsys.allocator import pin_malloc_thresholds
from recsys.data.schema import Manifest
from recsys.models.config import SIMTIER_PAPER, VARIANTS, ModelConfig, simtier_fields
from recsys.models.ctr_model import VARIANT_SPECS
from recsys.models.fused import config_override
from recsys.models.make import make_config
from recsys.train.config import TrainConfig
from recsys.train.run_folder import RunFolder
from recsys.train.setup import split_days
from recsys.train.trainer import TrainJob, run_train

PEERS: tuple[str, ...] = ("peer", "peer_simtier")  # bench.peer's DIN, and with the paper's SimTier
MODELS: tuple[str, ...] = (*VARIANTS, *PEERS)
BASELINE = "id_only"

Candidates = dict[str, dict[str, object]]  # candidate name -> ModelConfig (mmctr) or PeerConfig (peers) overrides
# The TrainConfig fields a candidate may set besides ModelConfig's: how long MAKE stage 1 fits.
TRAIN_KEYS: frozenset[str] = frozenset({"make_max_epochs"})


def _simtier(soft: bool, learned: bool, tiers: int) -> dict[str, object]:
    return simtier_fields((soft, learned, tiers))


def _make(frozen: bool, attention: int, max_epochs: int | None = None, attention_frozen: bool = False) -> dict[str, object]:
    """MAKE's stage 2 (fine-tuned; ``attention_frozen``: its MLP alone; ``frozen``), attention width, stage 1's cap."""
    epochs = {} if max_epochs is None else {"make_max_epochs": max_epochs}
    return {"make_frozen": frozen, "make_attention_frozen": attention_frozen, "make_attention_hidden": (attention,),
            **epochs}


def split_overrides(overrides: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """A candidate's overrides as (ModelConfig fields, TrainConfig fields: :data:`TRAIN_KEYS`).

    Example::

        >>> split_overrides(_make(True, 8, max_epochs=2))
        ({'make_frozen': True, 'make_attention_frozen': False, 'make_attention_hidden': (8,)}, {'make_max_epochs': 2})
    """
    model = {k: v for k, v in overrides.items() if k not in TRAIN_KEYS}
    return model, {k: v for k, v in overrides.items() if k in TRAIN_KEYS}


PAPER = simtier_fields(SIMTIER_PAPER)  # the paper's SimTier: fixed cosine, hard tiers of width 0.1
SIMTIER_QUICK: Candidates = {"paper (hard, cosine, 20)": PAPER, "soft, learned, 20": _simtier(True, True, 20),
                             "soft, learned, 50": _simtier(True, True, 50)}
SIMTIER_FULL: Candidates = {**SIMTIER_QUICK, "paper (hard, cosine, 50)": _simtier(False, False, 50),
                            "soft, cosine, 20": _simtier(True, False, 20), "soft, cosine, 50": _simtier(True, False, 50)}
# Stage 1 at most 2 epochs: on a small log MAKE's in-sample outputs on the days it fitted mislead stage 2
# the more epochs it fits (README, "MAKE's stage 1 leaks into stage 2").
MAKE_QUICK: Candidates = {"fine-tuned, attention 32": _make(False, 32), "frozen, attention 32": _make(True, 32),
                          "fine-tuned, attention 8": _make(False, 8),
                          "attention frozen, MLP fine-tuned, attention 32": _make(False, 32, attention_frozen=True),
                          "fine-tuned, attention 32, stage 1 <= 2 epochs": _make(False, 32, max_epochs=2)}
MAKE_FULL: Candidates = {**MAKE_QUICK, "frozen, attention 8": _make(True, 8),
                         "fine-tuned, bilinear attention": {**_make(False, 32), "make_attention": "bilinear"}}
PEER_QUICK: Candidates = {"lr 1e-3": {"lr": 1e-3}, "lr 1e-2": {"lr": 1e-2}}
PEER_FULL: Candidates = {**PEER_QUICK, "lr 3e-3": {"lr": 3e-3}, "lr 3e-2": {"lr": 3e-2}}


def _product(a: Candidates, b: Candidates) -> Candidates:
    return {f"SimTier {ka}; MAKE {kb}": {**va, **vb} for ka, va in a.items() for kb, vb in b.items()}


# The candidates of each model per grid; "defaults" = ModelConfig's (PeerConfig's) own.
GRIDS: dict[str, dict[str, Candidates]] = {
    "quick": {
        "id_only": {"defaults": {}},
        "simtier": SIMTIER_QUICK,
        "make": MAKE_QUICK,
        "simtier_make": {"SimTier paper; MAKE fine-tuned, attention 32": {**PAPER, **_make(False, 32)},
                         "SimTier soft, learned, 50; MAKE fine-tuned, attention 32": {**_simtier(True, True, 50), **_make(False, 32)},
                         "SimTier soft, learned, 50; MAKE frozen, attention 32": {**_simtier(True, True, 50), **_make(True, 32)},
                         "SimTier paper; MAKE attention frozen, MLP fine-tuned, attention 32":
                             {**PAPER, **_make(False, 32, attention_frozen=True)},
                         "SimTier paper; MAKE fine-tuned, attention 32, stage 1 <= 2 epochs":
                             {**PAPER, **_make(False, 32, max_epochs=2)},
                         "SimTier soft, learned, 50; MAKE fine-tuned, attention 32, stage 1 <= 2 epochs":
                             {**_simtier(True, True, 50), **_make(False, 32, max_epochs=2)}},
        "vector": {"defaults": {}},
        "simscore": {"defaults": {}},
        "peer": PEER_QUICK,
        "peer_simtier": PEER_QUICK,
    },
    "full": {
        "id_only": {"defaults": {}},
        "simtier": SIMTIER_FULL,
        "make": MAKE_FULL,
        "simtier_make": _product(SIMTIER_QUICK, MAKE_FULL),
        "vector": {"defaults": {}},
        "simscore": {"defaults": {}},
        "peer": PEER_FULL,
        "peer_simtier": PEER_FULL,
    },
}


@dataclass(frozen=True)
class Dataset:
    """One dataset of the protocol."""

    text: str  # as given: WORLD[:VECTORS]
    world: Path
    vectors: Path | None  # None: id_only and the peer DIN only

    @staticmethod
    def parse(text: str, scratch: Path) -> Dataset:
        """``WORLD``, ``WORLD:VECTORS`` or ``WORLD:truth`` (vectors written under ``scratch``)."""
        world, _, vectors = text.partition(":")
        if vectors == "truth":
            return Dataset(text, Path(world), write_truth_vectors(Path(world), scratch / f"truth-{Path(world).name}"))
        return Dataset(text, Path(world), Path(vectors) if vectors else None)

    def runs(self, model: str) -> bool:
        """Whether ``model`` can run here (vectors where it needs them)."""
        needs = model == "peer_simtier" or (model in VARIANT_SPECS and VARIANT_SPECS[model].uses_vectors())
        return self.vectors is not None or not needs


@dataclass(frozen=True)
class Score:
    """One trained model scored on one day."""

    gauc: float
    auc: float
    samples_per_s: float  # training
    make_validation_day: int | None = None  # the day MAKE stage 1 early-stopped on (MAKE variants)


@dataclass
class Protocol:
    """Trains and scores models of one dataset; keeps the MAKE stage-1 folders it may reuse."""

    data: Dataset
    batch_size: int
    scratch: Path  # run folders go here
    stage1: dict[tuple, Path]  # (MAKE widths, table width, stage-1 epochs, seed, last training day) -> a make_stage1/
    runs: int = 0

    def score(self, model: str, overrides: dict[str, object], seed: int, until: int) -> Score:
        """``model`` with ``overrides`` trained on the days up to ``until``, scored on ``until + 1``."""
        if model in PEERS:
            manifest = Manifest.read(self.data.world)
            config = replace(PeerConfig(), **overrides)
            run = train_peer(self.data.world, range(manifest.first_day, until + 1), self.data.vectors,
                             simtier=model == "peer_simtier", tiers=config.tiers, seed=seed,
                             batch_size=self.batch_size, config=config)
            scores = evaluate_peer(run.model, self.data.world, until + 1)
            return Score(scores["gauc"], scores["auc"], run.samples_per_s)
        model_fields, train_fields = split_overrides(overrides)
        train = TrainConfig(batch_size=self.batch_size, seed=seed, **train_fields)  # type: ignore[arg-type]
        return self._mmctr(config_override(ModelConfig(variant=model, **model_fields)), train, until)

    def _mmctr(self, config: ModelConfig, train: TrainConfig, until: int) -> Score:
        spec = VARIANT_SPECS[config.variant]
        key = (make_config(config), config.mm_width, train.make_max_epochs, train.seed, until)
        out = self.scratch / f"run-{self.runs:03d}-{config.variant}"
        self.runs += 1
        job = TrainJob(world=self.data.world, out=out, model=config, train=train,
                       vectors=self.data.vectors if spec.uses_vectors() else None,
                       make_from=self.stage1.get(key) if spec.make else None, quiet=True, train_until=until)
        metrics = run_train(job)
        if metrics is None or metrics.metrics is None or metrics.test_day != until + 1:
            raise RuntimeError(f"{out}: expected the metrics of day {until + 1}, got {metrics}")
        day = None
        if spec.make:
            self.stage1.setdefault(key, job.make_from or RunFolder(out).make_stage1)
            day = split_days(Manifest.read(self.data.world), until).validation  # where Stage1Job(until=...) validates
            if day == metrics.test_day:
                raise RuntimeError(f"MAKE stage 1 early-stopped on day {day}, the day being scored")
        shutil.rmtree(RunFolder(out).checkpoints, ignore_errors=True)  # scored; stage 1 stays for reuse
        a = metrics.metrics["all"]
        return Score(a["gauc"], a["auc"], metrics.train_samples_per_s, day)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_dataset(data: Dataset, models: list[str], grid: str, select_seeds: list[int], seeds: list[int],
                batch_size: int, scratch: Path) -> dict:
    """Both phases on one dataset; returns its JSON record (module docstring)."""
    manifest = Manifest.read(data.world)
    T = manifest.test_day
    if T - 2 < manifest.first_day:
        raise ValueError(f"{data.world}: test day {T} leaves no training day before the validation day {T - 1}")
    protocol = Protocol(data, batch_size, scratch, {})
    runnable = [m for m in models if data.runs(m)]
    selection: dict[str, dict[str, dict]] = {}
    for model in runnable:
        selection[model] = {}
        for name, overrides in GRIDS[grid][model].items():
            scores = [protocol.score(model, overrides, s, until=T - 2) for s in select_seeds]
            selection[model][name] = {"overrides": overrides, "gauc": [s.gauc for s in scores],
                                      "mean_gauc": statistics.mean(s.gauc for s in scores),
                                      "make_validation_day": scores[0].make_validation_day}
            print(f"  select {model:<13} {name:<58} day {T - 1} GAUC {selection[model][name]['mean_gauc']:.4f}", flush=True)
    chosen = {m: max(c, key=lambda n: c[n]["mean_gauc"]) for m, c in selection.items()}  # first of the best on ties
    test: dict[str, dict] = {}
    for model in runnable:
        scores = [protocol.score(model, GRIDS[grid][model][chosen[model]], s, until=T - 1) for s in seeds]
        test[model] = {"gauc": [s.gauc for s in scores], "auc": [s.auc for s in scores],
                       "samples_per_s": [s.samples_per_s for s in scores],
                       "make_validation_day": scores[0].make_validation_day}
        print(f"  test   {model:<13} {chosen[model]:<58} day {T} GAUC {_mean_sd(test[model]['gauc'])[0]:.4f}", flush=True)
    return {"dataset": data.text, "world": str(data.world), "vectors": None if data.vectors is None else str(data.vectors),
            "test_day": T, "validation_day": T - 1, "grid": grid, "batch_size": batch_size,
            "select_seeds": select_seeds, "seeds": seeds, "skipped": [m for m in models if m not in runnable],
            "selection": selection, "chosen": chosen, "test": test}


def print_dataset(record: dict) -> None:
    """The markdown table of one dataset (module docstring)."""
    test, chosen, selection = record["test"], record["chosen"], record["selection"]
    base = statistics.mean(test[BASELINE]["gauc"]) if BASELINE in test else None
    print(f"\n{record['dataset']}: validation day {record['validation_day']}, "
          f"test day {record['test_day']}, batch {record['batch_size']}, {record['grid']} grid, "
          f"seeds {record['seeds']} (selection: {record['select_seeds']})\n")
    print("| model | chosen config | validation GAUC | test GAUC (mean ± sd) | vs id_only | train samples/s |")
    print("|---|---|---|---|---|---|")
    for model, t in test.items():
        mean, sd = _mean_sd(t["gauc"])
        lift = f"{(mean - base) / base:+.2%}" if base is not None else "—"
        print(f"| {model} | {chosen[model]} | {selection[model][chosen[model]]['mean_gauc']:.4f} | {mean:.4f} ± {sd:.4f} "
              f"| {lift} | {statistics.mean(t['samples_per_s']):,.0f} |")
    if record["skipped"]:
        print(f"\n(no vectors: {', '.join(record['skipped'])} not run)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", required=True, help="WORLD, WORLD:VECTORS or WORLD:truth")
    parser.add_argument("--variants", nargs="+", choices=MODELS, default=list(MODELS), help="models (mmctr variants, peers)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--select-seeds", type=int, default=1, help="seeds 0..N-1 of each selection candidate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--out", type=Path, help="keep run folders here (default: a temporary directory)")
    args = parser.parse_args(argv)
    pin_malloc_thresholds()  # process-wide, here at the entry point (recsys.allocator), as `mmctr train`
    start = time.perf_counter()
    results: dict[str, object] = {"datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.out or Path(tmp)
        for i, text in enumerate(args.datasets):
            data = Dataset.parse(text, scratch)
            print(f"{text}: selection on day T-1, then the test day", flush=True)
            record = run_dataset(data, args.variants, args.grid, list(range(args.select_seeds)), args.seeds,
                                 args.batch_size, scratch / f"dataset-{i}")
            results["datasets"][text] = record  # type: ignore[index]
            print_dataset(record)
    results["wall_s"] = time.perf_counter() - start
    print(f"\n{results['wall_s'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
