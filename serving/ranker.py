"""The online ranker: a finished CTR run scoring one user's candidates, in-process.

Notation: ``N`` candidates of a request, ``L`` history items, ``F`` dense features.

A request (:class:`RankRequest`) is what a serving system has at ranking
time: the user ID, the user's behaviour history (item IDs, most recent
last), ``N`` candidate item IDs, and optionally per-candidate values of the
dataset's *context* features, the ``impressions``-sourced features other than
the user, the item and the history (the world's ``position``). A context
feature a request leaves out is 0 for every candidate (``CONTEXT_DEFAULT``).

:class:`Ranker` loads the run as ``mmctr evaluate`` rebuilds it
(``recsys.train.trainer.build_plain`` on the run's ``train_log.json``:
the variant's model, its ID table sizes, the frozen table filled from the
run's vectors through the run's projection, MAKE's weights) but
unsharded, in eval mode, with the newest checkpoint's weights read by DCP
(``checkpoint.load_model_weights``). A request becomes ``N`` impression
rows that go through the reader's own joins and transforms
(``ImpressionReader.batch_of``: profile and item features from the
dataset's ``users`` and ``items`` tables, dense statistics of the training
days, the history cut to the world's ``max_history_len``), so a served score
equals the offline score of the same impression.

Example (a tiny world and run; see ``tests/serving/test_ranker.py``)::

    ranker = Ranker.load(Path("runs/demo/ctr/simtier_make"), Path("runs/demo/world"))
    ranker.score(RankRequest(user=7, history=np.array([3, 9]), candidates=np.array([11, 12, 13])))
    # -> array of 3 click probabilities, float32
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.projection import PROJECTION_FILE, load_projection, project_rows
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.spec import FeatureSpec
from recsys.data.vectors import ItemVectors, check_vectors, open_store, read_snapshot, store_meta
from recsys.distributed import DistContext
from recsys.eval.runs import RunError, load_run
from recsys.models.mm_table import is_mm_table_param, multimodal_arch
from recsys.train.checkpoint import load_model_weights
from recsys.train.setup import fill_mm_table
from recsys.train.trainer import build_plain

# How the served ID tables hold their rows: TorchRec's quantised EmbeddingBagCollection for fp16 and
# int8 (row-wise: each row its own scale and bias); the frozen multimodal table stays fp32 (SimTier reads its cosines).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.half, "int8": torch.qint8}
# What runs the model's arithmetic: "torchscript" (``serving.ranker_script``'s scripted model on the feature step's
# tensors, the production artefact's code; fp32 tables only) or "eager" (the CtrModel itself); "auto": TorchScript
# for fp32 tables, eager for TorchRec's quantised ones.
ENGINES = ("auto", "torchscript", "eager")
REFRESH_INTERVAL_S = 0.2  # the most seconds between two looks at the vector store (freshness: <= 1 s)
MAX_CANDIDATES = 500  # the most candidates one request may hold (export-ranker --max-candidates)
CONTEXT_DEFAULT = 0.0  # a context feature a request leaves out, for every candidate


def context_features(spec: FeatureSpec) -> tuple[str, ...]:
    """The spec's per-candidate context features: ``impressions`` columns other than user, item, history, label, day.

    Example::

        >>> from recsys.data.spec import world_spec
        >>> context_features(world_spec())
        ('position',)
    """
    fixed = {spec.user_key, spec.item_key, spec.history, spec.label, spec.day}
    names = [f.name for f in spec.sparse if f.source == "impressions"] + [f.name for f in spec.dense if f.source == "impressions"]
    return tuple(n for n in dict.fromkeys(names) if n not in fixed)


@dataclass(frozen=True)
class RankRequest:
    """One ranking request (module docstring).

    Args:
        user (int): the user ID, as the dataset's impressions name users.
        history (np.ndarray): int64 item IDs of shape (L,), oldest first (L may be 0).
        candidates (np.ndarray): int64 item IDs of shape (N,), 1 <= N.
        context (dict[str, np.ndarray]): per-candidate values (N,) of context features, by name.
    """

    user: int
    history: np.ndarray
    candidates: np.ndarray
    context: dict[str, np.ndarray] = field(default_factory=dict)


class RankRequestError(ValueError):
    """A request the ranker refuses; the message names the field."""


INT64_EXACT = 2**53  # floats hold every integer up to this exactly; an ID given as a larger float may have lost bits


def context_ids(name: str, values: object) -> np.ndarray:
    """A categorical context feature's per-candidate values as int64 IDs; never a silent cast.

    Integers (and bools) pass as they are; floats only where each is a whole
    number of magnitude <= 2**53 (a larger float cannot say which ID it was);
    anything else is refused.

    Args:
        name (str): the feature (named in the error).
        values (object): array-like of shape (N,).

    Returns:
        np.ndarray: int64 of shape (N,).

    Raises:
        RankRequestError: a value with a fractional part, NaN or infinite, a float beyond 2**53,
            an unsigned ID beyond int64, or a non-numeric dtype; the message names the feature
            and the first bad candidate.

    Example::

        >>> context_ids("slot", [3, 1152921504606846977]).tolist(), context_ids("slot", np.array([2.0])).tolist()
        ([3, 1152921504606846977], [2])
        >>> context_ids("slot", [0, 1.5])
        Traceback (most recent call last):
            ...
        serving.ranker.RankRequestError: context feature 'slot': candidate 1's value 1.5 is not an integer ID (a categorical feature's values are int64 IDs)
    """
    array = np.asarray(values)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.signedinteger):
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        bad = array > np.iinfo(np.int64).max
    elif np.issubdtype(array.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(array) & (np.floor(array) == array) & (np.abs(array) <= INT64_EXACT))
    else:
        raise RankRequestError(f"context feature {name!r}: IDs must be integers, got dtype {array.dtype}")
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise RankRequestError(f"context feature {name!r}: candidate {i}'s value {array.reshape(-1)[i].item()!r} is not "
                               f"an integer ID (a categorical feature's values are int64 IDs)")
    return array.astype(np.int64)


INT64 = np.iinfo(np.int64)


def item_ids(name: str, values: object) -> np.ndarray:
    """Item IDs (``candidates``, ``history``) as int64, never wrapped: a platform's uint64 ID past int64 is refused.

    Args:
        name (str): the field (named in the error).
        values (object): array-like of integers, shape (N,) (N may be 0).

    Returns:
        np.ndarray: int64 of shape (N,).

    Raises:
        RankRequestError: not 1-D, not integers, or an ID outside int64 (naming the field, its position and value).

    Example::

        >>> item_ids("candidates", [3, 2**62]).tolist()
        [3, 4611686018427387904]
        >>> item_ids("candidates", [3, 2**63])
        Traceback (most recent call last):
            ...
        serving.ranker.RankRequestError: candidates: item ID 9223372036854775808 (position 1) is outside int64, the IDs the model takes
    """
    # a list of Python ints is read as objects: np.asarray([3, 2**63]) would be float64, the ID's low bits lost
    array = values if isinstance(values, np.ndarray) else np.array(values, dtype=object)
    if array.ndim != 1:
        raise RankRequestError(f"{name}: a 1-D sequence of item IDs, got shape {array.shape}")
    if not array.size:
        return array.astype(np.int64)
    if array.dtype == object:  # Python (or numpy) integers, each checked as the integer it is
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array):
            raise RankRequestError(f"{name}: item IDs must be integers")
        bad = np.array([not INT64.min <= int(v) <= INT64.max for v in array])
        if not bad.any():
            return np.array([int(v) for v in array], dtype=np.int64)
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        bad = array > INT64.max
    elif np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    else:
        raise RankRequestError(f"{name}: item IDs must be integers, got dtype {array.dtype}")
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise RankRequestError(f"{name}: item ID {int(array[i])} (position {i}) is outside int64, the IDs the model takes")
    return array.astype(np.int64)


def user_id(value: object) -> int:
    """The user ID as an int within int64, or :class:`RankRequestError` (never wrapped into another user).

    Example::

        >>> user_id(np.uint64(7))
        7
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RankRequestError(f"user: the user ID must be an integer, got {value!r}")
    if not INT64.min <= int(value) <= INT64.max:
        raise RankRequestError(f"user: ID {int(value)} is outside int64, the IDs the model takes")
    return int(value)


def check_request(request: RankRequest, known: tuple[str, ...], max_candidates: int,
                  categorical: Collection[str] = ()) -> None:
    """Refuses a malformed request (:class:`RankRequestError` naming the field).

    ``categorical``: the context features whose values are IDs (:func:`context_ids` checks them).

    Example::

        >>> check_request(RankRequest(1, np.array([2]), np.array([], dtype=np.int64)), (), 10)
        Traceback (most recent call last):
            ...
        serving.ranker.RankRequestError: candidates: empty; a request ranks 1 to 10 items
    """
    n = len(request.candidates)
    if np.ndim(request.candidates) != 1 or np.ndim(request.history) != 1:
        raise RankRequestError(f"candidates and history must be 1-D, got shapes {np.shape(request.candidates)} "
                               f"and {np.shape(request.history)}")
    if not 1 <= n <= max_candidates:
        raise RankRequestError(f"candidates: {'empty' if n == 0 else f'{n} items'}; a request ranks 1 to {max_candidates} items")
    user_id(request.user)
    for name, array in (("candidates", request.candidates), ("history", request.history)):
        item_ids(name, array)
    for name, values in request.context.items():
        if name not in known:
            raise RankRequestError(f"context feature {name!r} is not one of the dataset's {list(known)}")
        if np.shape(values) != (n,):
            raise RankRequestError(f"context feature {name!r}: shape {np.shape(values)}, expected ({n},), one per candidate")
        if name in categorical:
            context_ids(name, values)
        elif not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
            raise RankRequestError(f"context feature {name!r}: NaN or infinite values")


def first_rows(sizes: list[int]) -> torch.Tensor:
    """Each row's request's first row, int64 (sum(sizes),), for requests of ``sizes`` candidates in row order.

    Example::

        >>> first_rows([2, 1, 3]).tolist()
        [0, 0, 2, 3, 3, 3]
    """
    starts = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.int64)
    return torch.repeat_interleave(starts, torch.tensor(sizes))


def share_history(features: KeyedJaggedTensor, keys: tuple[str, ...], sizes: list[int]) -> tuple[KeyedJaggedTensor, torch.Tensor | None]:
    """The user side once per request: the history sequences kept on each request's first candidate only.

    The candidates of one request share its history; the model looks it up
    once per request and gathers it per candidate (``CtrModel.forward``'s
    ``history_of``), instead of N times. :class:`Ranker` builds this form
    directly (``rows(shared=True)``); this derives it from full rows (every
    row its history, as ``mmctr evaluate`` reads a log).

    Args:
        features (KeyedJaggedTensor): the batch KJT of the requests' rows, stride B = sum(sizes).
        keys (tuple[str, ...]): the history keys (``FeatureSpec.history_keys``).
        sizes (list[int]): candidates per request, in row order.

    Returns:
        tuple: the KJT with the ``keys`` emptied on every row but each request's first,
        and ``history_of`` (B,), int64: each row's request's first row (None without history keys).

    Example::

        >>> kjt = KeyedJaggedTensor(keys=["item_id", "h"], values=torch.tensor([5, 6, 7, 1, 2, 1, 2, 3]),
        ...     lengths=torch.tensor([1, 1, 1, 2, 2, 1]))
        >>> shared, history_of = share_history(kjt, ("h",), [2, 1])
        >>> shared["h"].lengths().tolist(), shared["h"].values().tolist(), history_of.tolist()
        ([2, 0, 1], [1, 2, 3], [0, 0, 2])
    """
    if not keys:
        return features, None
    B = features.stride()
    history_of = first_rows(sizes)
    first = history_of == torch.arange(B)
    lengths = features.lengths().view(-1, B)  # (K, B): the KJT's key-major layout
    history_key = torch.tensor([k in keys for k in features.keys()]).unsqueeze(1)  # (K, 1)
    kept = ~(history_key & ~first.unsqueeze(0))  # (K, B): every entry but a history on a later candidate
    shared = KeyedJaggedTensor(
        keys=features.keys(), values=features.values()[torch.repeat_interleave(kept.view(-1), lengths.reshape(-1))],
        lengths=torch.where(kept, lengths, torch.zeros_like(lengths)).view(-1), stride=B)
    return shared, history_of


class Ranker:
    """A finished run, unsharded and in eval mode, scoring :class:`RankRequest` s (module docstring).

    Fresh vectors: with a vector store (``mmctr embed-new``'s), :meth:`refresh`
    adds the store's vectors of items the run's table lacks to the frozen
    table (projected through the run's basis when it has one), so a new item
    is scored with its vector as soon as the store holds it; :meth:`score`
    looks at the store at most every ``refresh_interval_s``.

    Args:
        model (torch.nn.Module): the run's ``CtrModel`` (weights loaded, eval mode).
        reader (ImpressionReader): the dataset's reader with the run's table sizes and dense statistics.
        name (str): the run's name (its folder name).
        max_candidates (int): the most candidates a request may hold.
        vectors (ItemVectors | None): the frozen table's vectors as loaded (projected); None for ``id_only``.
        store (Path | None): the vector store to refresh from.
        basis (np.ndarray | None): the run's projection (D, K), applied to the store's vectors.
        refresh_interval_s (float): seconds between two looks at the store.
        scripted (torch.jit.ScriptModule | None): ``serving.ranker_script.ScriptedRanker`` of ``model``, scripted:
            it scores the requests (``engine="torchscript"``); None: ``model`` does.
    """

    def __init__(self, model: torch.nn.Module, reader: ImpressionReader, name: str, max_candidates: int = MAX_CANDIDATES,
                 vectors: ItemVectors | None = None, store: Path | None = None, basis: np.ndarray | None = None,
                 refresh_interval_s: float = REFRESH_INTERVAL_S, scripted: torch.jit.ScriptModule | None = None) -> None:  # fmt: skip
        self.model = model.eval()
        self.scripted = scripted
        self.reader = reader
        self.name = name
        self.max_candidates = max_candidates
        self.spec = reader.spec
        self.context = context_features(self.spec)
        self.store = None if vectors is None else store  # id_only reads no vectors
        self.refresh_interval_s = refresh_interval_s
        self._vectors = vectors
        self._basis = basis
        self._store_version = int(vectors.manifest.get("store_version", 0)) if vectors is not None and self.store else 0
        self._db = None
        self._looked = 0.0
        self.fresh_items = 0  # items the store added since load
        self._history_dense = [d for d, f in enumerate(self.spec.dense) if f.source == "history"]  # from the history

    @staticmethod
    def load(run: Path, world: Path, max_candidates: int = MAX_CANDIDATES, store: Path | None = None,
             precision: str = "fp32", engine: str = "auto") -> "Ranker":
        """Loads a finished run (``mmctr train`` or ``mmctr retrain``) on the dataset ``world``.

        Args:
            run (Path): the run folder.
            world (Path): the dataset it was trained on.
            max_candidates (int): the most candidates a request may hold.
            store (Path | None): a vector store whose new items' vectors join the frozen
                table now and on every :meth:`refresh`; None: the run's own store, if any.
            precision (str): the ID tables' row format, one of ``PRECISIONS`` (TorchRec's
                ``quantize_embeddings`` for fp16 and int8).
            engine (str): one of ``ENGINES``: what runs the model (the scripted model or the eager one;
                the same scores to float rounding, ``serving.ranker_production.check_artifact``).

        Raises:
            RunError: the run is unfinished, of another world, or names files that are gone (``runs.load_run``).
            ValueError: an unknown precision or engine, or TorchScript asked for quantised tables.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        if engine == "torchscript" and precision != "fp32":
            raise ValueError(f"the TorchScript engine serves fp32 tables; {precision} tables are TorchRec's quantised "
                             f"modules, served by the eager engine (engine='eager' or 'auto')")
        spec = load_run(Path(run), Path(run).name, Path(world))
        if spec.checkpoint is None or spec.train is None:
            raise RunError(f"run {run}: no checkpoint")
        job = spec.job(Path(world), quiet=True)
        if store is not None and spec.vectors is not None:
            job = dataclasses.replace(job, store=Path(store))
        ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
        plain = build_plain(job, ctx)
        # the frozen table stays as build_plain filled it: the run's vectors (plus the store's new items)
        load_model_weights(spec.checkpoint, plain.model, skip=is_mm_table_param)
        reader = ImpressionReader(Path(world), ReaderConfig(batch_size=max_candidates, table_sizes=plain.sizes,
                                                            out_of_range=spec.train.out_of_range,
                                                            dense_stats=plain.dense_stats or None))
        scripted = None
        if engine != "eager" and precision == "fp32":
            from serving.ranker_script import ranker_artifact, script_module

            scripted = script_module(ranker_artifact(plain.model.model.eval(), reader.spec))  # shares the weights
        if PRECISIONS[precision] is not None:
            from torchrec.inference.modules import quantize_embeddings

            quantize_embeddings(plain.model.model.id_model.sparse_arch, dtype=PRECISIONS[precision], inplace=True)
        projection = spec.path / PROJECTION_FILE
        basis = load_projection(projection)[0] if plain.vectors is not None and projection.is_file() else None
        return Ranker(plain.model.model, reader, spec.name, max_candidates, plain.vectors, job.store, basis,
                      scripted=scripted)

    def refresh(self) -> int:
        """Adds the store's vectors of items the frozen table lacks; returns how many were added.

        Reads only what the store added since the last look (its ``version``).
        Items the table already holds keep their vector (as ``merge_vectors``).
        A raw-ID table is rebuilt one row larger per new item; an identity
        table takes row ``item_id % rows``, as at load.

        Raises:
            ValueError: a store vector that is not finite or not unit norm, naming the store and the item.
        """
        if self.store is None or self._vectors is None:
            return 0
        if self._db is None:
            self._db = open_store(Path(self.store))
        version = int(store_meta(self._db, "version") or 0)
        if version <= self._store_version:
            return 0
        snap = read_snapshot(self._db, self._store_version)
        self._store_version = snap.version
        new = ~np.isin(snap.item_ids, self._vectors.item_ids)
        if not new.any():
            return 0
        ids, vectors = snap.item_ids[new], snap.vectors[new]
        check_vectors(ids, vectors, snap.dim, self.store)
        if self._basis is not None:
            vectors = project_rows(vectors, self._basis)
        order = np.argsort(np.concatenate([self._vectors.item_ids, ids]), kind="stable")
        self._vectors = dataclasses.replace(
            self._vectors, item_ids=np.concatenate([self._vectors.item_ids, ids])[order],
            vectors=np.concatenate([self._vectors.vectors, vectors.astype(np.float32)])[order])
        manifest = self.reader.manifest
        if self.model.mm_arch.raw_ids:  # every vector has its own row: a table one row per new item larger
            old = self.model.mm_arch
            arch = multimodal_arch(self.spec, len(self._vectors.item_ids) + 1, self._vectors.dim,
                                   history_slots=manifest.max_history_len)
            fill_mm_table(arch, self._vectors, manifest)
            self.model.mm_arch = arch.to(old.table_weight().device)
        else:
            fill_mm_table(self.model.mm_arch, self._vectors, manifest)
        self.fresh_items += len(ids)
        return len(ids)

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if self.store is not None and now - self._looked >= self.refresh_interval_s:
            self._looked = now
            self.refresh()

    def table_bytes(self) -> int:
        """Bytes of the ID tables as served (their state: rows, and the scales and biases of quantised rows)."""
        state = self.model.id_model.sparse_arch.state_dict()
        return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))

    @property
    def unknown_counts(self) -> dict[str, int]:
        """Scored rows (candidate impressions) whose user or candidate had no row in the dataset's tables
        (scored with default side features), history items without a row (once per request: a request's
        history is read once), and ``folded``: identity-table IDs beyond the table's rows folded in
        (``id % rows``; a history's once per request), as ``ImpressionReader.batch_of(lenient=True)`` counts them."""
        return {**self.reader.unknown_counts, "folded": sum(self.reader.out_of_range_counts.values())}

    def rows(self, request: RankRequest, shared: bool = False) -> pa.Table:
        """The request as ``N`` impression rows (label 0), in candidate order.

        Args:
            request (RankRequest): the request.
            shared (bool): the history on the first row only, the others' empty (the feature step's form:
                the model reads a request's history once, from its first row, so the other ``N - 1`` copies
                would be joined and mapped for nothing; ``_batch`` restores the history-sourced dense features).

        Raises:
            RankRequestError: a malformed request (:func:`check_request`).
        """
        sparse = {f.name for f in self.spec.sparse}
        check_request(request, self.context, self.max_candidates, sparse)
        spec = self.spec
        n = len(request.candidates)
        columns: dict[str, pa.Array] = {
            spec.day: pa.array(np.zeros(n, dtype=np.int64)),
            spec.user_key: pa.array(np.full(n, int(request.user), dtype=np.int64)),
            spec.item_key: pa.array(np.asarray(request.candidates, dtype=np.int64)),
            spec.label: pa.array(np.zeros(n, dtype=np.float32)),
        }
        if spec.history is not None:
            history = np.asarray(request.history, dtype=np.int64)
            if shared:
                offsets = np.full(n + 1, len(history), dtype=np.int32)
                offsets[0] = 0
                values = history
            else:
                offsets = np.arange(n + 1, dtype=np.int32) * len(history)
                values = np.tile(history, n)
            columns[spec.history] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        for name in self.context:
            values = request.context.get(name)
            if values is None:
                values = np.full(n, CONTEXT_DEFAULT)
            columns[name] = pa.array(context_ids(name, values) if name in sparse else np.asarray(values, dtype=np.float64))
        return pa.table(columns)

    def score(self, request: RankRequest) -> np.ndarray:
        """Click probabilities of the request's candidates, float32 of shape (N,), in candidate order.

        Unknown users and items are scored, never refused: with default side features and, in
        identity tables, folded IDs (managed and hash tables map them as in training); counted in
        :attr:`unknown_counts`.

        Raises:
            RankRequestError: a malformed request.
            ValueError: a negative ID in an identity table (the reader's error, naming the request).
        """
        return self.score_many([request])[0]

    def _batch(self, requests: list[RankRequest]) -> tuple[torch.Tensor, KeyedJaggedTensor, list[int]]:
        """The requests' rows through the reader's joins: dense (B, F), the batch KJT (the history on each
        request's first row only, ``rows(shared=True)``), sizes."""
        tables = [self.rows(r, shared=True) for r in requests]
        self._maybe_refresh()
        where = f"request of user {requests[0].user}" if len(requests) == 1 else f"{len(requests)} requests"
        batch = self.reader.batch_of(pa.concat_tables(tables), where=where, lenient=True)
        sizes = [t.num_rows for t in tables]
        dense = batch.dense_features
        if self._history_dense:  # each row the statistics of its request's history, as the full rows have them
            first = first_rows(sizes)
            dense[:, self._history_dense] = dense[first][:, self._history_dense]
        return dense, batch.sparse_features, sizes

    @torch.inference_mode()
    def score_many(self, requests: list[RankRequest]) -> list[np.ndarray]:
        """Several requests in one forward pass (a dynamic batch); each request's (N_i,) probabilities.

        Raises:
            RankRequestError: one of the requests is malformed (nothing is scored).
            ValueError: a negative ID in an identity table (nothing is scored).
        """
        dense, features, sizes = self._batch(requests)
        if self.scripted is not None:  # the feature step reads each request's first row's history
            from serving.ranker_script import artifact_inputs

            probs = self.scripted(*artifact_inputs(self.model, self.spec, dense, features, first_rows(sizes))).numpy()
        else:  # the KJT already holds each history on its request's first row only (rows(shared=True))
            history_of = first_rows(sizes) if self.spec.history_keys() else None
            probs = torch.sigmoid(self.model(dense, features, history_of=history_of)).to(torch.float32).numpy()
        return np.split(probs, np.cumsum(sizes)[:-1])

    @torch.inference_mode()
    def inputs(self, requests: list[RankRequest]) -> tuple[torch.Tensor, ...]:
        """The TorchScript artefact's inputs for the requests (``serving.ranker_script``'s feature step).

        The same joins, ID mapping and fresh vectors as :meth:`score_many`; the
        artefact (``serving.ranker_script.script_ranker``) on these tensors gives
        the same probabilities, concatenated in request order.

        Raises:
            RankRequestError: one of the requests is malformed.
            ValueError: a negative ID in an identity table.
        """
        from serving.ranker_script import artifact_inputs  # the artefact's module imports this one's model only

        dense, features, sizes = self._batch(requests)
        return artifact_inputs(self.model, self.spec, dense, features, first_rows(sizes))
