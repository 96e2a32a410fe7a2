"""``bench.peer``: the peer baseline, a plain-PyTorch DIN (Zhou et al., KDD 2018) for any feature spec.

The simplest model that works, written the way a ranking team would write
it without TorchRec, and fed the same batches as mmctr (``ImpressionReader``
with the same days, batch size, seed and dense statistics), so quality and
speed compare on identical data:

* one ``nn.Embedding(sparse=True)`` per table of the dataset's feature spec,
  its vocabulary the raw IDs the training days hold (``np.unique`` of every
  key that names the table, target and history alike): ID ``v[i]`` is row
  ``i + 1``; row 0 is every unseen ID, kept at zero (``padding_idx``);
* the item group (the item and its ``history_side`` features, e.g. its
  category) of the target and of each history position, concatenated;
  DIN's activation unit scores ``[q, k, q - k, q * k]`` (PReLU layers, raw
  weights, no softmax) and pools the history by the scores;
* the other sparse features embedded one by one, the target group, the
  pooled history and the dense features concatenated into an MLP (PReLU)
  and a logit;
* with ``simtier`` the paper's SimTier (Sheng et al., CIKM 2024): the cosine
  of the target's vector with each history item's (frozen vectors looked up
  by raw item ID; items without a vector are not counted, a target without
  one gives zeros), counted in ``T`` equal-width hard tiers over [-1, 1] and
  divided by the count, concatenated into the MLP input;
* SparseAdam on the tables and Adam on the rest (the same learning rate),
  binary cross-entropy over the rows of weight > 0, ``epochs`` passes.

Notation: ``B`` batch; ``L`` padded history length; ``E`` embedding width;
``S`` history side features; ``G = (1 + S) E`` item-group width; ``P``
pooled sparse features; ``F`` dense features; ``D`` vector width; ``T`` tiers;
``V_t`` vocabulary of table ``t``.

Example::

    >>> import torch
    >>> target = torch.tensor([[1.0, 0.0]])
    >>> history = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    >>> counted = torch.tensor([[True, True, True, False]])
    >>> simtier_histogram(target, history, counted, tiers=4)  # cosines 1.0, -1.0, 0.6
    tensor([[0.3333, 0.0000, 0.0000, 0.6667]])
    >>> rows_of(torch.tensor([5, 9, 12]), torch.tensor([9, 4, 12]))  # 4 unseen: row 0
    tensor([2, 0, 3])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.batch import Batch
from recsys.data.reader import ImpressionReader, ReaderConfig, dense_moments
from recsys.data.schema import Manifest
from recsys.data.spec import FeatureSpec
from recsys.data.vectors import ItemVectors, load_vectors
from recsys.eval.metrics import auc, gauc

EVAL_BATCH = 8192  # impressions per scoring batch
ACTIVATIONS: dict[str, type[nn.Module]] = {"prelu": nn.PReLU, "relu": nn.ReLU}


@dataclass(frozen=True)
class PeerConfig:
    """Widths and optimisation of the peer DIN (fields documented inline)."""

    embedding_dim: int = 16  # E, as mmctr's ModelConfig.embedding_dim
    attention_hidden: tuple[int, ...] = (80, 40)  # DIN's activation unit
    mlp_hidden: tuple[int, ...] = (200, 80)  # DIN's MLP tower (then a logit)
    activation: str = "prelu"  # ACTIVATIONS: DIN's PReLU (the paper's Dice aside), or ReLU as torchrec's MLP
    lr: float = 1e-3  # Adam on the dense part, SparseAdam on the tables
    simtier: bool = False  # add the paper's SimTier histogram to the MLP input (needs vectors)
    tiers: int = 20  # T: hard tiers of width 2 / T over [-1, 1] (the paper's 0.1)


def rows_of(vocabulary: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of raw IDs in a sorted vocabulary: ``vocabulary[i]`` is row ``i + 1``, anything else row 0.

    Args:
        vocabulary (torch.Tensor): sorted distinct int64 IDs, shape (V,).
        ids (torch.Tensor): int64 IDs, any shape.

    Returns:
        torch.Tensor: int64 rows in [0, V], the shape of ``ids``.
    """
    if vocabulary.numel() == 0:
        return torch.zeros_like(ids)
    at = torch.searchsorted(vocabulary, ids).clamp_(max=vocabulary.numel() - 1)
    return torch.where(vocabulary[at] == ids, at + 1, 0)


def simtier_histogram(target: torch.Tensor, history: torch.Tensor, counted: torch.Tensor, tiers: int) -> torch.Tensor:
    """The paper's SimTier: cosines of target and history counted in hard tiers, divided by the count.

    Tier ``t`` holds cosines in ``[-1 + t w, -1 + (t + 1) w)``, ``w = 2 / T``;
    1.0 goes in the last tier. A row with nothing counted is all zeros.

    Args:
        target (torch.Tensor): target vectors, tensor of shape (B, D).
        history (torch.Tensor): history vectors, tensor of shape (B, L, D).
        counted (torch.Tensor): bool tensor of shape (B, L), True = count this position.
        tiers (int): T.

    Returns:
        torch.Tensor: tier shares, tensor of shape (B, T); rows sum to 1 or 0.
    """
    B, L, D = history.shape
    cos = torch.einsum("bd,bld->bl", F.normalize(target, dim=-1), F.normalize(history, dim=-1))  # (B, L)
    tier = ((cos.clamp(-1.0, 1.0) + 1.0) * (tiers / 2)).floor().long().clamp_(0, tiers - 1)  # (B, L)
    weight = counted.to(history.dtype)
    counts = torch.zeros(B, tiers, dtype=history.dtype, device=history.device).scatter_add_(1, tier, weight)
    return counts / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


def _mlp(widths: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of ``widths`` with an ``ACTIVATIONS[activation]`` after each but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class _Split:
    """A batch's IDs as :class:`PeerDin` reads them."""

    single: dict[str, torch.Tensor]  # single-valued key -> (B,) raw IDs
    history: torch.Tensor  # (H, n): the n history IDs of each history key, impressions in order; (0, 0) without
    mask: torch.Tensor  # bool (B, L): position l < the impression's history length


class PeerDin(nn.Module):
    """DIN over a feature spec (module docstring); returns logits.

    Args:
        spec (FeatureSpec): the dataset's features.
        vocabularies (dict[str, np.ndarray]): per table, the sorted raw IDs that get rows (:func:`vocabularies`).
        config (PeerConfig): widths, learning rate, SimTier switch.
        vectors (ItemVectors | None): frozen item vectors by raw item ID; needed with ``config.simtier``.
        dense_stats (dict[str, tuple[float, float]]): the training days' (mean, std) of standardised
            dense features, for the reader of every later day (``recsys.data.reader.dense_moments``).
    """

    def __init__(self, spec: FeatureSpec, vocabularies: dict[str, np.ndarray], config: PeerConfig,
                 vectors: ItemVectors | None, dense_stats: dict[str, tuple[float, float]]) -> None:
        super().__init__()
        if config.simtier and vectors is None:
            raise ValueError("PeerDin with simtier needs item vectors")
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"PeerConfig.activation must be one of {sorted(ACTIVATIONS)}, got {config.activation!r}")
        self.spec, self.config, self.dense_stats = spec, config, dict(dense_stats)
        E = config.embedding_dim
        self._singles = spec.sparse_keys()
        self._group = spec.target_group()  # the target's item group; the history keys match it in order
        self._pooled = spec.pooled()
        self._history = spec.history_keys()
        tables = sorted({spec.table_of(k) for k in spec.kjt_keys()})
        missing = [t for t in tables if t not in vocabularies]
        if missing:
            raise ValueError(f"no vocabulary for table(s) {missing}; have {sorted(vocabularies)}")
        for t in tables:
            self.register_buffer(f"vocab_{t}", torch.as_tensor(vocabularies[t], dtype=torch.int64), persistent=False)
        self.tables = nn.ModuleDict({t: nn.Embedding(len(vocabularies[t]) + 1, E, padding_idx=0, sparse=True) for t in tables})
        G = len(self._group) * E
        self.attention = _mlp((4 * G, *config.attention_hidden, 1), config.activation) if self._history else None
        self.register_buffer("vectors", None, persistent=False)  # (M + 1, D) with simtier; row 0: no vector
        if config.simtier:
            assert vectors is not None
            order = np.argsort(vectors.item_ids, kind="stable")
            self.register_buffer("vector_ids", torch.from_numpy(vectors.item_ids[order].astype(np.int64)), persistent=False)
            table = np.concatenate([np.zeros((1, vectors.dim), np.float32), vectors.vectors[order]])  # row 0: no vector
            self.register_buffer("vectors", torch.from_numpy(table), persistent=False)
        width = len(self._pooled) * E + G * (2 if self._history else 1) + len(spec.dense)
        width += config.tiers if config.simtier else 0
        self.mlp = _mlp((width, *config.mlp_hidden, 1), config.activation)

    def _embed(self, key: str, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of raw IDs of KJT ``key``: (..., E)."""
        table = self.spec.table_of(key)
        return self.tables[table](rows_of(getattr(self, f"vocab_{table}"), ids))

    def _split(self, batch: Batch) -> _Split:
        """The batch KJT's IDs by key (single features one ID each, history keys of equal lengths)."""
        kjt, B = batch.sparse_features, batch.batch_size
        S, H = len(self._singles), len(self._history)
        values, lengths = kjt.values(), kjt.lengths()
        single = dict(zip(self._singles, values[: S * B].view(S, B)))  # key-major: one ID per impression
        if not H:
            return _Split(single, values.new_zeros(0, 0), torch.zeros(B, 1, dtype=torch.bool, device=values.device))
        hist_len = lengths[S * B : (S + 1) * B].long()
        n = int(hist_len.sum())
        if values.numel() != S * B + H * n:
            raise ValueError(f"expected {S} single-valued keys and {H} history keys of equal lengths in the KJT")
        L = max(1, int(hist_len.max()))
        mask = torch.arange(L, device=values.device) < hist_len.unsqueeze(1)  # (B, L)
        return _Split(single, values[S * B :].view(H, n), mask)

    def tier_shares(self, batch: Batch) -> torch.Tensor:
        """The SimTier histogram of each impression: tensor of shape (B, T) (needs ``config.simtier``)."""
        return self._tier_shares(self._split(batch))

    def _tier_shares(self, ids: _Split) -> torch.Tensor:
        if self.vectors is None:
            raise ValueError("this PeerDin has no SimTier (config.simtier is False)")
        t_rows = rows_of(self.vector_ids, ids.single[self.spec.item_key])  # (B,), 0: no vector
        h_rows = torch.zeros(ids.mask.shape, dtype=torch.int64, device=t_rows.device)  # (B, L)
        if ids.history.numel():
            h_rows[ids.mask] = rows_of(self.vector_ids, ids.history[0])
        counted = ids.mask & (h_rows > 0) & (t_rows > 0).unsqueeze(1)
        return simtier_histogram(self.vectors[t_rows], self.vectors[h_rows], counted, self.config.tiers)

    def forward(self, batch: Batch) -> torch.Tensor:
        """
        Args:
            batch (Batch): dense (B, F), KJT of ``spec.kjt_keys()`` (single features one ID
                each, history keys of equal lengths), raw IDs.

        Returns:
            torch.Tensor: logits, tensor of shape (B,).
        """
        ids = self._split(batch)
        target = torch.cat([self._embed(k, ids.single[k]) for k in self._group], dim=-1)  # (B, G)
        parts = [self._embed(k, ids.single[k]) for k in self._pooled] + [target]
        if self.attention is not None:
            flat = torch.cat([self._embed(k, ids.history[h]) for h, k in enumerate(self._history)], dim=-1)  # (n, G)
            keys = target.new_zeros(*ids.mask.shape, target.shape[1])
            keys[ids.mask] = flat  # (B, L, G)
            q = target.unsqueeze(1).expand_as(keys)
            scores = self.attention(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # (B, L)
            parts.append((scores * ids.mask).unsqueeze(-1).mul(keys).sum(dim=1))  # (B, G): DIN's raw weights
        parts.append(batch.dense_features)
        if self.vectors is not None:
            parts.append(self._tier_shares(ids))  # (B, T)
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


class PeerTrain(nn.Module):
    """The loss of a :class:`PeerDin`: BCE averaged over the rows of weight > 0 (a padding batch: 0).

    Returns ``(loss, logits (B,) detached)``, the shape ``bench.train``'s step loop expects.
    """

    def __init__(self, model: PeerDin) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch)
        w = batch.weights.to(logits.dtype)
        loss = (F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none") * w).sum() / w.sum().clamp(min=1.0)
        return loss, logits.detach()


class OptimizerGroup:
    """Optimizers of disjoint parameter groups stepped as one (a plain model's tables and its dense part)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = tuple(optimizers)

    @staticmethod
    def split(model: nn.Module, is_table: Callable[[str], bool]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``model``'s parameters as (those whose name ``is_table``, the others)."""
        named = list(model.named_parameters())
        return [p for n, p in named if is_table(n)], [p for n, p in named if not is_table(n)]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad()


def peer_optimizer(model: nn.Module, lr: float) -> OptimizerGroup:
    """SparseAdam on the embedding tables of ``model`` (a PeerDin or its PeerTrain), Adam on the rest, one learning rate."""
    tables, dense = OptimizerGroup.split(model, lambda name: ".tables." in f".{name}")
    return OptimizerGroup([torch.optim.SparseAdam(tables, lr=lr), torch.optim.Adam(dense, lr=lr)])


def vocabularies(world: Path, days: Sequence[int], dense_stats: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """Per table, the sorted distinct raw IDs that the impressions of ``days`` hold (targets, histories, sides).

    Returns:
        dict[str, np.ndarray]: table -> int64 (V_t,), ascending.
    """
    spec = Manifest.read(world).features
    reader = ImpressionReader(world, ReaderConfig(batch_size=EVAL_BATCH, days=tuple(days), prefetch=0,
                                                  dense_stats=dense_stats or None))
    seen: dict[str, list[np.ndarray]] = {spec.table_of(k): [] for k in spec.kjt_keys()}
    for batch in reader:
        for key, jt in batch.sparse_features.to_dict().items():
            seen[spec.table_of(key)].append(jt.values().numpy())
    return {t: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for t, v in seen.items()}


def build_peer(world: Path, days: Sequence[int], vectors: Path | None, config: PeerConfig) -> PeerDin:
    """A fresh :class:`PeerDin` for ``world`` with vocabularies and dense statistics of ``days``."""
    stats = dense_moments(Path(world), tuple(days))
    table = load_vectors(Path(vectors)) if config.simtier and vectors is not None else None
    return PeerDin(Manifest.read(world).features, vocabularies(Path(world), days, stats), config, table, stats)


@dataclass(frozen=True)
class PeerRun:
    """A trained peer and how its training went."""

    model: PeerDin
    samples: int  # impressions trained on (every epoch)
    seconds: float  # wall time of the epochs (reading included, as mmctr's train_samples_per_s)
    loss: float  # mean loss of the last epoch

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_peer(world: Path, days: Sequence[int], vectors: Path | None = None, *, simtier: bool = False,
               tiers: int = 20, seed: int, batch_size: int, epochs: int = 1,
               config: PeerConfig = PeerConfig()) -> PeerRun:
    """Trains the peer DIN on ``days`` of ``world`` with mmctr's batches (reader order of ``seed``).

    Args:
        world (Path): the dataset directory.
        days (Sequence[int]): training days.
        vectors (Path | None): item vectors (file or pretrain run), for ``simtier``.
        simtier (bool): add the paper's SimTier histogram.
        tiers (int): T.
        seed (int): initialisation and shuffle seed (``ReaderConfig.seed``, as ``TrainConfig.seed``).
        batch_size (int): impressions per step.
        epochs (int): passes over ``days``.
        config (PeerConfig): widths and learning rate (``simtier`` and ``tiers`` override its own).

    Returns:
        PeerRun: the model (in eval mode), samples, seconds and last-epoch loss.
    """
    if simtier and vectors is None:
        raise ValueError("train_peer(simtier=True) needs vectors")
    config = replace(config, simtier=simtier, tiers=tiers)
    torch.manual_seed(seed)
    model = build_peer(Path(world), days, vectors, config)
    train, optimizer = PeerTrain(model).train(), peer_optimizer(model, config.lr)
    reader = ImpressionReader(Path(world), ReaderConfig(batch_size=batch_size, days=tuple(days), shuffle=True, seed=seed,
                                                        dense_stats=model.dense_stats or None))
    samples, seconds, loss = 0, 0.0, float("nan")
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        total, steps, start = 0.0, 0, time.perf_counter()
        for batch in reader:
            if not bool((batch.weights > 0).any()):
                continue  # a padding batch moves nothing
            step_loss, _ = train(batch)
            step_loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            samples += batch.num_real
            total, steps = total + float(step_loss.detach()), steps + 1
        seconds += time.perf_counter() - start
        loss = total / max(steps, 1)
    return PeerRun(model=model.eval(), samples=samples, seconds=seconds, loss=loss)


@dataclass(frozen=True)
class PeerPredictions:
    """A scored day (numpy, N impressions of weight > 0, the day's row order)."""

    predictions: np.ndarray  # float64 (N,) click probability
    labels: np.ndarray  # float64 (N,) 0/1
    user_ids: np.ndarray  # int64 (N,) raw user IDs


@torch.no_grad()
def predict_peer(model: PeerDin, world: Path, day: int) -> PeerPredictions:
    """Scores every impression of ``day`` with the model's training-day dense statistics."""
    model.eval()
    reader = ImpressionReader(Path(world), ReaderConfig(batch_size=EVAL_BATCH, days=(day,),
                                                        dense_stats=model.dense_stats or None))
    parts = []
    for batch in reader:
        real = (batch.weights > 0).numpy()
        p = torch.sigmoid(model(batch).double()).numpy()
        parts.append((p[real], batch.labels.double().numpy()[real], batch.user_ids.numpy()[real]))
    p, y, u = (np.concatenate([part[i] for part in parts]) for i in range(3))
    return PeerPredictions(predictions=p, labels=y, user_ids=u.astype(np.int64))


def evaluate_peer(model: PeerDin, world: Path, day: int) -> dict[str, float]:
    """AUC and GAUC (``recsys.eval.metrics``, as mmctr scores) of ``day``, and its impressions.

    Returns:
        dict[str, float]: ``auc``, ``gauc``, ``samples``.
    """
    pred = predict_peer(model, world, day)
    p, y = torch.from_numpy(pred.predictions), torch.from_numpy(pred.labels)
    return {"auc": auc(p, y), "gauc": gauc(p, y, torch.from_numpy(pred.user_ids))[0], "samples": float(len(p))}
