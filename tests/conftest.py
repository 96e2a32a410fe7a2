"""Shared fixtures: one tiny world per test session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest, table_files
from recsys.world.generate import generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` world (seed 0). Read-only: copy it before changing it."""
    out = tmp_path_factory.mktemp("worlds") / "tiny"
    generate_world(out, preset="tiny", seed=0)
    return out


LAYOUTS = ("groups_3000", "one_group", "empty_files")


@pytest.fixture
def relayout(tiny_world: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Copies of the tiny world whose impressions are rewritten in another Parquet layout (``LAYOUTS``):

    * ``groups_3000``: row groups of 3,000 rows per day file (3,000 and ~1,000: uneven over ranks);
    * ``one_group``: one file, one row group (fewer groups than ranks);
    * ``empty_files``: groups of 777 rows, plus an empty file and a file with zero row groups.
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
