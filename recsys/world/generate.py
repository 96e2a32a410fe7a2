"""``mmctr world``: generates a synthetic Taobao-like world in the public format.

Deterministic for a seed: every random draw comes from a ``SeedSequence``
child named by what it draws (a day, an item chunk), so the output does not
depend on the number of worker processes.

Memory stays bounded: per-item and per-user traits are small arrays, while
images, titles and impressions are produced and written one chunk or one day
at a time. The world is written into ``OUT.partial`` and renamed to ``OUT``
when complete, so a half-written world never looks like a dataset.

The format (:class:`~recsys.world.config.WorldFormat`) changes what is
written, never what is simulated: raw IDs rename users, items, shops and
brands (``recsys.world.ids``), ``content`` leaves the title or the image out
(titles and queries stay the same: rendering's random draws are still made),
``searches=False`` leaves ``searches/`` out.

Example::

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> m = generate_world(out, preset="tiny", seed=0)
    >>> m.counts["items"], m.last_day - m.first_day + 1
    (1500, 5)
    >>> sorted(p.name for p in out.iterdir())
    ['impressions', 'items', 'manifest.json', 'searches', 'truth', 'users']
    >>> fmt = WorldFormat(raw_ids=True, content="text", searches=False)
    >>> m = generate_world(out, "tiny", 0, fmt=fmt)
    >>> sorted(p.name for p in out.iterdir()), m.features.content, m.image_size
    (['impressions', 'items', 'manifest.json', 'truth', 'users'], ('title',), None)
    >>> m.features.table("item_id").ids, m.features.table("item_id").rows, sorted(m.id_ranges)
    ('managed', 1501, ['age_bucket', 'category_id', 'city_id', 'gender', 'price_bucket'])
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.data.schema import FORMAT_VERSION, IMPRESSIONS, ITEMS, SEARCHES, TRUTH_DIR, USERS, Manifest
from recsys.data.spec import world_spec
from recsys.world.behaviour import ClickModel, HistoryState
from recsys.world.catalog import SEMANTIC_DIM, CategoryTree
from recsys.world.config import PRESETS, RAW_ID_KINDS, WorldConfig, WorldFormat
from recsys.world.ids import IdMap
from recsys.world.population import N_AGE_BUCKETS, N_GENDERS, N_PRICE_BUCKETS, Items, Users
from recsys.world.render import draw_jitter, encode_png, render_images
from recsys.world.sampler import ItemSampler
from recsys.world.titles import make_queries, make_titles

INTEREST_SHARE = 0.6  # impressions drawn from the user's interest leaves
SIM_CHUNK = 16_384  # impressions per click-model chunk
SEARCH_CHUNK = 5_000  # sessions per searches/ file
SHOWN_PER_SEARCH = 10  # items on a search result page, the purchased one included
RENDER_BATCH = 256  # images rendered at once: temporaries stay small (larger ones cost page faults)
# The column of each content kind (spec.CONTENT) in items/ and in searches/.
ITEM_CONTENT = {"title": "title", "image": "image"}
QUERY_CONTENT = {"title": "query_text", "image": "query_image"}


def _rng(root: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """A generator for one named part of the world (independent of run order)."""
    return np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=tuple(key)))


# Stream keys of `_rng`: one per part of the world (_RAW_IDS, kind: the raw IDs of RAW_ID_KINDS' kind-th).
_TREE, _ITEMS, _USERS, _PREWARM, _DAY, _ITEM_CONTENT, _SEARCH, _QUERY_CONTENT, _RAW_IDS = range(9)


def _write(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int64)))


def _pngs(rng: np.random.Generator, sem: dict[str, np.ndarray], size: int, render: bool = True) -> list[bytes]:
    """Renders and PNG-encodes in batches of RENDER_BATCH, in row order.

    With ``render=False`` only the random draws are made (``rng`` ends where
    rendering would leave it) and nothing is returned.
    """
    n = len(sem["leaf"])
    out: list[bytes] = []
    for a in range(0, n, RENDER_BATCH):
        if not render:
            draw_jitter(rng, min(RENDER_BATCH, n - a), size)
            continue
        part = {k: v[a : a + RENDER_BATCH] for k, v in sem.items()}
        out.extend(encode_png(im) for im in render_images(rng, part, size))
    return out


def _without(schema: pa.Schema, names: set[str]) -> pa.Schema:
    """``schema`` less the fields ``names`` (the content a world leaves out)."""
    return pa.schema([f for f in schema if f.name not in names], metadata=schema.metadata)


def write_item_chunk(
    path: Path, entropy: int, chunk: int, sem: dict[str, np.ndarray], cols: dict[str, np.ndarray],
    brand: np.ndarray, size: int, content: tuple[str, ...],
) -> int:  # fmt: skip
    """Renders the images and titles of one chunk of items and writes one file.

    Args:
        sem (dict[str, np.ndarray]): the items' semantics (``Items.semantics``), each (N,).
        cols (dict[str, np.ndarray]): the ID and metadata columns of ``ITEMS`` as written, each (N,).
        brand (np.ndarray): dense brand IDs (N,): the brand word of the title.
        content (tuple[str, ...]): ``title``, ``image`` or both: the columns written.
    """
    rng = _rng(np.random.SeedSequence(entropy), _ITEM_CONTENT, chunk)
    images = _pngs(rng, sem, size, render="image" in content)  # drawn before the titles: same titles either way
    values = {"title": make_titles(rng, sem, brand) if "title" in content else None, "image": images}
    cols = {**cols, **{ITEM_CONTENT[c]: values[c] for c in content}}
    schema = _without(ITEMS, {ITEM_CONTENT[c] for c in ITEM_CONTENT if c not in content})
    table = pa.table({k: cols[k] for k in schema.names}, schema=schema)
    _write(table, path)
    return len(table)


def write_search_chunk(
    path: Path, entropy: int, chunk: int, columns: dict[str, object], sem: dict[str, np.ndarray], size: int,
    content: tuple[str, ...],
) -> int:  # fmt: skip
    """Renders query images and texts (those of ``content``) for one chunk of sessions and writes one file."""
    rng = _rng(np.random.SeedSequence(entropy), _QUERY_CONTENT, chunk)
    images = _pngs(rng, sem, size, render="image" in content)  # a new rendering: other jitter, noise, shade
    values = {"title": make_queries(rng, sem) if "title" in content else None, "image": images}
    cols = {**columns, **{QUERY_CONTENT[c]: values[c] for c in content}}
    schema = _without(SEARCHES, {QUERY_CONTENT[c] for c in QUERY_CONTENT if c not in content})
    table = pa.table({k: cols[k] for k in schema.names}, schema=schema)
    _write(table, path)
    return len(table)


def _affinity(semantic: np.ndarray, cands: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine of each candidate's semantics with its row's target: (n, k), in chunks."""
    out = np.empty(cands.shape, dtype=np.float32)
    for a in range(0, len(cands), SIM_CHUNK):
        out[a : a + SIM_CHUNK] = np.einsum("nks,ns->nk", semantic[cands[a : a + SIM_CHUNK]], target[a : a + SIM_CHUNK])
    return out


class _Inline:
    """A stand-in for a process pool that runs each task on submit."""

    def submit(self, fn, *args):  # noqa: ANN001, ANN201 - mirrors Executor.submit
        f: cf.Future = cf.Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


class WorldWriter:
    """Generates one world into a directory (see the module docstring).

    Args:
        cfg (WorldConfig): sizes.
        seed (int): root seed.
        out (Path): the directory written.
        progress (bool): show a tqdm bar.
        fmt (WorldFormat): IDs, content and tables written.
    """

    def __init__(self, cfg: WorldConfig, seed: int, out: Path, progress: bool = False, fmt: WorldFormat = WorldFormat()) -> None:
        self.cfg, self.seed, self.out, self.fmt = cfg, seed, Path(out), fmt
        self.content = fmt.columns()
        self.root = np.random.SeedSequence(seed)
        self.progress = progress
        self.ids = IdMap()
        if fmt.raw_ids:  # streams of their own: the simulation's draws are untouched
            rngs = {kind: _rng(self.root, _RAW_IDS, k) for k, kind in enumerate(RAW_ID_KINDS)}
            self.ids = IdMap.draw(rngs, {kind: getattr(cfg, n) for kind, n in RAW_ID_KINDS.items()})
        self.click = ClickModel()
        self.tree = CategoryTree.build(_rng(self.root, _TREE))
        self.items = Items.sample(_rng(self.root, _ITEMS), cfg, self.tree)
        self.users = Users.sample(_rng(self.root, _USERS), cfg, self.tree)
        self.sampler = ItemSampler(self.items.leaf, self.items.created_day, self.items.popularity, self.tree.n_leaves)
        self.b0: float | None = None
        self.counts = {"items": cfg.n_items, "users": cfg.n_users, "impressions": 0}
        if fmt.searches:
            self.counts["searches"] = 0

    # -- tables -------------------------------------------------------------
    def _submit_items(self, pool: object, tmp: Path) -> list[cf.Future]:
        cfg, it, written = self.cfg, self.items, self.ids
        futures = []
        for chunk, start in enumerate(range(0, cfg.n_items, cfg.items_per_file)):
            ids = np.arange(start, min(start + cfg.items_per_file, cfg.n_items))
            cols = {
                "item_id": written("item_id", ids),
                "category_id": it.leaf[ids].astype(np.int32),
                "shop_id": written("shop_id", it.shop[ids]),
                "brand_id": written("brand_id", it.brand[ids]),
                "price_bucket": it.price_bucket[ids].astype(np.int32),
                "created_day": it.created_day[ids].astype(np.int32),
            }
            path = tmp / "items" / f"part-{chunk:05d}.parquet"
            args = (path, self.root.entropy, chunk, it.semantics(ids), cols, it.brand[ids], cfg.image_size, self.content)
            futures.append(pool.submit(write_item_chunk, *args))
        return futures

    def _write_users(self, tmp: Path) -> None:
        us = self.users
        table = pa.table(
            {
                "user_id": self.ids("user_id", np.arange(us.n)),
                "age_bucket": us.age_bucket.astype(np.int32),
                "gender": us.gender.astype(np.int32),
                "city_id": us.city.astype(np.int32),
            },
            schema=USERS,
        )
        _write(table, tmp / "users" / "part-00000.parquet")

    def _prewarm(self) -> HistoryState:
        """Histories before the first day: clicks on interest items, best of 3 by taste."""
        cfg, us = self.cfg, self.users
        rng = _rng(self.root, _PREWARM)
        state = HistoryState(us.n, cfg.max_history_len)
        pct = np.argsort(np.argsort(us.activity)) / max(us.n - 1, 1)  # activity percentile
        lens = np.round(cfg.max_history_len * (0.15 + 0.85 * pct) * rng.uniform(0.3, 1.0, us.n)).astype(np.int64)
        lens[rng.random(us.n) < 0.05] = 0  # users with no clicks yet
        users = np.repeat(np.arange(us.n), lens)
        chosen = np.empty(len(users), dtype=np.int64)
        for a in range(0, len(users), SIM_CHUNK * 8):  # bounded temporaries
            u = users[a : a + SIM_CHUNK * 8]
            leaves = us.sample_leaves(rng, u)
            cands = np.stack([self.sampler.popular_in_leaf(rng, leaves, cfg.first_day - 1) for _ in range(3)], axis=1)
            score = _affinity(self.items.semantic, cands, us.taste[u]) + rng.gumbel(0.0, 0.3, cands.shape)
            chosen[a : a + len(u)] = cands[np.arange(len(u)), score.argmax(axis=1)]
        state.append(users, chosen)
        return state

    def _simulate_day(self, day: int, n: int, state: HistoryState) -> tuple[pa.Table, pa.Table]:
        """Impressions of one day and their hidden truth; updates ``state`` with the clicks."""
        cfg, it, us = self.cfg, self.items, self.users
        rng = _rng(self.root, _DAY, day)
        users = us.sample_users(rng, n)
        source = rng.random(n)
        leaves = us.sample_leaves(rng, users)
        item = self.sampler.popular(rng, n, day)
        interest = source < cfg.new_item_share + INTEREST_SHARE
        item[interest] = self.sampler.popular_in_leaf(rng, leaves[interest], day)
        new = source < cfg.new_item_share
        item[new] = self.sampler.new_in_leaf(rng, leaves[new], day)
        position = rng.integers(0, 10, n)

        sem_logit = np.empty(n, dtype=np.float32)
        for a in range(0, n, SIM_CHUNK):
            b = min(a + SIM_CHUNK, n)
            hist = state.items[users[a:b]]  # (B, L), -1 padded
            mask = hist >= 0
            hist_sem = it.semantic[np.maximum(hist, 0)].astype(np.float32)  # (B, L, S)
            target = it.semantic[item[a:b]].astype(np.float32)
            sem_logit[a:b] = self.click.semantic_logit(target, hist_sem, mask, us.taste[users[a:b]])
        id_logit = it.effect[item] + us.effect[users] + self.click.w_pos * position
        logit = sem_logit + id_logit + rng.normal(0.0, self.click.noise, n).astype(np.float32)
        if self.b0 is None:
            self.b0 = self.click.calibrate(logit)
        p = 1.0 / (1.0 + np.exp(-(self.b0 + logit)))
        label = (rng.random(n) < p).astype(np.float32)

        offsets, values = state.rows(users)  # history before this day's clicks
        table = pa.table(
            {
                "day": np.full(n, day, dtype=np.int32),
                "user_id": self.ids("user_id", users),
                "item_id": self.ids("item_id", item),
                "history_item_ids": _list_array(offsets, self.ids("item_id", values)),
                "position": position.astype(np.int32),
                "label": label,
            },
            schema=IMPRESSIONS,
        )
        truth = pa.table(
            {
                "p_click": p.astype(np.float32),
                "semantic_logit": sem_logit,
                "id_logit": id_logit.astype(np.float32),
            }
        )
        clicked = label > 0
        state.append(users[clicked], item[clicked])
        return table, truth

    def _write_impressions(self, tmp: Path, state: HistoryState, bar: tqdm) -> None:
        cfg = self.cfg
        per_day = np.full(cfg.n_days, cfg.n_impressions // cfg.n_days)
        per_day[0] += cfg.n_impressions - per_day.sum()
        for k, day in enumerate(range(cfg.first_day, cfg.last_day + 1)):
            table, truth = self._simulate_day(day, int(per_day[k]), state)
            for part, a in enumerate(range(0, len(table), cfg.rows_per_impression_file)):
                name = f"day-{day:04d}-part-{part:05d}.parquet"
                rows = slice(a, a + cfg.rows_per_impression_file)
                _write(table[rows], tmp / "impressions" / name, cfg.row_group_size)
                _write(truth[rows], tmp / TRUTH_DIR / "impressions" / name, cfg.row_group_size)
            self.counts["impressions"] += len(table)
            bar.update(1)

    def _search_sessions(self) -> dict[str, np.ndarray | list]:
        """Who searched what: purchased item, shown items, clicked-not-bought."""
        cfg, it, us = self.cfg, self.items, self.users
        rng = _rng(self.root, _SEARCH)
        n = cfg.n_searches
        days = np.sort(rng.integers(cfg.first_day, cfg.last_day + 1, n)).astype(np.int32)
        users = us.sample_users(rng, n)
        leaves = us.sample_leaves(rng, users)
        n_cand, n_more = 8, SHOWN_PER_SEARCH + 4
        cands = np.empty((n, n_cand), dtype=np.int64)
        more = np.empty((n, n_more), dtype=np.int64)
        for day in np.unique(days):
            rows = np.flatnonzero(days == day)
            rep = np.repeat(leaves[rows], n_cand)
            cands[rows] = self.sampler.popular_in_leaf(rng, rep, int(day)).reshape(-1, n_cand)
            rep = np.repeat(leaves[rows], n_more)
            more[rows] = self.sampler.popular_in_leaf(rng, rep, int(day)).reshape(-1, n_more)
        # The user buys the candidate that best fits their taste.
        score = _affinity(it.semantic, cands, us.taste[users])
        purchased = cands[np.arange(n), (score + rng.gumbel(0.0, 0.2, score.shape)).argmax(axis=1)]
        # Hard negatives: the shown items most like the purchase, clicked but not bought.
        sim = _affinity(it.semantic, more, it.semantic[purchased])
        n_hard = rng.choice(4, size=n, p=[0.15, 0.4, 0.3, 0.15])
        shown, clicked = [], []
        for i in range(n):
            others = list(dict.fromkeys(int(x) for x in more[i] if x != purchased[i]))[: SHOWN_PER_SEARCH - 1]
            by_sim = sorted(others, key=lambda x, s=dict(zip(more[i].tolist(), sim[i].tolist())): -s[x])
            clicked.append(by_sim[: n_hard[i]])
            page = others + [int(purchased[i])]
            shown.append([page[j] for j in rng.permutation(len(page))])
        return {
            "session_id": np.arange(n, dtype=np.int64),
            "day": days,
            "user_id": users.astype(np.int64),
            "shown_item_ids": shown,
            "clicked_item_ids": clicked,
            "purchased_item_id": purchased.astype(np.int64),
        }

    def _submit_searches(self, pool: object, tmp: Path) -> list[cf.Future]:
        s = self._search_sessions()
        written = self.ids
        futures = []
        for chunk, a in enumerate(range(0, self.cfg.n_searches, SEARCH_CHUNK)):
            rows = slice(a, a + SEARCH_CHUNK)
            cols = {k: v[rows] for k, v in s.items()}
            sem = self.items.semantics(cols["purchased_item_id"])
            cols["user_id"] = written("user_id", cols["user_id"])
            cols["purchased_item_id"] = written("item_id", cols["purchased_item_id"])
            for name in ("shown_item_ids", "clicked_item_ids"):
                cols[name] = written.lists("item_id", cols[name])
            path = tmp / "searches" / f"part-{chunk:05d}.parquet"
            args = (path, self.root.entropy, chunk, cols, sem, self.cfg.image_size, self.content)
            futures.append(pool.submit(write_search_chunk, *args))
        self.counts["searches"] = self.cfg.n_searches
        return futures

    def _write_truth(self, tmp: Path) -> None:
        it, us = self.items, self.users
        s = SEMANTIC_DIM
        sem = pa.FixedSizeListArray.from_arrays(pa.array(it.semantic.astype(np.float32).ravel()), s)
        cols = {"item_id": self.ids("item_id", np.arange(it.n)), "semantic": sem}
        cols.update({k: v.astype(np.int32) for k, v in it.attributes.items()})
        cols.update({"popularity": it.popularity, "effect": it.effect})
        _write(pa.table(cols), tmp / TRUTH_DIR / "items.parquet")
        taste = pa.FixedSizeListArray.from_arrays(pa.array(us.taste.ravel()), s)
        _write(pa.table({"user_id": self.ids("user_id", np.arange(us.n)), "taste": taste, "effect": us.effect}), tmp / TRUTH_DIR / "users.parquet")
        click = {**dataclasses.asdict(self.click), "b0": self.b0}
        (tmp / TRUTH_DIR / "click_model.json").write_text(json.dumps(click, indent=2) + "\n")

    def manifest(self) -> Manifest:
        """The manifest: raw-ID kinds are managed tables (``WorldFormat.capacity``), the rest identity ones."""
        cfg, fmt = self.cfg, self.fmt
        sizes = {
            "item_id": cfg.n_items,
            "user_id": cfg.n_users,
            "shop_id": cfg.n_shops,
            "brand_id": cfg.n_brands,
            "category_id": self.tree.n_leaves,
            "price_bucket": N_PRICE_BUCKETS,
            "age_bucket": N_AGE_BUCKETS,
            "gender": N_GENDERS,
            "city_id": cfg.n_cities,
        }
        managed = fmt.capacity(cfg) if fmt.raw_ids else None
        return Manifest(
            format_version=FORMAT_VERSION,
            preset=cfg.name,
            seed=self.seed,
            counts=dict(self.counts),
            id_ranges={k: v for k, v in sizes.items() if managed is None or k not in managed},
            first_day=cfg.first_day,
            last_day=cfg.last_day,
            test_day=cfg.last_day,
            max_history_len=cfg.max_history_len,
            features=world_spec(self.content, fmt.raw_ids, managed),
            image_size=cfg.image_size if "image" in self.content else None,
            extra={"generator": "mmctr world"},
        )

    def run(self) -> Manifest:
        cfg = self.cfg
        tmp = self.out.with_name(self.out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        n_chunks = -(-cfg.n_items // cfg.items_per_file) + (-(-cfg.n_searches // SEARCH_CHUNK) if self.fmt.searches else 0)
        bar = tqdm(total=n_chunks + cfg.n_days + 1, desc=f"world {cfg.name}", disable=not self.progress, unit="part")
        if cfg.workers > 1:
            pool = cf.ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = _Inline()
        try:
            futures = self._submit_items(pool, tmp)
            if self.fmt.searches:
                futures += self._submit_searches(pool, tmp)
            self._write_users(tmp)
            state = self._prewarm()
            bar.update(1)
            self._write_impressions(tmp, state, bar)
            self._write_truth(tmp)
            for f in cf.as_completed(futures):
                f.result()
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        manifest = self.manifest()
        manifest.write(tmp)
        if self.out.exists():
            shutil.rmtree(self.out)
        tmp.rename(self.out)
        return manifest


def generate_world(
    out: Path, preset: str | WorldConfig = "tiny", seed: int = 0, *, progress: bool = False, fmt: WorldFormat = WorldFormat()
) -> Manifest:
    """Generates a world into ``out`` (replacing it) and returns its manifest.

    Args:
        out (Path): the dataset directory (replaced).
        preset (str | WorldConfig): a ``PRESETS`` name or a config.
        seed (int): the root seed: same seed, same simulated world whatever ``fmt``.
        progress (bool): show a tqdm bar.
        fmt (WorldFormat): how it is written: raw IDs, content, searches.

    Raises:
        ValueError: an unknown preset or content.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    return WorldWriter(preset, seed, Path(out), progress, fmt).run()
