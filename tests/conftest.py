"""Shared fixtures: one tiny world per test session, and two finished runs on it (evaluation, serving)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import TRUTH_DIR, Manifest, table_files
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.models.config import ModelConfig
from recsys.train.config import TrainConfig
from recsys.train.trainer import TrainJob, run_train
from recsys.world.generate import generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` world (seed 0). Read-only: copy it before changing it."""
    out = tmp_path_factory.mktemp("worlds") / "tiny"
    generate_world(out, preset="tiny", seed=0)
    return out


LAYOUTS = ("groups_3000", "one_group", "empty_files", "odd_rows")


@pytest.fixture
def relayout(tiny_world: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Copies of the tiny world whose impressions are rewritten in another Parquet layout (``LAYOUTS``):

    * ``groups_3000``: row groups of 3,000 rows per day file (3,000 and ~1,000: uneven over ranks);
    * ``one_group``: one file, one row group (fewer groups than ranks);
    * ``empty_files``: groups of 777 rows, plus an empty file and a file with zero row groups;
    * ``odd_rows``: the first file's last row dropped, so 2 ranks get shares one row apart.
    """

    def make(layout: str) -> Path:
        dst = tmp_path / layout
        shutil.copytree(tiny_world, dst)
        files = table_files(dst, "impressions")
        tables = [pq.read_table(f) for f in files]
        if layout == "groups_3000":
            for f, t in zip(files, tables):
                pq.write_table(t, f, row_group_size=3000)
        elif layout == "one_group":
            for f in files:
                f.unlink()
            t = pa.concat_tables(tables)
            pq.write_table(t, files[0], row_group_size=t.num_rows)
        elif layout == "empty_files":
            for f, t in zip(files, tables):
                pq.write_table(t, f, row_group_size=777)
            pq.write_table(tables[0].schema.empty_table(), dst / "impressions/aaa-empty.parquet")
            pq.ParquetWriter(dst / "impressions/zzz-no-groups.parquet", tables[0].schema).close()
            assert pq.read_metadata(dst / "impressions/zzz-no-groups.parquet").num_row_groups == 0
        elif layout == "odd_rows":
            pq.write_table(tables[0].slice(0, tables[0].num_rows - 1), files[0])
        else:
            raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
        return dst

    return make


@pytest.fixture(scope="session")
def tiny_manifest(tiny_world: Path) -> Manifest:
    return Manifest.read(tiny_world)


@pytest.fixture(scope="session")
def tiny_encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``encoder.pt`` of a small random ItemEncoder for the tiny world's 64 px images (D = 16, C = 16)."""
    import torch

    from pretrain.config import TowerConfig
    from pretrain.towers import ItemEncoder, build_towers
    from pretrain.encoder import save_encoder

    tower = TowerConfig(vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2,
                        text_layers=1, embed_dim=16, context_length=16)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    save_encoder(path, ItemEncoder(build_towers(tower)).eval(), tower)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmctr export`` of ``tiny_encoder_file``: the folder holding embedded/ and production/."""
    from serving.export import export_repository

    out = tmp_path_factory.mktemp("triton") / "export"
    export_repository(tiny_encoder_file, out)
    return out


def derive_world(src: Path, dst: Path, content: tuple[str, ...], searches: bool = True) -> Path:
    """A copy of ``src`` whose items and searches hold only the columns of ``content`` (``title``, ``image``).

    Its manifest declares ``features.content = content`` (and ``image_size``
    None without images); with ``searches=False`` it has no ``searches/``.
    The tables are rewritten with pyarrow, the manifest with ``Manifest.read``
    + ``dataclasses.replace`` + ``write``, as a real log of that shape would be.
    """
    import dataclasses

    from recsys.data.content import CONTENT_COLUMNS

    shutil.copytree(src, dst)
    for table in ("items", "searches"):
        drop = [col for kind, col in CONTENT_COLUMNS[table].items() if kind not in content]
        for f in table_files(dst, table):
            pq.write_table(pq.read_table(f).drop_columns(drop), f)
    if not searches:
        shutil.rmtree(dst / "searches")
    m = Manifest.read(dst)
    features = dataclasses.replace(m.features, content=tuple(content))
    m = dataclasses.replace(m, features=features, image_size=m.image_size if "image" in content else None)
    m.write(dst)
    return dst


@pytest.fixture(scope="session")
def content_world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(content, searches=True)``: the tiny world reduced by :func:`derive_world`, built once per shape. Read-only."""
    root, made = tmp_path_factory.mktemp("content_worlds"), {}

    def make(content: tuple[str, ...], searches: bool = True) -> Path:
        key = (tuple(content), searches)
        if key not in made:
            name = "-".join(content) + ("" if searches else "-no-searches")
            made[key] = derive_world(tiny_world, root / name, tuple(content), searches)
        return made[key]

    return make


# -- a ranking log unlike the world -------------------------------------------------------------

UNLIKE_TEST_DAY = 13  # declared: not the last day (14), so a retrain on it has a day to score


@pytest.fixture(scope="session")
def unlike_log(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world rewritten as a log that shares nothing with the world's layout but its clicks.

    * other names: ``uid``, ``iid``, ``clk``, ``ts_day``, history ``clicked_iids`` carrying each
      item's category ``cat`` (DIN's item + category), a context feature ``slot`` from the
      impressions, ``seller`` (hashed) from the items, ``age`` from the users;
    * raw 64-bit IDs with gaps (users and items, managed tables; sellers, a hash table);
    * two dense features: ``price`` (items, log1p) and ``hist_len`` (history length, log1p then
      standardised with the training days' statistics);
    * titles only (no image column), no ``created_day``, no search log, a declared test day;
    * other file layouts: items in two files, impressions in one file of row groups of 1,000.
    """
    import dataclasses

    import numpy as np

    from recsys.data.spec import Dense, FeatureSpec, Sparse, Table

    src, dst = tiny_world, tmp_path_factory.mktemp("logs") / "unlike"
    for name in ("users", "items", "impressions"):
        (dst / name).mkdir(parents=True)
    rng = np.random.default_rng(17)
    m = Manifest.read(src)

    def raw_map(n: int) -> np.ndarray:  # dense ID -> distinct random int64 in [2**40, 2**62), gaps everywhere
        ids = np.unique(rng.integers(2**40, 2**62, size=2 * n, dtype=np.int64))
        return rng.permutation(ids)[:n]

    users, items = raw_map(m.id_ranges["user_id"]), raw_map(m.id_ranges["item_id"])
    u = pa.concat_tables([pq.read_table(f) for f in table_files(src, "users")])
    pq.write_table(pa.table({"uid": users[u["user_id"].to_numpy()], "age": u["age_bucket"]}), dst / "users/u.parquet")
    it = pa.concat_tables([pq.read_table(f) for f in table_files(src, "items")])
    price = 5.0 * 1.4 ** it["price_bucket"].to_numpy() * rng.uniform(0.9, 1.1, it.num_rows)
    shop = it["shop_id"].to_numpy() * 7919 + 3  # sparse, hashed into 64 rows
    table = pa.table({"iid": items[it["item_id"].to_numpy()], "title": it["title"], "cat": it["category_id"],
                      "seller": shop, "price": price})
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), dst / "items/a.parquet")
    pq.write_table(table.slice(half), dst / "items/b.parquet")
    im = pa.concat_tables([pq.read_table(f) for f in table_files(src, "impressions")])
    hist = im["history_item_ids"].combine_chunks()
    raw_hist = pa.ListArray.from_arrays(hist.offsets, pa.array(items[hist.values.to_numpy()], pa.int64()))
    out = pa.table({"ts_day": im["day"], "uid": users[im["user_id"].to_numpy()], "iid": items[im["item_id"].to_numpy()],
                    "clicked_iids": raw_hist, "slot": im["position"].cast(pa.int64()), "clk": im["label"].cast(pa.float64()),
                    "request_id": pa.array(np.arange(im.num_rows))})  # an extra column the spec ignores
    pq.write_table(out, dst / "impressions/log.parquet", row_group_size=1000)
    spec = FeatureSpec(
        user_key="uid", item_key="iid", label="clk", day="ts_day", history="clicked_iids", history_side=("cat",),
        sparse=(Sparse("uid", "impressions", "user"), Sparse("iid", "impressions", "item"), Sparse("slot", "impressions"),
                Sparse("age", "users"), Sparse("cat", "items"), Sparse("seller", "items")),
        dense=(Dense("price", "items", "log1p"), Dense("hist_len", "history", "log1p_standardize")),
        tables=(Table("user", ids="managed", rows=len(users) + 1), Table("item", ids="managed", rows=len(items) + 1),
                Table("slot", rows=int(im["position"].to_numpy().max()) + 1), Table("age", rows=m.id_ranges["age_bucket"]),
                Table("cat", rows=m.id_ranges["category_id"]), Table("seller", ids="hash", rows=64)),
        content=("title",),
    )
    Manifest(format_version=2, first_day=m.first_day, last_day=m.last_day, test_day=UNLIKE_TEST_DAY,
             max_history_len=m.max_history_len, features=spec).write(dst)
    return dst


EVAL_BATCH = 256  # the eval runs' training batch


@pytest.fixture(scope="session")
def oracle_vectors(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's hidden semantic vectors as item vectors: SimTier then has a real signal to show."""
    t = pq.read_table(tiny_world / TRUTH_DIR / "items.parquet", columns=["item_id", "semantic"])
    v = np.stack(t.column("semantic").to_numpy(zero_copy_only=False)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("oracle") / VECTORS_FILE
    write_item_vectors(path, t.column("item_id").to_numpy(), v, dim=v.shape[1])
    return path


@pytest.fixture(scope="session")
def eval_runs(tiny_world: Path, oracle_vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished one-rank runs of `simtier` and `id_only` (listed in that order: the baseline is not first).

    SimTier as the paper has it (hard tiers of the fixed cosine), so test_score's numpy reference applies.
    """
    root = tmp_path_factory.mktemp("runs")
    runs = {"simtier": root / "simtier", "id_only": root / "id_only"}
    for variant, out in runs.items():
        model = ModelConfig(variant=variant, simtier_soft=False, simtier_learned_metric=False)
        run_train(TrainJob(world=tiny_world, out=out, model=model, quiet=True,
                           vectors=oracle_vectors if variant != "id_only" else None,
                           train=TrainConfig(batch_size=EVAL_BATCH)))
    return runs
