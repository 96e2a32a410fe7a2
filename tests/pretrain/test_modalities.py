"""Pre-training with the content present: titles only, images only, no search log.

Tiny worlds derived from the tiny world (tests/conftest.py ``derive_world``):
their items and searches lose a content column, their manifest declares the rest.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.config import SclConfig, TowerConfig
from pretrain.data import ItemContent, load_item_content, load_search_pairs
from pretrain.encoder import ENCODER_FILE, MODALITY_FILES, build_encoder, load_encoder, save_encoder
from pretrain.evaluate import evaluate_runs, format_table
from pretrain.momentum import make_key_encoder
from pretrain.reduce import reduce_run
from pretrain.towers import ItemEncoder, build_tokenizer, build_towers, resolve_fusion
from pretrain.train import CHECKPOINT_DIR, LATEST, run_pretrain
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, read_item_vectors

TOWER = TowerConfig(
    vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2, text_layers=1, embed_dim=16
)
D, B, STEPS = TOWER.embed_dim, 16, 3
CFG = SclConfig(tower=TOWER, batch_size=B, queue_size=64, max_steps=STEPS, warmup_steps=1)
NO_SEARCHES_CLIP = "SCL needs the search log (searches/); this dataset has none: pre-train with --method clip"
NO_SEARCHES_RANDOM = (
    "SCL needs the search log (searches/); this dataset has none: pre-train with --method random "
    "(clip needs both titles and images)"
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def both(tiny_world: Path) -> ItemContent:
    return load_item_content(tiny_world)


@pytest.fixture(scope="module")
def text_scl(content_world: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SCL run on the titles-only world."""
    out = tmp_path_factory.mktemp("text") / "scl"
    run_pretrain(content_world(("title",)), out, "scl", CFG, checkpoint_every=STEPS, progress=False)
    return out


def _text_vectors(clip_state: dict[str, torch.Tensor], titles: list[str]) -> np.ndarray:
    """The text tower's unit vectors straight from open_clip: a two-tower CLIP given the run's text weights."""
    clip = build_towers(TOWER)
    text = {k[len("clip.") :]: v for k, v in clip_state.items() if k.startswith("clip.")}
    missing, unexpected = clip.load_state_dict(text, strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing)
    with torch.no_grad():
        return clip.eval().encode_text(build_tokenizer(TOWER)(titles), normalize=True).numpy()


# -- data -------------------------------------------------------------------------
def test_only_the_declared_content_is_read(content_world: Callable[..., Path], both: ItemContent) -> None:
    text, image = load_item_content(content_world(("title",))), load_item_content(content_world(("image",)))
    assert text.images is None and text.titles == both.titles and text.modalities == ("text",)
    assert image.titles is None and image.modalities == ("image",)
    np.testing.assert_array_equal(image.images, both.images)
    assert (text.item_ids == both.item_ids).all() and (image.item_ids == both.item_ids).all()

    full = load_search_pairs(content_world(("title", "image")), both)
    by_text = load_search_pairs(content_world(("title",)), text)
    by_image = load_search_pairs(content_world(("image",)), image)
    assert by_text.query_images is None and by_text.query_texts == full.query_texts
    assert by_image.query_texts is None
    np.testing.assert_array_equal(by_image.query_images, full.query_images)
    for pairs in (by_text, by_image):
        np.testing.assert_array_equal(pairs.purchased_rows, full.purchased_rows)
        np.testing.assert_array_equal(pairs.hard_rows, full.hard_rows)
    held = by_text.subset(by_text.days == by_text.days.max())
    assert held.query_images is None and len(held.query_texts) == len(held) > 0


def test_no_search_log_is_refused_in_one_line(content_world: Callable[..., Path], tmp_path: Path) -> None:
    no_log = content_world(("title", "image"), searches=False)
    with pytest.raises(ValueError) as info:
        load_search_pairs(no_log, load_item_content(no_log))
    assert str(info.value) == NO_SEARCHES_CLIP
    empty = tmp_path / "empty"  # a searches/ folder without files is no log either
    shutil.copytree(no_log, empty)
    (empty / "searches").mkdir()
    with pytest.raises(ValueError) as info:
        run_pretrain(empty, tmp_path / "run", "scl", CFG, progress=False)
    assert str(info.value) == NO_SEARCHES_CLIP and not (tmp_path / "run").exists()
    with pytest.raises(ValueError) as info:
        run_pretrain(content_world(("title",), searches=False), tmp_path / "run", "scl", CFG, progress=False)
    assert str(info.value) == NO_SEARCHES_RANDOM and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "searches", "message"),
    [(("title",), True, "only titles: pre-train with --method scl"),
     (("image",), False, "only images: pre-train with --method random (no search log either: no contrastive pair)")],
)  # fmt: skip
def test_clip_needs_both_modalities(
    content_world: Callable[..., Path], tmp_path: Path, content: tuple[str, ...], searches: bool, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        run_pretrain(content_world(content, searches), tmp_path / "run", "clip", CFG, progress=False)
    assert str(info.value) == f"CLIP aligns each item's image with its title; this dataset's items have {message}"


def test_clip_runs_without_a_search_log(content_world: Callable[..., Path], tmp_path: Path) -> None:
    world = content_world(("title", "image"), searches=False)
    stats = run_pretrain(world, tmp_path / "clip", "clip", dataclasses.replace(CFG, max_steps=1), progress=False)
    assert stats["steps"] == 1
    assert set(json.loads((tmp_path / "clip" / VECTORS_MANIFEST).read_text())["modalities"]) == {"image", "text"}


# -- titles only ------------------------------------------------------------------
def test_text_only_scl_exports_the_text_towers_unit_vectors(text_scl: Path, both: ItemContent) -> None:
    ids, vectors = read_item_vectors(text_scl / VECTORS_FILE)
    assert (ids == both.item_ids).all() and vectors.shape == (len(ids), D)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not (text_scl / MODALITY_FILES["image"]).exists()
    np.testing.assert_allclose(np.load(text_scl / MODALITY_FILES["text"]), vectors, atol=1e-6)
    meta = json.loads((text_scl / VECTORS_MANIFEST).read_text())
    assert meta["modalities"] == ["text"] and meta["dim"] == D and meta["steps"] == STEPS

    payload = torch.load(text_scl / ENCODER_FILE, weights_only=True)
    assert payload["modalities"] == ["text"] and payload["fusion"] == "text"
    assert not any(k.startswith("clip.visual.") for k in payload["state_dict"])
    initial = build_encoder(CFG, ("text",)).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in payload["state_dict"].items() if "transformer" in k)
    # The table is the text tower's output, recomputed through a plain open_clip CLIP.
    np.testing.assert_allclose(vectors, _text_vectors(payload["state_dict"], both.titles), atol=1e-5)
    encoder = load_encoder(text_scl)
    assert encoder.modalities == ("text",) and encoder.image_size is None
    with torch.no_grad():
        again = encoder(tokens=build_tokenizer(TOWER)(both.titles[:5])).numpy()
    np.testing.assert_allclose(again, vectors[:5], atol=1e-5)

    state = torch.load(text_scl / CHECKPOINT_DIR / LATEST, weights_only=True)
    assert {k.split(".")[0] for k in state["queues"]} == {"text"}
    assert int(state["queues"]["text.count"]) == STEPS * B


def test_text_only_random_without_searches_is_the_seeds_text_tower(
    content_world: Callable[..., Path], tmp_path: Path, both: ItemContent
) -> None:
    run_pretrain(content_world(("title",), searches=False), tmp_path / "random", "random", CFG, progress=False)
    _, vectors = read_item_vectors(tmp_path / "random" / VECTORS_FILE)
    two_towers = build_encoder(CFG)  # the same seed draws the same text tower with or without the image tower
    with torch.no_grad():
        want = two_towers.encode_text(build_tokenizer(TOWER)(both.titles)).numpy()
    np.testing.assert_allclose(vectors, want, atol=1e-5)


def test_text_only_eval_reduce_and_init_from(
    text_scl: Path, content_world: Callable[..., Path], tmp_path: Path, both: ItemContent
) -> None:
    results = evaluate_runs(content_world(("title",)), [text_scl])
    assert set(results["scl"]) == {"queries", "text_recall@1", "text_recall@10", "purity@10"}
    assert results["scl"]["queries"] > 0 and 0 <= results["scl"]["text_recall@1"] <= results["scl"]["text_recall@10"]
    no_log = evaluate_runs(content_world(("title",), searches=False), [text_scl])
    assert no_log["scl"] == {"queries": 0.0, "purity@10": results["scl"]["purity@10"]}
    assert "image_recall" not in format_table(results)

    meta = reduce_run(text_scl, 4, tmp_path / "reduced")
    reduced = load_encoder(tmp_path / "reduced")
    assert meta["modalities"] == ["text"] and reduced.modalities == ("text",) and reduced.output_dim() == 4
    _, table = read_item_vectors(tmp_path / "reduced" / VECTORS_FILE)
    with torch.no_grad():
        got = reduced(tokens=build_tokenizer(TOWER)(both.titles[:7])).numpy()
    np.testing.assert_allclose(got, table[:7], atol=1e-5)

    # A two-tower encoder seeds a titles-only run with its text tower.
    source = tmp_path / "both.pt"
    torch.manual_seed(7)
    two = ItemEncoder(build_towers(TOWER)).eval()
    save_encoder(source, two, TOWER)
    cfg = dataclasses.replace(CFG, init_from=str(source))
    run_pretrain(content_world(("title",), searches=False), tmp_path / "ft", "random", cfg, progress=False)
    _, vectors = read_item_vectors(tmp_path / "ft" / VECTORS_FILE)
    with torch.no_grad():
        np.testing.assert_allclose(vectors[:9], two.encode_text(build_tokenizer(TOWER)(both.titles[:9])).numpy(), atol=1e-5)
    run_pretrain(content_world(("title",), searches=False), tmp_path / "text-src", "random", CFG, progress=False)
    with pytest.raises(ValueError, match=r"an encoder of \['text'\] cannot start one of \['image'\]: it has no image tower"):
        run_pretrain(content_world(("image",)), tmp_path / "x", "random",
                     dataclasses.replace(CFG, init_from=str(tmp_path / "text-src")), progress=False)  # fmt: skip


# -- images only --------------------------------------------------------------------
def test_image_only_scl_exports_the_image_towers_unit_vectors(
    content_world: Callable[..., Path], tmp_path: Path, both: ItemContent
) -> None:
    out = tmp_path / "scl"
    run_pretrain(content_world(("image",)), out, "scl", dataclasses.replace(CFG, max_steps=2), progress=False)
    ids, vectors = read_item_vectors(out / VECTORS_FILE)
    assert (ids == both.item_ids).all() and vectors.shape == (len(ids), D)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    payload = torch.load(out / ENCODER_FILE, weights_only=True)
    assert payload["modalities"] == ["image"] and not any("token_embedding" in k for k in payload["state_dict"])
    encoder = load_encoder(out)
    assert encoder.context_length is None and not (out / MODALITY_FILES["text"]).exists()
    rows = np.array([0, 3, len(ids) - 1])
    x = torch.from_numpy(both.images[rows]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():  # plain reference: normalise the pixels, run the ViT, L2-normalise
        want = F.normalize(encoder.clip.visual((x - encoder.image_mean) / encoder.image_std), dim=-1).numpy()
    np.testing.assert_allclose(vectors[rows], want, atol=1e-5)
    assert set(evaluate_runs(content_world(("image",)), [out])["scl"]) == {"queries", "image_recall@1", "image_recall@10", "purity@10"}


# -- the encoder --------------------------------------------------------------------
def test_one_tower_encoders_take_their_input_only() -> None:
    torch.manual_seed(0)
    text = ItemEncoder(build_towers(TOWER, ("text",)), fusion="concat")
    assert text.fusion == "text" and text.output_dim() == D  # one vector: mean and concat are itself
    tokens, images = build_tokenizer(TOWER)(["red dress", "kettle"]), torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"this encoder has no image tower \(its modalities: \['text'\]\): leave out images"):
        text(images, tokens)
    with pytest.raises(ValueError, match=r"this encoder's text tower needs tokens"):
        text()
    with pytest.raises(ValueError, match="this encoder has no image tower"):
        text.encode_image(images)
    with pytest.raises(ValueError, match=r"fusion 'image' takes the item vector from the image tower, but this encoder has only \['text'\]"):
        resolve_fusion("image", ("text",))
    with pytest.raises(ValueError, match="non-empty subset"):
        build_towers(TOWER, ())
    key = make_key_encoder(text)  # the MoCo copy of a one-tower encoder
    assert key.modalities == ("text",) and key.clip.visual is None
    image = ItemEncoder(build_towers(TOWER, ("image",)))
    assert image.fusion == "image" and tuple(image(images=images).shape) == (2, D)
    assert all(not k.startswith(("clip.transformer.", "clip.token_embedding", "clip.positional", "clip.ln_final",
                                 "clip.text_projection")) for k in image.state_dict())  # fmt: skip


def test_an_encoder_file_without_modalities_loads_with_both_towers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = ItemEncoder(build_towers(TOWER)).eval()
    save_encoder(tmp_path / ENCODER_FILE, encoder, TOWER)
    payload = torch.load(tmp_path / ENCODER_FILE, weights_only=True)
    del payload["modalities"]  # as written before one-tower encoders
    torch.save(payload, tmp_path / ENCODER_FILE)
    loaded = load_encoder(tmp_path)
    assert loaded.modalities == ("image", "text") and loaded.fusion == "mean"
    images, tokens = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8), build_tokenizer(TOWER)(["a b", "c"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, tokens), encoder(images, tokens), rtol=0, atol=0)
