"""``mmctr embed-text``: titles embedded by a local sentence-transformers model, written as a vectors run folder.

The model test builds a tiny randomly initialised BERT (a hand-written
vocabulary, 2 layers, 32 wide), wraps it as a SentenceTransformer with mean
pooling and normalisation, saves it and checks the written vectors against a
direct ``transformers`` mean-pool of the same titles. It needs
sentence-transformers (the ``real`` extra, ``make real-data``), else skips.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain import sentence
from pretrain.sentence import SentenceJob, item_titles, run_embed_text
from recsys.data.schema import Manifest
from recsys.data.spec import FeatureSpec, Sparse, Table
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, load_vectors

TITLES = {12: "Toy Story", 3: "Star Wars", 40: "The Empire Strikes Back, The", 7: "Heat", 9: "a story of wars"}
WORDS = ["toy", "story", "star", "wars", "the", "empire", "strikes", "back", "heat", "a", "of", ","]
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None


def _world(root: Path, titles: dict[int, str | None], content: tuple[str, ...] = ("title",)) -> Path:
    """A dataset of items only (what embed-text reads), its item key ``movie``, items in two files."""
    (root / "items").mkdir(parents=True)
    ids = list(titles)
    half = len(ids) // 2
    for name, part in (("a", ids[:half]), ("b", ids[half:])):
        pq.write_table(pa.table({"movie": pa.array(part, pa.int64()), "title": pa.array([titles[i] for i in part], pa.string())}),
                       root / "items" / f"{name}.parquet")  # fmt: skip
    spec = FeatureSpec(user_key="u", item_key="movie", history=None, content=content,
                       sparse=(Sparse("u", "impressions"), Sparse("movie", "impressions")), tables=(Table("u"), Table("movie")))  # fmt: skip
    Manifest(format_version=2, first_day=0, last_day=1, features=spec).write(root)
    return root


def test_titles_in_id_order(tmp_path: Path) -> None:
    ids, titles = item_titles(_world(tmp_path / "w", TITLES))
    assert ids.tolist() == sorted(TITLES) and titles == [TITLES[i] for i in sorted(TITLES)]


def test_blank_titles_and_no_titles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"items/b.parquet: column 'title', row 2 \(item 9\): title is blank"):
        item_titles(_world(tmp_path / "blank", {**TITLES, 9: "  "}))
    with pytest.raises(ValueError, match=r"items/b.parquet: column 'title', row 2 \(item 9\): title missing \(null\)"):
        item_titles(_world(tmp_path / "null", {**TITLES, 9: None}))
    with pytest.raises(ValueError, match="features.content is \\[\\], no 'title'"):
        item_titles(_world(tmp_path / "none", TITLES, content=()))


@pytest.mark.parametrize("title, fault", [
    (pa.array([1, 2, 3], pa.int64()), r"column 'title' has type int64, expected string \(features.content 'title'\)"),
    (pa.array([b"x", b"y", b"z"], pa.binary()), r"column 'title' has type binary, expected string \(features"),
    (None, r"missing column 'title' \(expected string: features.content 'title'\)"),
])
def test_a_title_column_of_another_type_is_refused_as_validate_does(tmp_path: Path, title: pa.Array | None,
                                                                   fault: str) -> None:
    """One file's title column an int, bytes or absent: refused before any model loads, in `mmctr validate`'s
    words (an int title was an AttributeError traceback, bytes the model's "Unsupported input type")."""
    world = _world(tmp_path / "w", TITLES)
    b = world / "items" / "b.parquet"
    table = pq.read_table(b).drop_columns(["title"])
    pq.write_table(table if title is None else table.append_column("title", title), b)
    with pytest.raises(ValueError, match=rf"^items/b.parquet: {fault}"):
        item_titles(world)


def test_no_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sentence.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="no sentence model: pass --model DIR"):
        run_embed_text(SentenceJob(world=_world(tmp_path / "w", TITLES), out=tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model folder"):
        run_embed_text(SentenceJob(world=tmp_path / "w", out=tmp_path / "run", model=tmp_path))
    assert not (tmp_path / "run").exists()


def _tiny_bert(root: Path) -> Path:
    """A random 2-layer BERT and its tokenizer saved as a sentence-transformers folder (mean pooling, normalised)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    hf = root / "hf"
    hf.mkdir(parents=True)
    (hf / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(hf / "vocab.txt")).save_pretrained(hf)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).eval().save_pretrained(hf)
    st = SentenceTransformer(modules=[Transformer(str(hf)), Pooling(32, pooling_mode="mean"), Normalize()], device="cpu")
    st.save(str(root / "st"))
    return root / "st"


@pytest.mark.skipif(not HAS_ST, reason="sentence-transformers not installed (the `real` extra: `make real-data`)")
def test_vectors_equal_a_direct_mean_pool(tmp_path: Path) -> None:
    import torch
    from transformers import BertModel, BertTokenizerFast

    model_dir = _tiny_bert(tmp_path / "model")
    world = _world(tmp_path / "w", TITLES)
    meta = run_embed_text(SentenceJob(world=world, out=tmp_path / "run", model=model_dir, batch_size=2))

    table = load_vectors(tmp_path / "run")  # the checks every reader applies: unit norm, one row per item, D
    assert table.item_ids.tolist() == sorted(TITLES) and table.vectors.shape == (len(TITLES), 32)
    assert table.vectors.dtype == np.float32 and (tmp_path / "run" / VECTORS_FILE).is_file()
    # The reference: the same weights through transformers, mean over real tokens, L2-normalised.
    tok = BertTokenizerFast.from_pretrained(tmp_path / "model" / "hf")
    bert = BertModel.from_pretrained(tmp_path / "model" / "hf").eval()
    enc = tok([TITLES[i] for i in sorted(TITLES)], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state  # (N, T, 32)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    np.testing.assert_allclose(table.vectors, expected, atol=1e-5)
    assert not np.allclose(table.vectors[0], table.vectors[1])  # not a constant embedding

    written = json.loads((tmp_path / "run" / VECTORS_MANIFEST).read_text())
    assert written == meta and meta["method"] == "sentence" and meta["dim"] == 32 and meta["items"] == len(TITLES)
    assert meta["model"] == "st" and meta["model_path"] == str(model_dir.resolve()) and len(meta["model_sha256"]) == 64
