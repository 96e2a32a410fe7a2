"""Towers and ItemEncoder: shapes, unit norm, finiteness, offline tokenizer, TorchScript trace."""

from __future__ import annotations

import socket

import pytest
import torch

from pretrain.config import FUSIONS, TowerConfig
from pretrain.towers import IMAGE_MEAN, IMAGE_STD, ItemEncoder, build_tokenizer, build_towers

CFG = TowerConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, context_length=16)
TITLES = ["red cotton summer dress", "stainless steel kettle 2l", "kids running shoes blue", "x"]


@pytest.fixture(scope="module")
def encoder() -> ItemEncoder:
    torch.manual_seed(0)
    return ItemEncoder(build_towers(CFG)).eval()


def _images(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, CFG.image_size, CFG.image_size, 3), dtype=torch.uint8, generator=g)


def test_tokenizer_works_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokenize = build_tokenizer(CFG)
    tokens = tokenize(TITLES + ["word " * 100])
    assert tokens.shape == (5, CFG.context_length) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 49406).all() and int(tokens.max()) < CFG.vocab_size
    assert tokens[-1, -1] == 49407  # truncated text keeps its end token
    assert tokens[3].tolist()[3:] == [0] * (CFG.context_length - 3)  # "x": start, x, end, padding


def test_tokenizer_vocab_larger_than_config_raises() -> None:
    with pytest.raises(ValueError, match="vocab_size 1000 is smaller"):
        build_tokenizer(TowerConfig(vocab_size=1000))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_unit_norm_finite(encoder: ItemEncoder, fusion: str) -> None:
    enc = ItemEncoder(encoder.clip, fusion=fusion)
    images, tokens = _images(4), build_tokenizer(CFG)(TITLES)
    with torch.no_grad():
        v, t, item = enc.encode_image(images), enc.encode_text(tokens), enc(images, tokens)
    B, D = 4, CFG.embed_dim
    assert v.shape == (B, D) and t.shape == (B, D) and item.shape == (B, enc.output_dim())
    assert enc.output_dim() == (2 * D if fusion == "concat" else D)
    for x in (v, t, item):
        assert x.isfinite().all()
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(item, enc.fuse(v, t))
    if fusion == "mean":
        torch.testing.assert_close(item, (v + t) / (v + t).norm(dim=-1, keepdim=True))


def test_uint8_and_normalised_float_inputs_agree(encoder: ItemEncoder) -> None:
    images = _images(3)
    x = images.permute(0, 3, 1, 2).double() / 255.0
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    normalised = ((x - mean) / std).float()
    torch.testing.assert_close(encoder.preprocess(images), normalised)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_image(images), encoder.encode_image(normalised))


def test_gradients_reach_both_towers_and_are_finite() -> None:
    torch.manual_seed(1)
    enc = ItemEncoder(build_towers(CFG))
    enc(_images(2), build_tokenizer(CFG)(TITLES[:2])).sum().backward()
    visual = [p.grad for p in enc.clip.visual.parameters()]
    text = [p.grad for p in enc.clip.transformer.parameters()]
    assert all(g is not None and g.isfinite().all() for g in visual + text)
    assert any(g.abs().sum() > 0 for g in visual) and any(g.abs().sum() > 0 for g in text)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace.*` is deprecated:FutureWarning")
def test_trace_matches_eager(encoder: ItemEncoder) -> None:
    images, tokens = _images(4, seed=1), build_tokenizer(CFG)(TITLES)
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (images, tokens))
        other_images, other_tokens = _images(6, seed=2), build_tokenizer(CFG)(TITLES + TITLES[:2][::-1])
        for im, tok in ((images, tokens), (other_images, other_tokens)):  # another batch size too
            torch.testing.assert_close(traced(im, tok), encoder(im, tok), atol=1e-5, rtol=1e-5)


def test_export_with_dynamic_batch_matches_eager(encoder: ItemEncoder) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    images, tokens = _images(4, seed=3), build_tokenizer(CFG)(TITLES)
    exported = torch.export.export(encoder, (images, tokens), dynamic_shapes=({0: batch}, {0: batch})).module()
    other_images, other_tokens = _images(7, seed=4), build_tokenizer(CFG)(TITLES + TITLES[:3])
    with torch.no_grad():
        for im, tok in ((images, tokens), (other_images, other_tokens)):
            torch.testing.assert_close(exported(im, tok), encoder(im, tok), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise(encoder: ItemEncoder) -> None:
    tokens = build_tokenizer(CFG)(TITLES)
    with pytest.raises(ValueError, match=r"uint8 images must have shape \(B, 64, 64, 3\)"):
        encoder.encode_image(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"float images must be normalised with shape \(B, 3, 64, 64\)"):
        encoder.encode_image(torch.zeros(2, 32, 32, 3))
    with pytest.raises(TypeError, match="images must be uint8"):
        encoder.encode_image(torch.zeros(2, 64, 64, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"tokens must be integer ids of shape \(B, 16\)"):
        encoder.encode_text(tokens[:, :8])
    with pytest.raises(ValueError, match="batch size"):
        encoder(_images(3), tokens)
    with pytest.raises(ValueError, match="fusion must be one of"):
        ItemEncoder(encoder.clip, fusion="sum")


@pytest.mark.parametrize("fusion", FUSIONS)
def test_reduced_encoder_projects_the_fused_vector_and_renormalises(encoder: ItemEncoder, fusion: str) -> None:
    full = ItemEncoder(encoder.clip, fusion=fusion)
    K = 5
    reduced = ItemEncoder(encoder.clip, fusion=fusion, reduced_dim=K)
    basis = torch.linalg.qr(torch.randn(full.output_dim(), K, generator=torch.Generator().manual_seed(1)))[0]
    reduced.projection.copy_(basis)
    images, tokens = _images(4, seed=3), build_tokenizer(CFG)(TITLES)
    with torch.no_grad():
        want = full(images, tokens) @ basis
        want = want / want.norm(dim=-1, keepdim=True)  # plain reference
        got = reduced(images, tokens)
        fused = reduced.fuse(reduced.encode_image(images), reduced.encode_text(tokens))
    assert reduced.output_dim() == K and got.shape == (4, K)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(fused, want)
    assert "projection" in reduced.state_dict() and "projection" not in full.state_dict()


def test_reduced_dim_outside_the_fused_width_is_refused(encoder: ItemEncoder) -> None:
    with pytest.raises(ValueError, match=r"reduced_dim must lie in \[0, 16\]"):
        ItemEncoder(encoder.clip, reduced_dim=17)
    with pytest.raises(ValueError, match=r"reduced_dim must lie in \[0, 32\]"):
        ItemEncoder(encoder.clip, fusion="concat", reduced_dim=-1)
