"""Which stages ``mmctr pipeline`` runs on a dataset, and why it skips the others.

:func:`plan_stages` decides from the manifest (``features.content``, the
days, ``test_day``) and three counts read from the data (:func:`data_facts`),
with no side effect, so every rule is tested in milliseconds. The rules:

* **world**: generated from the preset; with ``--world DIR`` skipped, and
  ``validate`` (``mmctr validate DIR``) runs in its place.
* **item vectors**, from the first case that applies:

  - ``--vectors FILE``: no pre-training; the CTR side loads FILE;
  - no item content: no pre-training and no vectors: only ``id_only``
    trains, the multimodal variants are skipped;
  - image and title, a search log: CLIP, then SCL fine-tuned from it (the recipe);
  - image and title, no search log: CLIP only (``clip (no search log)``);
  - one modality, a search log: SCL from random towers (CLIP needs
    image-title pairs);
  - one modality, no search log: random towers (``--method random``):
    pre-training has no single-modality recipe without searches.

  "A search log" is a search session before the test day (``searches/``
  absent or empty: none).
* **pretrain_eval** (query -> purchase recall, SCL against CLIP) needs both
  runs and search sessions on the test day.
* **export** and **embed** serve our encoder (on the modalities the dataset
  has) to the test day's new items: they need our encoder and items new on
  the test day (``recsys.data.stats.new_item_mask``). When they are skipped, the catalogue keeps every item's
  vectors (the batch-embedded ones, or FILE's), so the new items still have one.
* **retrain** retrains ``retrain_variant`` if it was trained, else ``id_only``;
  **rank_online** serves that retrained run on Triton (with the store's
  vectors when ``embed`` ran) and ranks a sample of the test day online.
* The test day is the manifest's ``test_day`` (not assumed to be the last
  day): the CTR runs train up to the day before it, evaluation scores it,
  the retrain trains on it (and scores the next day, if any).

Example::

    >>> from recsys.data.schema import Manifest
    >>> from recsys.data.spec import world_spec
    >>> from recsys.pipeline.config import PRESETS
    >>> m = Manifest(format_version=2, first_day=10, last_day=14, test_day=13, features=world_spec())
    >>> plan = plan_stages(m, DataFacts(searches_before_test_day=0, searches_on_test_day=0, items_new_on_test_day=9),
    ...                    PRESETS["tiny"], world=Path("w"))
    >>> plan.vectors, plan.train_until, plan.run_names()[:3]
    ('clip (no search log)', 12, ['validate', 'pretrain_clip', 'catalogue'])
    >>> for name, why in plan.skipped().items():
    ...     print(f"{name}: {why}")
    world: --world w: the dataset is given, not generated
    pretrain_scl: no search log (searches/ absent, or no session before the test day 13)
    pretrain_eval: no search log (searches/ absent, or no session before the test day 13)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from recsys.data.schema import MANIFEST, Manifest, read_table_file, table_files
from recsys.data.stats import new_item_mask
from recsys.pipeline.config import Layout, PipelineConfig

PRETRAINING: tuple[str, ...] = ("pretrain_clip", "pretrain_scl")  # the recipe's runs (random joins when used)
SERVING_STAGES: tuple[str, ...] = ("export", "embed")


@dataclass(frozen=True)
class DataFacts:
    """What the plan needs to know of a dataset beyond its manifest (:func:`data_facts` reads them)."""

    searches_before_test_day: int  # search sessions pre-training may train on
    searches_on_test_day: int  # held-out sessions pretrain_eval scores
    items_new_on_test_day: int  # items created on the test day: the embedder's feed


@dataclass(frozen=True)
class StagePlan:
    """One stage of the plan: it runs, or is skipped for ``skipped`` (one line)."""

    name: str
    skipped: str | None = None  # why the stage does not run; None: it runs


@dataclass(frozen=True)
class Plan:
    """The stages of one pipeline on one dataset and what they were decided from (fields inline)."""

    stages: tuple[StagePlan, ...]  # every stage considered, in order
    test_day: int  # the manifest's test_day: evaluated, retrained on
    vectors: str  # how the item vectors are made, one line: "scl (fine-tuned from clip)", "clip (no search log)", ...
    vectors_from: str | None  # the pre-training stage whose run folder holds them; None: --vectors FILE, or no vectors
    vectors_file: str | None  # --vectors FILE
    variants: tuple[str, ...]  # the CTR variants trained, in config order
    retrain_variant: str  # the variant the retrain stage retrains
    catalogue_before: int  # the catalogue keeps the items created before this day

    @property
    def train_until(self) -> int:
        """The CTR runs' last training day: the day before the test day."""
        return self.test_day - 1

    def runs(self, name: str) -> bool:
        return any(s.name == name and s.skipped is None for s in self.stages)

    def run_names(self) -> list[str]:
        return [s.name for s in self.stages if s.skipped is None]

    def skipped(self) -> dict[str, str]:
        return {s.name: s.skipped for s in self.stages if s.skipped is not None}

    def as_dict(self) -> dict:
        """What ``pipeline.json`` records (``"plan"``)."""
        return {"test_day": self.test_day, "train_until": self.train_until, "vectors": self.vectors,
                "variants": list(self.variants), "retrain_variant": self.retrain_variant,
                "catalogue_before": self.catalogue_before, "stages": self.run_names(), "skipped": self.skipped()}


def vectors_source(plan: Plan, layout: Layout) -> Path:
    """Where the plan's item vectors come from: its pre-training run folder, or ``--vectors FILE``.

    Raises:
        ValueError: the plan has no item vectors (no item content, no ``--vectors``).
    """
    if plan.vectors_from is not None:
        return layout.pretrain(plan.vectors_from)
    if plan.vectors_file is not None:
        return Path(plan.vectors_file)
    raise ValueError(f"this pipeline has no item vectors: {plan.vectors}")


def data_facts(world: Path, test_day: int) -> DataFacts:
    """Counts the search sessions before and on ``test_day`` and the items new on it (``recsys.data.stats.new_item_mask``)."""
    before = on = 0
    for f in table_files(world, "searches"):  # none when searches/ is absent
        days = read_table_file(f, columns=["day"])["day"].to_numpy()
        before, on = before + int((days < test_day).sum()), on + int((days == test_day).sum())
    new = int(new_item_mask(world, test_day).sum()) if table_files(world, "items") else 0
    return DataFacts(before, on, new)


def _only(content: set[str]) -> str:
    return "title only" if content == {"title"} else "image only"


def plan_stages(
    manifest: Manifest, facts: DataFacts, cfg: PipelineConfig, world: Path | None = None, vectors: Path | None = None
) -> Plan:
    """The stages to run on a dataset and the reason for each one skipped (module docstring).

    Args:
        manifest (Manifest): the dataset's manifest.
        facts (DataFacts): its search sessions and new items (:func:`data_facts`).
        cfg (PipelineConfig): the recipe (its variants and retrain variant).
        world (Path | None): ``--world DIR``; None: the preset's world, generated.
        vectors (Path | None): ``--vectors FILE``, used instead of pre-training.

    Raises:
        ValueError: the test day leaves fewer than two training days before it.
    """
    t = manifest.test_day
    if t < manifest.first_day + 2:
        raise ValueError(f"{MANIFEST}: test_day {t} leaves {t - manifest.first_day} day(s) before it (first_day "
                         f"{manifest.first_day}); the pipeline needs 2: MAKE stage 1 fits on one and stops on the next")
    content = set(manifest.features.content)
    both = {"title", "image"} <= content
    searches = facts.searches_before_test_day > 0
    no_searches = f"no search log (searches/ absent, or no session before the test day {t})"
    plan: list[StagePlan] = []

    def run(name: str) -> None:
        plan.append(StagePlan(name))

    def skip(names: tuple[str, ...] | str, why: str) -> None:
        plan.extend(StagePlan(n, why) for n in ((names,) if isinstance(names, str) else names))

    if world is None:
        run("world")
    else:
        skip("world", f"--world {world}: the dataset is given, not generated")
        run("validate")
    vectors_from: str | None = None
    # pretrain_eval (set in each case below) reads only the pre-training runs: it is placed after the training
    # stages, beside which it runs
    if vectors is not None:
        why = f"--vectors {vectors}: the item vectors are given"
        skip(PRETRAINING, why)
        evaluation = StagePlan("pretrain_eval", why)
        method = f"{vectors} (--vectors)"
    elif not content:
        why = "no item content (features.content is empty): nothing to pre-train on"
        skip(PRETRAINING, why)
        evaluation = StagePlan("pretrain_eval", why)
        method = "none (no item content, no --vectors)"
    elif both:
        run("pretrain_clip")
        if searches:
            run("pretrain_scl")
            vectors_from, method = "pretrain_scl", "scl (fine-tuned from clip)"
            evaluation = StagePlan("pretrain_eval", None if facts.searches_on_test_day
                                   else f"no search session on the test day {t} to score recall on")
        else:
            skip("pretrain_scl", no_searches)
            evaluation = StagePlan("pretrain_eval", no_searches)
            vectors_from, method = "pretrain_clip", "clip (no search log)"
    else:
        only = _only(content)
        skip("pretrain_clip", f"CLIP aligns images with titles; the dataset has {only}")
        if searches:
            run("pretrain_scl")
            vectors_from, method = "pretrain_scl", f"scl ({only}: from random towers, no CLIP start)"
        else:
            skip("pretrain_scl", no_searches)
            run("pretrain_random")
            vectors_from, method = "pretrain_random", f"random ({only}, no search log: untrained towers)"
        evaluation = StagePlan("pretrain_eval", f"SCL against CLIP needs image and title; the dataset has {only}")
    has_vectors = vectors is not None or bool(content)
    if has_vectors:
        run("catalogue")
    else:
        skip("catalogue", "no item vectors: no item content, no --vectors")
    # MAKE's stage 1 first, then simtier_make, which shares it (it starts once that is done: the others go
    # first meanwhile), then the rest in the config's order but id_only, the shortest job, last: it fills the
    # lane that frees first (the small world: 383 s for the training block against 406 s with id_only first)
    for v in sorted(cfg.variants, key=lambda v: (v != "make", v != "simtier_make", v == "id_only")):
        if has_vectors or v == "id_only":
            run(f"train_{v}")
        else:
            skip(f"train_{v}", "no item vectors: no item content, no --vectors")
    serving = (f"--vectors {vectors}: no encoder of ours to embed the new items with" if vectors is not None
               else "no item content to embed" if not content
               else f"no item created on the test day {t}" if not facts.items_new_on_test_day else None)
    if serving is None:  # export first: Triton starts on its repository while pretrain_eval and training still run
        run("export")
    plan.append(evaluation)
    if serving is None:
        run("embed")
    else:
        skip(SERVING_STAGES, serving)
    for name in ("evaluate", "retrain", "rank_online", "report"):
        run(name)
    variants = tuple(v for v in cfg.variants if has_vectors or v == "id_only")
    return Plan(
        stages=tuple(plan), test_day=t, vectors=method, vectors_from=vectors_from,
        vectors_file=None if vectors is None else str(vectors), variants=variants,
        retrain_variant=cfg.retrain_variant if cfg.retrain_variant in variants else "id_only",
        catalogue_before=t if any(s.name == "embed" and s.skipped is None for s in plan) else manifest.last_day + 1,
    )
