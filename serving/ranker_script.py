"""The ranker as a TorchScript artefact: one finished run's model on plain tensors, for libtorch.

Notation: ``B`` candidates of one request (or of several), ``R`` distinct
histories among them, ``L`` the longest of those histories, ``F`` dense
features, ``P`` pooled single-valued features, ``G`` the target group (the
item and its ``history_side`` features), ``D`` the multimodal width.

NVIDIA's Triton container serves TorchScript with its ``pytorch_libtorch``
backend, which passes tensors by position and knows nothing of
``KeyedJaggedTensor`` s, feature specs or Parquet tables. So the model is
split where a production ranking system splits it:

* the **feature step** (:func:`artifact_inputs`, run by ``Ranker.inputs``):
  the request's joins (users and items tables, dense statistics, the
  reader's transforms), the ID mapping (managed collisions or hashing: the
  run's own ``IdRemapper``) and the frozen multimodal table (with the vector
  store's fresh items) turn a request into rows and vectors;
* the **artefact** (:class:`ScriptedRanker`, ``torch.jit.script``): every
  trained table and layer, on those tensors, returning click probabilities.

The artefact's inputs, in order (``INPUT__0`` ...)::

    dense           FP32  [B, F]      dense features as the model reads them (standardised)
    pooled_rows     INT64 [B, P]      table rows of the pooled features, in ``FeatureSpec.pooled()`` order
    target_rows     INT64 [B, G]      table rows of the target group
    history_rows    INT64 [R, L, G]   table rows of each distinct history, oldest first, -1 past its end
    history_of      INT64 [B]         which history (of R) each candidate reads
    target_vector   FP32  [B, D]      the candidates' multimodal vectors (zeros: none); not for id_only
    history_vector  FP32  [R, L, D]   the histories' vectors (zeros: none or padding); not for id_only
    ->
    OUTPUT__0       FP32  [B]         click probabilities

Every ``forward`` argument is a Tensor and there is one per configured
input (``id_only``: five, :class:`IdOnlyRanker`), as Triton's PyTorch
backend requires when it loads the model.

It is the eager model's arithmetic, op for op (the attention's first layer
decomposed as in ``TargetAttention``; SimTier's soft or hard tiers; MAKE;
the MLP tower), without ``recsys.models.fused``'s kernels (libtorch does not
load them), so scripted and eager scores agree to float rounding
(``serving.ranker_production.check_artifact``: <= 1e-5). The ID tables are held in fp32 or fp16
(``ARTIFACT_PRECISIONS``: a fp16 row is widened to fp32 after the lookup);
TorchRec's int8 tables need fbgemm's operators, which a stock libtorch
backend does not load, so int8 is served by the Python-backend ranker only.

Example::

    >>> from recsys.data.spec import world_spec
    >>> from recsys.models.config import ModelConfig
    >>> from recsys.models.ctr_model import CtrModel
    >>> spec = world_spec()
    >>> model = CtrModel(ModelConfig(variant="simtier_make"), spec, {t.name: 10 for t in spec.tables}, mm_dim=8).eval()
    >>> B = 3
    >>> kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.arange(9 * B + 2) % 10,
    ...     lengths=torch.tensor([1] * (9 * B) + [2, 0, 0]))
    >>> history_of = torch.tensor([0, 0, 2])
    >>> inputs = artifact_inputs(model, spec, torch.zeros(B, len(spec.dense)), kjt, history_of)
    >>> [tuple(t.shape) for t in inputs]
    [(3, 2), (3, 8), (3, 1), (2, 2, 1), (3,), (3, 8), (2, 2, 8)]
    >>> scripted = script_ranker(model, spec)
    >>> eager = torch.sigmoid(model(torch.zeros(B, len(spec.dense)), kjt, history_of=history_of))
    >>> bool(torch.allclose(scripted(*inputs), eager, atol=1e-6))
    True
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import FeatureSpec
from recsys.models.attention import BilinearTargetAttention, TargetAttention
from recsys.models.ctr_model import CtrModel
from recsys.models.simtier import SimTier

ARTIFACT_PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
ARTIFACT_TOL = 1e-5  # the largest |scripted - eager| click probability an export accepts
ARTIFACT_INPUTS = ("dense", "pooled_rows", "target_rows", "history_rows", "history_of", "target_vector", "history_vector")
ID_ONLY_INPUTS = 5  # id_only reads no vectors: the first five inputs
_FLOAT32_MIN = float(torch.finfo(torch.float32).min)  # a masked attention score before the softmax


def _sequential(mlp: MLP) -> nn.Sequential:
    """A torchrec ``MLP`` (ReLU perceptrons) as ``nn.Sequential(Linear, ReLU, ...)`` sharing its layers."""
    layers: list[nn.Module] = []
    for perceptron in mlp._mlp:
        if perceptron._activation_fn is not torch.relu:
            raise ValueError(f"the artefact serves ReLU MLPs; got activation {perceptron._activation_fn}")
        layers += [perceptron._linear, nn.ReLU()]
    return nn.Sequential(*layers)


def _pool(scores: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, softmax: bool, masked_score: float) -> torch.Tensor:
    """``recsys.models.attention.pool`` (scores (B, L), keys (B, L, D) -> (B, D)); ``masked_score``: the
    float32 minimum, a masked position's score before the softmax (TorchScript takes no global constant)."""
    if softmax:
        weights = torch.softmax(scores.masked_fill(~mask, masked_score), dim=1) * mask
    else:
        weights = scores.masked_fill(~mask, 0.0)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)


class _Attention(nn.Module):
    """``TargetAttention.forward``'s unfused path (same weights, same decomposition of the first layer)."""

    def __init__(self, attention: TargetAttention) -> None:
        super().__init__()
        self.unit = attention.unit
        self.dim: int = attention._dim
        self.extra_dim: int = attention._extra_dim
        self.softmax: bool = attention._softmax
        self.masked_score: float = _FLOAT32_MIN  # the artefact computes in float32

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, extra: Optional[torch.Tensor]) -> torch.Tensor:
        D = self.dim
        first = self.unit[0]
        w = first.weight
        w_q, w_k, w_d, w_p = w[:, :D], w[:, D : 2 * D], w[:, 2 * D : 3 * D], w[:, 3 * D : 4 * D]
        per_row = (w_k - w_d).t().unsqueeze(0) + query.unsqueeze(2) * w_p.t().unsqueeze(0)  # (B, D, H1)
        row_term = (query @ (w_q + w_d).t() + first.bias).unsqueeze(1)  # (B, 1, H1)
        hidden = torch.baddbmm(row_term, keys, per_row)  # (B, L, H1)
        if extra is not None:
            hidden = hidden + extra @ w[:, 4 * D :].t()
        scores = hidden
        for i, layer in enumerate(self.unit):
            if i > 0:
                scores = layer(scores)
        return _pool(scores.squeeze(-1), keys, mask, self.softmax, self.masked_score)


class _BilinearAttention(nn.Module):
    """``BilinearTargetAttention.forward``'s unfused path (same weights)."""

    def __init__(self, attention: BilinearTargetAttention) -> None:
        super().__init__()
        self.weight = attention.weight
        self.bias = attention.bias
        self.softmax: bool = attention._softmax
        self.masked_score: float = _FLOAT32_MIN  # the artefact computes in float32

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, extra: Optional[torch.Tensor]) -> torch.Tensor:
        scores = torch.bmm(keys, (query @ self.weight).unsqueeze(2)).squeeze(2) + self.bias  # (B, L)
        return _pool(scores, keys, mask, self.softmax, self.masked_score)


class _SimTier(nn.Module):
    """``SimTier.forward`` without gradients or kernels (soft or hard tiers, fixed or learned metric)."""

    def __init__(self, simtier: SimTier) -> None:
        super().__init__()
        self.tiers: int = simtier._n_tiers
        self.soft: bool = simtier._soft
        self.unit: bool = simtier._unit
        self.metric: Optional[torch.Tensor] = None if simtier.metric is None else simtier.metric.detach()

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.unit:
            target, history = F.normalize(target, dim=-1), F.normalize(history, dim=-1)
        metric = self.metric
        query = target if metric is None else target @ metric.t()
        weight = mask.to(history.dtype)
        sims = torch.bmm(history, query.unsqueeze(2)).squeeze(2)  # (B, L)
        T = self.tiers
        counts = torch.zeros(sims.shape[0], T, dtype=sims.dtype, device=sims.device)
        if self.soft:
            x = (sims.clamp(-1.0, 1.0) + 1.0) * (T / 2) - 0.5
            low = x.floor()
            per_item = weight / weight.sum(dim=1, keepdim=True).clamp(min=1.0)
            upper_share = (x - low) * per_item
            lower = low.long()
            counts.scatter_add_(1, lower.clamp(0, T - 1), per_item - upper_share)
            counts.scatter_add_(1, (lower + 1).clamp(0, T - 1), upper_share)
            return counts
        tier = ((sims.clamp(-1.0, 1.0) + 1.0) * (T / 2)).floor().long().clamp(0, T - 1)
        counts.scatter_add_(1, tier, weight)
        return counts / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


class _Make(nn.Module):
    """``Make.forward``: attention over the history vectors, the shallow MLP, the logit."""

    def __init__(self, make: nn.Module) -> None:
        super().__init__()
        attention = make.attention
        self.attention = (
            _BilinearAttention(attention) if isinstance(attention, BilinearTargetAttention) else _Attention(attention)
        )
        self.mlp = _sequential(make.mlp)
        self.logit = make.logit

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, missing: torch.Tensor,
                dense: torch.Tensor) -> List[torch.Tensor]:
        attention = self.attention(target, history, mask, None)
        hidden = self.mlp(torch.cat([target, attention, target * attention, missing, dense], dim=-1))
        return [attention, hidden, self.logit(hidden)]


class ScriptedRanker(nn.Module):
    """A :class:`~recsys.models.ctr_model.CtrModel` on the artefact's plain tensors (module docstring).

    Shares the model's parameters (ID tables copied only for fp16); built in
    eval mode, meant for ``torch.jit.script``.

    Args:
        model (CtrModel): the run's model, unsharded, unquantised (``Ranker.load(..., precision="fp32")``).
        spec (FeatureSpec): the dataset's features.
        precision (str): the ID tables' dtype, one of ``ARTIFACT_PRECISIONS``.

    Raises:
        ValueError: an unknown precision, or an MLP whose activation is not ReLU.
    """

    def __init__(self, model: CtrModel, spec: FeatureSpec, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in ARTIFACT_PRECISIONS:
            raise ValueError(f"precision must be one of {list(ARTIFACT_PRECISIONS)}, got {precision!r}")
        dtype = ARTIFACT_PRECISIONS[precision]
        sparse = model.id_model.sparse_arch
        weights: dict[str, nn.Embedding] = {}

        def table(weight: torch.Tensor) -> nn.Embedding:
            key = str(weight.data_ptr())  # features reading one table share one module
            if key not in weights:
                weights[key] = nn.Embedding.from_pretrained(weight.detach().to(dtype), freeze=True)
            return weights[key]

        columns = {name: i for i, name in enumerate(spec.pooled())}
        pooled, cols = [], []
        for config in sparse.ebc.embedding_bag_configs():  # the EBC's output order: table by table
            for feature in config.feature_names:
                pooled.append(table(sparse.ebc.embedding_bags[config.name].weight))
                cols.append(columns[feature])
        self.pooled_tables = nn.ModuleList(pooled)
        self.pooled_cols: List[int] = cols
        group = [sparse.item_table.embedding_bags[spec.table_of(f)].weight for f in spec.target_group()]
        self.group_tables = nn.ModuleList([table(w) for w in group])
        self.attention = _Attention(model.id_model.attention)
        self.over_arch = nn.Sequential(_sequential(model.id_model.over_arch[0]), model.id_model.over_arch[1])
        variant = model._spec
        self.uses_vectors: bool = variant.uses_vectors()
        self.vector: bool = variant.vector
        self.simscore: bool = variant.simscore
        self.simtier = None if model.simtier is None else _SimTier(model.simtier)
        self.make = None if model.make is None else _Make(model.make)
        self.eval()

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor, target: torch.Tensor, history: torch.Tensor,
                history_of: torch.Tensor, target_vector: torch.Tensor, history_vector: torch.Tensor) -> torch.Tensor:
        """Click probabilities (B,) of the module docstring's seven inputs (every argument a Tensor: Triton's
        PyTorch backend refuses any other type, and wants one argument per configured input)."""
        return self.score(dense, pooled, target, history, history_of, target_vector, history_vector)

    def score(self, dense: torch.Tensor, pooled: torch.Tensor, target: torch.Tensor, history: torch.Tensor,
              history_of: torch.Tensor, target_vector: Optional[torch.Tensor],
              history_vector: Optional[torch.Tensor]) -> torch.Tensor:
        """Click probabilities (B,); the vectors None for ``id_only``."""
        mask = history[:, :, 0] >= 0  # (R, L)
        rows = history.clamp(min=0)
        targets: List[torch.Tensor] = []
        histories: List[torch.Tensor] = []
        for i, emb in enumerate(self.group_tables):
            targets.append(emb(target[:, i]).float())
            histories.append(emb(rows[:, :, i]).float())
        item = torch.cat(targets, dim=-1)  # (B, I)
        seq = (torch.cat(histories, dim=-1) * mask.unsqueeze(-1).float()).index_select(0, history_of)  # (B, L, I)
        mask = mask.index_select(0, history_of)
        pooled_parts: List[torch.Tensor] = []
        for i, emb in enumerate(self.pooled_tables):
            pooled_parts.append(emb(pooled[:, self.pooled_cols[i]]).float())
        pooled_emb = torch.cat(pooled_parts, dim=-1) if len(pooled_parts) > 0 else dense[:, :0]
        mlp_inputs: List[torch.Tensor] = []
        extra: Optional[torch.Tensor] = None
        if self.uses_vectors and target_vector is not None and history_vector is not None:
            vectors = history_vector.index_select(0, history_of)  # (B, L, D)
            missing = (torch.linalg.vector_norm(target_vector, dim=-1, keepdim=True) == 0).float()  # (B, 1)
            mm_mask = mask & (torch.linalg.vector_norm(vectors, dim=-1) > 0)
            mlp_inputs.append(missing)
            simtier = self.simtier
            if simtier is not None:
                mlp_inputs.append(simtier(target_vector, vectors, mm_mask & (missing == 0)))
            make = self.make
            if make is not None:
                mlp_inputs.extend(make(target_vector, vectors, mm_mask, missing, dense))
            if self.vector:
                item = torch.cat([item, target_vector], dim=-1)
                seq = torch.cat([seq, vectors], dim=-1)
            if self.simscore:
                sims = torch.bmm(F.normalize(vectors, dim=-1), F.normalize(target_vector, dim=-1).unsqueeze(2))
                extra = sims  # (B, L, 1)
        pooled_history = self.attention(item, seq, mask, extra)
        logits = self.over_arch(torch.cat([pooled_emb, item, pooled_history, dense] + mlp_inputs, dim=-1))
        return torch.sigmoid(logits.squeeze(-1))


def _padded(values: torch.Tensor, lengths: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """Jagged values (sum(lengths),) to (len(lengths), width), ``fill`` past each row's length."""
    out = torch.full((lengths.numel(), width), fill, dtype=values.dtype)
    out[torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)] = values
    return out


def _by_key(features: KeyedJaggedTensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each key's (values, lengths) of a KJT in one pass (its key-major layout; cheaper than a ``kjt[key]`` per key)."""
    keys = features.keys()
    lengths = features.lengths().view(len(keys), -1)
    totals = lengths.sum(dim=1).tolist()
    values = torch.split(features.values(), totals)
    return {k: (values[i], lengths[i]) for i, k in enumerate(keys)}


@torch.no_grad()
def artifact_inputs(model: CtrModel, spec: FeatureSpec, dense: torch.Tensor, features: KeyedJaggedTensor,
                    history_of: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The feature step: a batch (as ``CtrModel.forward`` takes it) as the artefact's inputs (module docstring).

    Args:
        model (CtrModel): the run's model in eval mode (its ``remap`` maps raw IDs to rows without admitting any;
            its ``mm_arch`` holds the vectors, fresh items included).
        spec (FeatureSpec): the dataset's features.
        dense (torch.Tensor): (B, F) dense features.
        features (KeyedJaggedTensor): the batch KJT, stride B, raw IDs (``ImpressionReader.batch_of``).
        history_of (torch.Tensor | None): (B,) the row whose history each row reads (a request's first,
            ``serving.ranker.first_rows``); the other rows' history entries, if the KJT holds any (or none, as
            ``serving.ranker.share_history`` leaves them), are not read. None: each its own.

    Returns:
        tuple[torch.Tensor, ...]: ``ARTIFACT_INPUTS`` (the first ``ID_ONLY_INPUTS`` for ``id_only``).

    Raises:
        ValueError: a pooled feature that does not hold one ID per impression.
    """
    if model.training:
        raise ValueError("artifact_inputs needs the model in eval mode (training mode would admit IDs)")
    B = features.stride()
    rows = _by_key(features if model.remap is None else model.remap(features))
    single = {}
    for key in spec.pooled() + spec.target_group():
        values, lengths = rows[key]
        if values.numel() != B or not bool((lengths == 1).all()):
            raise ValueError(f"{key}: the artefact takes one ID per impression, got lengths {lengths.tolist()[:8]}")
        single[key] = values
    pooled = torch.stack([single[k] for k in spec.pooled()], dim=1) if spec.pooled() else torch.zeros(B, 0, dtype=torch.int64)
    target = torch.stack([single[k] for k in spec.target_group()], dim=1)
    owners = torch.arange(B) if history_of is None else torch.unique(history_of)
    inverse = torch.arange(B) if history_of is None else torch.searchsorted(owners, history_of)
    keys = spec.history_keys()
    every = rows[keys[0]][1] if keys else torch.zeros(B, dtype=torch.int64)  # (B,) history lengths, all rows
    lengths = every[owners]
    L = max(1, int(lengths.max())) if lengths.numel() else 1
    width = max(1, int(every.max())) if every.numel() else 1
    if keys:  # the owners' rows: each history once (the others' copies, if any, are not read)
        history = torch.stack([_padded(rows[k][0], every, width, -1)[owners, :L] for k in keys], dim=2)  # (R, L, G)
    else:
        history = torch.full((len(owners), L, len(spec.target_group())), -1, dtype=torch.int64)
    inputs = (dense.to(torch.float32), pooled, target, history, inverse)
    if model.mm_arch is None:
        return inputs
    arch = model.mm_arch
    raw = rows if model.remap is None else _by_key(features)  # raw IDs (or rows) as the table reads them
    target_vector = arch.vectors_of(raw[spec.item_key][0])
    if keys:
        raw_ids = _padded(raw[spec.history][0], every, width, 0)[owners, :L]
        history_vector = arch.vectors_of(raw_ids) * (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    else:
        history_vector = torch.zeros(len(owners), L, arch.output_dim())
    return (*inputs, target_vector, history_vector)


class IdOnlyRanker(nn.Module):
    """``id_only``'s artefact: :class:`ScriptedRanker` on the first five inputs alone (no vectors).

    Args:
        ranker (ScriptedRanker): the ``id_only`` model's.
    """

    def __init__(self, ranker: ScriptedRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor, target: torch.Tensor, history: torch.Tensor,
                history_of: torch.Tensor) -> torch.Tensor:
        """Click probabilities (B,) of the module docstring's first five inputs."""
        return self.ranker.score(dense, pooled, target, history, history_of, None, None)


def ranker_artifact(model: CtrModel, spec: FeatureSpec, precision: str = "fp32") -> nn.Module:
    """The artefact's module for ``model`` (sharing its weights): :class:`ScriptedRanker`, or
    :class:`IdOnlyRanker` around it for ``id_only`` (``ID_ONLY_INPUTS`` inputs)."""
    ranker = ScriptedRanker(model, spec, precision)
    return IdOnlyRanker(ranker) if model.mm_arch is None else ranker


def script_ranker(model: CtrModel, spec: FeatureSpec, precision: str = "fp32") -> torch.jit.ScriptModule:
    """``torch.jit.script`` of :func:`ranker_artifact` on a copy of ``model``, no parameter requiring a gradient
    (TorchScript's deprecation warning muted: libtorch needs TorchScript)."""
    return script_module(ranker_artifact(copy.deepcopy(model), spec, precision).requires_grad_(False))


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a built :func:`ranker_artifact` (sharing its model's weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


def load_artifact(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a saved artefact on CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
