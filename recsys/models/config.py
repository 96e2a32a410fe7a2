"""Configuration of the CTR models: one frozen dataclass and table sizes from the manifest.

:class:`ModelConfig` holds the widths and switches of every module in
``recsys.models``; its fields mirror the module arguments. It is built in
code or read from a small YAML/TOML file whose keys are its field names.
Embedding table sizes are not configuration: they come from the world's
manifest through :func:`table_sizes`.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.yaml"
    >>> _ = path.write_text("variant: simtier\\nmlp_hidden: [64, 32]\\n")
    >>> cfg = load_model_config(path)
    >>> cfg.variant, cfg.mlp_hidden, cfg.simtier_tiers, cfg.simtier_learned_metric
    ('simtier', (64, 32), 50, True)
    >>> paper = ModelConfig(variant="simtier_make")  # SimTier beside MAKE: the paper's form (SIMTIER_FORMS)
    >>> paper.simtier_soft, paper.simtier_learned_metric, paper.simtier_tiers
    (False, False, 20)
    >>> _ = path.write_text("varaint: simtier\\n")
    >>> load_model_config(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: ...: unknown key(s) ['varaint']; known keys: ['variant', ...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from recsys.config_file import check_positive, config_from_dict, read_config_file
from recsys.data.schema import Manifest
from recsys.settings import setting

# The model variants (issue 4): the ID-only DIN, the paper's two methods and
# their combination, and the paper's two weaker baselines.
VARIANTS: tuple[str, ...] = ("id_only", "simtier", "make", "simtier_make", "vector", "simscore")

# SimTier's form where a config leaves it unset, per variant: (soft, learned metric, tiers). Chosen on the
# validation days of three datasets (the `small` world, a raw-ID text-only world, MovieLens-100k; README,
# "The method on real data"): alone, soft tiers over a learned bilinear metric, 50 tiers (best on two, tied
# on the third); beside MAKE, the paper's hard tiers over the fixed cosine, 20 tiers (best in the
# configuration each of the three chose, and the cheaper step: no gradient, 30 fewer MLP inputs).
SIMTIER_ALONE = (True, True, 50)
SIMTIER_PAPER = (False, False, 20)  # the paper's SimTier: hard tiers of width 0.1 over the fixed cosine
SIMTIER_FORMS: dict[str, tuple[bool, bool, int]] = {"simtier_make": SIMTIER_PAPER}
# MAKE's target attention: DIN's activation unit, or a learned bilinear score (README, "MAKE's target attention").
MAKE_ATTENTIONS: tuple[str, ...] = ("din", "bilinear")


def simtier_fields(form: tuple[bool, bool, int]) -> dict[str, object]:
    """A SimTier form (soft, learned metric, tiers) as ModelConfig field values.

    Example::

        >>> simtier_fields(SIMTIER_PAPER)
        {'simtier_soft': False, 'simtier_learned_metric': False, 'simtier_tiers': 20}
    """
    return dict(zip(("simtier_soft", "simtier_learned_metric", "simtier_tiers"), form))


@dataclass(frozen=True)
class ModelConfig:
    """Widths and switches of the CTR model (``recsys.models.ctr_model.CtrModel``).

    Args:
        variant (str): one of ``VARIANTS``.
        embedding_dim (int): E, width of every ID embedding table.
        mlp_hidden (tuple[int, ...]): hidden widths of the ID model's MLP
            tower (a final linear layer maps the last one to the logit).
        attention_hidden (tuple[int, ...]): hidden widths of the DIN
            activation unit of ``TargetAttention``.
        attention_softmax (bool): normalise attention scores with a masked
            softmax; ``False`` keeps DIN's raw (unnormalised) weights.
        simtier_tiers (int | None): T, equal-width similarity tiers over [-1, 1].
        simtier_soft (bool | None): share each similarity between its two nearest
            tier centres (``SimTier(soft=True)``) instead of counting it in one tier.
        simtier_learned_metric (bool | None): SimTier's similarity is a learned
            bilinear form of the vectors, initialised to the cosine
            (``SimTier(metric_dim=D)``); needs ``simtier_soft``.

            The three SimTier fields left ``None`` take the variant's form
            (``SIMTIER_FORMS``, else ``SIMTIER_ALONE``) when the config is
            built, so a built config always holds values (and a run's log
            records them); ``dataclasses.replace`` keeps them, so change the
            variant by building a new config. ``simtier_learned_metric: true``
            alone also turns ``simtier_soft`` on; ``simtier_soft: false``
            alone turns the learned metric off.
        make_attention (str): MAKE's target attention over the D-wide
            vectors: ``"din"``, DIN's activation unit (an MLP over
            ``[q, k, q - k, q * k]``, ``make_attention_hidden`` wide), or
            ``"bilinear"``, a learned bilinear score ``q^T W k + b``
            (``recsys.models.attention.BilinearTargetAttention``).
        make_attention_hidden (tuple[int, ...]): hidden widths of the
            activation unit of MAKE's target attention (``make_attention: din``).
        make_hidden (tuple[int, ...]): hidden widths of MAKE's shallow MLP;
            its last hidden output joins the ID model in stage 2.
        make_frozen (bool): in stage 2, MAKE runs without gradients (its
            outputs are constants to the ID model); ``False`` fine-tunes it.
        make_attention_frozen (bool): in stage 2, MAKE's target attention
            keeps its stage-1 weights while its MLP and logit layer are
            fine-tuned: the attention's backward, most of MAKE's cost in a
            training step, is not run (implied by ``make_frozen``).
        mm_width (int): K, the frozen multimodal table's width: item vectors
            wider than K are projected onto their top-K principal directions
            and re-normalised, once per run (``recsys.train.setup.projected_vectors``);
            0 keeps every input width.
    """

    variant: str = setting("id_only", "model variant", choices=VARIANTS)  # the baseline
    embedding_dim: int = 16  # E: DIN-sized ID embeddings; the small world has ~1e5 items
    mlp_hidden: tuple[int, ...] = (128, 64)  # DIN's tower shape, scaled down
    attention_hidden: tuple[int, ...] = (32,)  # DIN's activation unit (80, 40) cut to one layer: 1.7x faster steps on CPU
    attention_softmax: bool = False  # DIN keeps raw weights to preserve interest intensity
    simtier_tiers: int | None = None  # T; None: the variant's (SIMTIER_FORMS)
    simtier_soft: bool | None = None  # soft tiers, needed by the learned metric (the paper's hard counts: false)
    simtier_learned_metric: bool | None = None  # None: the variant's (SIMTIER_FORMS)
    make_attention: str = "din"  # DIN's unit: the bilinear score loses on two of the three validation days (README)
    make_attention_hidden: tuple[int, ...] = (32,)  # as the ID model's unit
    make_hidden: tuple[int, ...] = (64,)  # "shallow MLP": one hidden layer
    make_frozen: bool = False  # fine-tune MAKE in stage 2: measured better than frozen on the small world (README)
    make_attention_frozen: bool = False  # fine-tune MAKE's attention too (README, "MAKE in stage 2")
    # K: wider input vectors are projected to it; 64 keeps the world's 64-d SCL vectors as they are and 94% of
    # the cosine of 384-d MiniLM title vectors (README, "Wide vectors")
    mm_width: int = 64
    fused_kernels: bool = True  # SimTier and the target attentions (MAKE's, the ID model's) in C++ on CPU (models/fused.py); MMCTR_FUSED overrides

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"ModelConfig.variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        soft, learned, tiers = SIMTIER_FORMS.get(self.variant, SIMTIER_ALONE)
        if self.simtier_learned_metric is None:  # hard tiers set here pass no gradient: no learned metric then
            object.__setattr__(self, "simtier_learned_metric", learned and self.simtier_soft is not False)
        if self.simtier_soft is None:
            object.__setattr__(self, "simtier_soft", soft or self.simtier_learned_metric is True)
        if self.simtier_tiers is None:
            object.__setattr__(self, "simtier_tiers", tiers)
        if self.make_attention not in MAKE_ATTENTIONS:
            raise ValueError(
                f"ModelConfig.make_attention must be one of {list(MAKE_ATTENTIONS)}, got {self.make_attention!r}"
            )
        check_positive(self, ("embedding_dim", "simtier_tiers"))
        check_positive(self, ("mm_width",), zero=True)
        for name in ("mlp_hidden", "attention_hidden", "make_attention_hidden", "make_hidden"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or not value
                or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value)
            ):
                raise ValueError(f"ModelConfig.{name} must be a non-empty tuple of positive ints, got {value!r}")
        for name in ("attention_softmax", "simtier_soft", "simtier_learned_metric", "make_frozen", "make_attention_frozen"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.simtier_learned_metric and not self.simtier_soft:
            raise ValueError("ModelConfig.simtier_learned_metric needs simtier_soft: true (hard tiers pass no gradient)")


RUNTIME_SWITCHES: tuple[str, ...] = ("fused_kernels",)  # fields that change how, not what, a model computes


def differing_fields(was: object, now: object, there: str = "there") -> list[str]:
    """``field: WAS <there>, NOW now`` for each field of two configs of one dataclass type (a ``ModelConfig``, a
    ``MakeConfig``) that differs, :data:`RUNTIME_SWITCHES` aside: what keeps a run's weights from another's model.

    Example::

        >>> differing_fields(ModelConfig(), ModelConfig(embedding_dim=8, fused_kernels=False))
        ['embedding_dim: 16 there, 8 now']
    """
    return [f"{f.name}: {getattr(was, f.name)!r} {there}, {getattr(now, f.name)!r} now"
            for f in dataclasses.fields(was)  # type: ignore[arg-type]
            if f.name not in RUNTIME_SWITCHES and getattr(was, f.name) != getattr(now, f.name)]


def table_sizes(manifest: Manifest) -> dict[str, int]:
    """Rows of each embedding table of the manifest's feature spec (``FeatureSpec.table_rows``).

    Args:
        manifest (Manifest): the world's manifest; ``id_ranges`` sizes identity tables.

    Returns:
        dict[str, int]: table name -> number of rows (the history shares the item's table).

    Raises:
        ValueError: an identity table without a range, or with < 1 row.

    Example::

        >>> m = Manifest(format_version=1, counts={}, id_ranges={k: 10 for k in ("user_id", "age_bucket",
        ...     "gender", "city_id", "item_id", "shop_id", "brand_id", "category_id", "price_bucket")},
        ...     first_day=0, last_day=1, max_history_len=5)
        >>> table_sizes(m)["item_id"], len(table_sizes(m))
        (10, 9)
    """
    return manifest.features.table_rows(manifest.id_ranges)


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a :class:`ModelConfig` from a ``.yaml``/``.yml`` or ``.toml`` file.

    Keys are field names; missing keys keep their defaults; lists become
    tuples. Unknown keys raise ``ValueError`` naming the file and the key
    (``recsys.config_file.config_from_dict``).

    Args:
        path (str | Path): the config file.

    Returns:
        ModelConfig: the configuration.
    """
    return config_from_dict(ModelConfig, read_config_file(path), source=str(path))
