"""The fused CPU kernels (recsys.models.fused) against the eager ops they stand in for; the switch and its override."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys.data.spec import world_spec
from recsys.models import fused
from recsys.models.attention import BilinearTargetAttention, TargetAttention
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import CtrModel
from recsys.models.simtier import SimTier

WORLD = world_spec()  # the world generator's feature spec

HAS_AVX2 = torch.backends.cpu.get_cpu_capability() in fused.AVX2_CAPABILITIES
needs_kernels = pytest.mark.skipif(not HAS_AVX2, reason="the kernels are built for AVX2 CPUs")


def test_kernels_build_where_the_cpu_has_avx2() -> None:
    # On an AVX2 CPU a failed build must fail here, not fall back silently.
    assert fused.load() == HAS_AVX2


def test_env_override_is_read_only_when_asked() -> None:
    assert fused.env_override({}) is None and fused.env_override({fused.ENV_OVERRIDE: ""}) is None
    assert fused.env_override({fused.ENV_OVERRIDE: "0"}) is False
    assert fused.env_override({fused.ENV_OVERRIDE: "1"}) is True
    with pytest.raises(ValueError, match="MMCTR_FUSED must be 0"):
        fused.env_override({fused.ENV_OVERRIDE: "off"})
    config = ModelConfig()
    assert fused.config_override(config, {}) is config
    off = fused.config_override(config, {fused.ENV_OVERRIDE: "0"})
    assert not off.fused_kernels and off == ModelConfig(fused_kernels=False) and config.fused_kernels


def test_job_config_takes_the_override(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.train.config import load_job_config

    path = tmp_path / "job.yaml"
    path.write_text("model:\n  fused_kernels: false\n")
    monkeypatch.delenv(fused.ENV_OVERRIDE, raising=False)
    assert not load_job_config(path)[0].fused_kernels
    monkeypatch.setenv(fused.ENV_OVERRIDE, "1")
    assert load_job_config(path)[0].fused_kernels
    monkeypatch.setenv(fused.ENV_OVERRIDE, "0")
    assert not load_job_config(None)[0].fused_kernels


def test_importing_the_models_changes_nothing_process_wide() -> None:
    # No build, no PATH rewrite at import: only constructing a module with fused=True builds.
    code = (
        "import os, sys; path = os.environ.get('PATH'); "
        "import recsys.models.ctr_model, recsys.models.fused as f; "
        "assert os.environ.get('PATH') == path, 'PATH changed'; "
        "assert f.load.cache_info().currsize == 0, 'built at import'"
    )
    env = {k: v for k, v in os.environ.items() if k != fused.ENV_OVERRIDE}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_modules_built_without_fused_never_use_the_kernels() -> None:
    assert not SimTier(20, soft=True, unit_vectors=True, metric_dim=8)._fused
    assert not TargetAttention(16, [8])._fused
    if HAS_AVX2:
        assert SimTier(20, soft=True, metric_dim=8, fused=True)._fused
        assert SimTier(20, fused=True)._fused  # hard tiers too
        assert TargetAttention(16, [8], fused=True)._fused
        assert not TargetAttention(16, [8, 8], fused=True)._fused  # two hidden layers: no kernel
        assert not TargetAttention(16, [8], extra_dim=1, fused=True)._fused


def history_batch(B: int, S: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit target (B, D); a history view (B, L, D) of fixed slots (B, S, D) as the tables give it; prefix masks."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.nn.functional.normalize(torch.randn(B, S, D, generator=g), dim=-1)
    lengths = torch.randint(0, S, (B,), generator=g)
    lengths[0] = 0  # an empty history
    L = max(1, int(lengths.max()))
    mask = torch.arange(L) < lengths.unsqueeze(1)
    mask[1, ::3] = False  # items without a vector inside a history
    history = slots[:, :L]  # not contiguous when L < S
    slots[:, L:] = float("nan")  # never read
    return torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1), history, mask


@needs_kernels
@pytest.mark.parametrize("D", fused.TIER_WIDTHS)
@pytest.mark.parametrize("T", [1, 20, 50])
def test_hard_tiers_equal_eager_and_a_plain_count(D: int, T: int) -> None:
    target, history, mask = history_batch(B=33, S=12, D=D, seed=D + T)
    # similarities on tier edges (exact in binary, so float32 and float64 agree) and the ends:
    # s = cos, the target e_0, the item (cos, sin, 0, ...)
    edges = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])
    target[2] = torch.eye(D)[0]
    history[2, : len(edges)] = 0.0
    history[2, : len(edges), 0] = edges
    history[2, : len(edges), 1] = (1 - edges**2).sqrt()
    mask[2] = False
    mask[2, : len(edges)] = True
    got = SimTier(T, unit_vectors=True, fused=True)(target, history, mask)
    want = SimTier(T, unit_vectors=True)(target, history, mask)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for b in range(len(target)):  # a per-item count in float64
        counted = [float(history[b, l].double() @ target[b].double()) for l in range(mask.shape[1]) if mask[b, l]]
        plain = torch.zeros(T, dtype=torch.float64)
        for s in counted:
            plain[min(max(int((min(max(s, -1.0), 1.0) + 1.0) * T / 2), 0), T - 1)] += 1.0 / len(counted)
        torch.testing.assert_close(got[b].double(), plain, rtol=1e-5, atol=1e-5, msg=f"row {b}")


@needs_kernels
@pytest.mark.parametrize("D", fused.TIER_WIDTHS)
def test_soft_tiers_forward_and_metric_gradient_equal_eager(D: int) -> None:
    target, history, mask = history_batch(B=33, S=12, D=D, seed=D)
    metric = torch.eye(D) + 0.2 * torch.randn(D, D, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(33, 20, generator=torch.Generator().manual_seed(2))
    results = []
    for use_kernels in (True, False):
        simtier = SimTier(20, soft=True, unit_vectors=True, metric_dim=D, fused=use_kernels)
        with torch.no_grad():
            simtier.metric.copy_(metric)
        out = simtier(target, history, mask)
        (out * probe).sum().backward()
        results.append((out.detach(), simtier.metric.grad.clone()))
    (got, got_grad), (want, want_grad) = results
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)
    counted = mask.any(dim=1)
    torch.testing.assert_close(got.sum(dim=1), counted.float())  # shares sum to 1, empty histories to 0


@needs_kernels
@pytest.mark.parametrize("hidden", fused.HIDDEN_WIDTHS)
@pytest.mark.parametrize("softmax", [False, True])
def test_attention_without_gradients_equals_eager(hidden: int, softmax: bool) -> None:
    query, keys, mask = history_batch(B=29, S=9, D=16, seed=hidden)
    att = TargetAttention(16, [hidden], softmax=softmax, fused=True).requires_grad_(False)
    eager = TargetAttention(16, [hidden], softmax=softmax).requires_grad_(False)
    eager.load_state_dict(att.state_dict())
    got = att(query, keys, mask)
    want = eager(query, keys, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got[0].eq(0).all()  # empty history
    keys = keys.clone()
    keys[~mask] = 7.0  # masked positions never change the output
    torch.testing.assert_close(att(query, keys, mask), got, rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("hidden", fused.HIDDEN_WIDTHS)
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("D, threads", [(16, 1), (12, 2), (64, 2), (20, 1)])
@pytest.mark.parametrize("keys_grad", [False, True], ids=["frozen_keys", "trained_keys"])
def test_attention_gradients_equal_eager(hidden: int, softmax: bool, D: int, threads: int, keys_grad: bool) -> None:
    # the kernel's backward against autograd's: MAKE's trainable attention over the frozen history
    # (frozen_keys), and the ID model's over its trained embeddings (trained_keys: the keys' gradient
    # too, in the kernel's register blocks for D in 8/16/32/64, its plain loop for D = 12 and 20);
    # D = 12: rows of P outside the kernel's register blocks; 2 threads: the per-thread sums
    query, keys, mask = history_batch(B=37, S=11, D=D, seed=hidden + D)
    probe = torch.randn(37, D, generator=torch.Generator().manual_seed(5))
    results = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for use_kernels in (True, False):
            torch.manual_seed(hidden)  # the same weights in both
            att = TargetAttention(D, [hidden], softmax=softmax, fused=use_kernels)
            q = query.clone().requires_grad_()
            k = keys.clone().requires_grad_(keys_grad)
            out = att(q, k, mask)
            (out * probe).sum().backward()
            results.append((out.detach(), q.grad, k.grad, [p.grad for p in att.parameters()], out.grad_fn.name()))
    finally:
        torch.set_num_threads(before)
    (got, got_q, got_k, got_params, fused_fn), (want, want_q, want_k, want_params, eager_fn) = results
    assert "Fused" in fused_fn and "Fused" not in eager_fn  # the kernel's backward ran, and autograd's
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_q, want_q, rtol=1e-4, atol=1e-5)
    for got_p, want_p in zip(got_params, want_params):
        torch.testing.assert_close(got_p, want_p, rtol=1e-4, atol=1e-4)
    assert got[0].eq(0).all() and got_q[0].abs().max() < 1e-6  # the empty history: no output, no gradient
    if keys_grad:
        torch.testing.assert_close(got_k, want_k, rtol=1e-4, atol=1e-5)
        assert got_k[~mask].eq(0).all() and got_k[mask].abs().sum() > 0  # padded slots take no gradient
    else:
        assert got_k is None and want_k is None


@needs_kernels
@pytest.mark.parametrize("softmax", [False, True])
def test_attention_forward_keeps_the_hidden_layer_its_backward_needs(softmax: bool) -> None:
    # the kept pre-activations change no output; the backward refuses to run without them
    query, keys, mask = history_batch(B=21, S=8, D=16, seed=7)
    g = torch.Generator().manual_seed(8)
    unit = [torch.randn(*shape, generator=g) for shape in ((16, 16), (16, 16), (21, 16), (16,))]  # A, Wp, row, w2
    args = (keys, mask, query, *unit, torch.tensor(0.1))
    out, hidden = torch.ops.mmctr_fused.din_attention(*args, softmax, True)
    again, nothing = torch.ops.mmctr_fused.din_attention(*args, softmax, False)
    assert torch.equal(out, again) and hidden.shape == (21, keys.shape[1], 16) and nothing.numel() == 0
    grad = torch.randn(21, 16, generator=g)
    grads = torch.ops.mmctr_fused.din_attention_backward(grad, hidden, *args, softmax, True)
    assert grads[0].shape == keys.shape and all(t.isfinite().all() for t in grads)
    without = torch.ops.mmctr_fused.din_attention_backward(grad, hidden, *args, softmax, False)
    assert without[0].numel() == 0 and all(torch.equal(a, b) for a, b in zip(grads[1:], without[1:]))
    with pytest.raises(RuntimeError, match="run with keep_hidden"):
        torch.ops.mmctr_fused.din_attention_backward(grad, nothing, *args, softmax, False)


@needs_kernels
def test_attention_keeps_its_hidden_layer_only_for_a_backward() -> None:
    # evaluation of a trainable model (no_grad) keeps no (B, L, H) tensor; training keeps exactly it
    from torch.profiler import profile

    B, L, D, H = 64, 20, 16, 32
    query, keys, mask = history_batch(B=B, S=L + 1, D=D, seed=9)
    att = TargetAttention(D, [H], fused=True)  # parameters trainable
    kept = B * keys.shape[1] * H * 4  # bytes of the pre-activations

    def allocated(grad: bool) -> int:
        with torch.set_grad_enabled(grad), profile(profile_memory=True) as prof:
            att(query, keys, mask)
        return sum(e.cpu_memory_usage for e in prof.key_averages() if e.key == "mmctr_fused::din_attention")

    assert allocated(False) < kept <= allocated(True)


@needs_kernels
def test_attention_backward_is_not_differentiable_again() -> None:
    # a second-order gradient through the kernel would silently miss terms: it raises instead
    query, keys, mask = history_batch(B=6, S=5, D=8, seed=4)
    att = TargetAttention(8, [8], fused=True)
    out = att(query.clone().requires_grad_(), keys, mask)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), att.unit[0].weight, create_graph=True)
    (grad,) = torch.autograd.grad(out.sum(), att.unit[0].weight)  # a plain backward still runs
    assert grad.abs().sum() > 0


@needs_kernels
def test_attention_with_extra_inputs_keeps_the_eager_ops() -> None:
    # the `simscore` variant's per-position similarity is an input the kernel does not take
    query, keys, mask = history_batch(B=5, S=6, D=8, seed=3)
    att = TargetAttention(8, [8], extra_dim=1, fused=True)
    keys = keys.clone().requires_grad_()
    out = att(query, keys, mask, torch.rand(5, keys.shape[1], 1))
    assert "Fused" not in out.grad_fn.name()
    out.sum().backward()
    assert keys.grad is not None and att.unit[0].weight.grad is not None


def _graph_nodes(t: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``t``."""
    seen, todo, names = set(), [t.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        todo += [n for n, _ in node.next_functions]
    return names


@needs_kernels
@pytest.mark.parametrize("variant", ["id_only", "vector"])
def test_id_model_attention_over_trained_embeddings_equals_eager(sizes: dict[str, int], make_batch, variant: str) -> None:
    # the ID model's attention runs the kernel in training, its keys (item embeddings; with `vector`,
    # joined to the frozen vectors) taking their gradient from it: every parameter's gradient as eager
    batch = make_batch([4, 0, 7, 2, 3])
    results = []
    for use_kernels in (True, False):
        torch.manual_seed(0)
        model = CtrModel(ModelConfig(variant=variant, fused_kernels=use_kernels), WORLD, sizes, mm_dim=16)
        if model.mm_arch is not None:
            n = model.mm_arch.table_weight().shape[0]
            model.mm_arch.load_rows(np.arange(n), torch.nn.functional.normalize(torch.randn(n, 16), dim=-1))
        logits = model(batch.dense_features, batch.sparse_features)
        (logits * torch.linspace(-1, 1, len(logits))).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads, _graph_nodes(logits)))
    (got, got_grads, fused_graph), (want, want_grads, eager_graph) = results
    assert fused_graph.count("_FusedDinAttentionBackward") == 1 and "_FusedDinAttentionBackward" not in eager_graph
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    tables = [name for name in got_grads if "embedding_bags" in name]
    assert tables and all(got_grads[name].abs().sum() > 0 for name in tables)  # the keys' gradient reached the tables
    for name, g in got_grads.items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def plain_bilinear(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: float,
                   softmax: bool) -> torch.Tensor:
    """BilinearTargetAttention's definition, one impression and one position at a time, in float64."""
    out = torch.zeros(query.shape, dtype=torch.float64)
    for b in range(len(query)):
        items = [keys[b, l].double() for l in range(keys.shape[1]) if mask[b, l]]
        scores = [float(query[b].double() @ weight.double() @ k) + bias for k in items]
        if softmax and scores:
            top = max(scores)
            e = [np.exp(s - top) for s in scores]
            scores = [x / sum(e) for x in e]
        for w, k in zip(scores, items):
            out[b] += w * k
    return out


@needs_kernels
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("D, threads", [(8, 1), (16, 2), (64, 1), (12, 2)])
def test_bilinear_attention_equals_eager_and_a_plain_sum(softmax: bool, D: int, threads: int) -> None:
    # the kernel's forward and backward against autograd's eager ops, and the forward against the
    # definition written out; D = 12: the kernel's plain loop; 2 threads: rows split between them
    query, keys, mask = history_batch(B=37, S=11, D=D, seed=D)
    probe = torch.randn(37, D, generator=torch.Generator().manual_seed(5))
    weight = torch.eye(D) + 0.2 * torch.randn(D, D, generator=torch.Generator().manual_seed(6))
    results = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for use_kernels in (True, False):
            att = BilinearTargetAttention(D, softmax=softmax, fused=use_kernels)
            with torch.no_grad():
                att.weight.copy_(weight)
                att.bias.fill_(0.3)
            q = query.clone().requires_grad_()
            out = att(q, keys, mask)
            (out * probe).sum().backward()
            results.append((out.detach(), q.grad, att.weight.grad, att.bias.grad, out.grad_fn.name()))
    finally:
        torch.set_num_threads(before)
    (got, got_q, got_w, got_b, fused_fn), (want, want_q, want_w, want_b, eager_fn) = results
    assert "Fused" in fused_fn and "Fused" not in eager_fn
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), plain_bilinear(query, keys, mask, weight, 0.3, softmax), rtol=1e-5, atol=1e-5)
    for g, w in ((got_q, want_q), (got_w, want_w), (got_b, want_b)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert got[0].eq(0).all() and got_q[0].abs().max() < 1e-6  # the empty history: no output, no gradient
    assert got_w.abs().sum() > 0 and (softmax or got_b.abs() > 0)  # (a softmax ignores the bias)


def test_bilinear_attention_with_trained_keys_keeps_the_eager_ops() -> None:
    # the kernel gives no keys' gradient: keys that need one (the ID model's embeddings) take autograd's
    query, keys, mask = history_batch(B=5, S=4, D=8, seed=1)
    att = BilinearTargetAttention(8, fused=True)
    k = keys.clone().requires_grad_()
    out = att(query, k, mask)
    out.sum().backward()
    assert "Fused" not in out.grad_fn.name() and k.grad[mask].abs().sum() > 0
    torch.testing.assert_close(out.double(), plain_bilinear(query, keys, mask, torch.eye(8), 0.0, False))


@needs_kernels
@pytest.mark.parametrize("stage2", ["frozen", "fine-tuned", "attention frozen"])
@pytest.mark.parametrize("learned", [True, False], ids=["soft_learned", "paper"])
@pytest.mark.parametrize("attention", ["din", "bilinear"])
def test_make_model_equals_eager(sizes: dict[str, int], make_batch, stage2: str, learned: bool, attention: str) -> None:
    batch = make_batch([4, 0, 7, 2, 3])
    results = []
    make_frozen = stage2 == "frozen"
    for use_kernels in (True, False):  # the switch changes no parameter: the same seed, the same weights
        config = ModelConfig(variant="simtier_make", make_frozen=make_frozen, make_attention_frozen=stage2 == "attention frozen",
                             make_attention=attention, make_attention_hidden=(8,), fused_kernels=use_kernels,
                             simtier_soft=learned,
                             simtier_learned_metric=learned)
        torch.manual_seed(0)
        model = CtrModel(config, WORLD, sizes, mm_dim=16)
        n = model.mm_arch.table_weight().shape[0]
        rows = np.array([r for r in range(n) if r != 3])  # item 3 without a vector
        model.mm_arch.load_rows(rows, torch.nn.functional.normalize(torch.randn(len(rows), 16), dim=-1))
        logits = model(batch.dense_features, batch.sparse_features)
        logits.sum().backward()
        make_grads = [p.grad for p in model.make.parameters()]
        metric = model.simtier.metric
        results.append((logits.detach(), None if metric is None else metric.grad.clone(), make_grads))
    (logits, got_grad, got_make), (want, want_grad, want_make) = results
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    if learned:
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)
    else:  # the paper's SimTier has no parameter
        assert got_grad is None and want_grad is None
    if make_frozen:
        assert all(g is None for g in got_make + want_make)
    elif stage2 == "attention frozen":  # the MLP trains; the attention, forward only, has no gradient
        names = [n for n, _ in model.make.named_parameters()]
        for name, got_m, want_m in zip(names, got_make, want_make):
            if name.startswith("attention."):
                assert got_m is None and want_m is None, name
            else:
                torch.testing.assert_close(got_m, want_m, rtol=1e-4, atol=1e-5)
                assert got_m.abs().sum() > 0, name
    else:  # fine-tuned in stage 2: MAKE's attention trains through the kernel's backward
        for got_m, want_m in zip(got_make, want_make):
            torch.testing.assert_close(got_m, want_m, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_kernels_name_the_bad_argument() -> None:
    assert fused.load()
    history = torch.zeros(2, 3, 8)
    with pytest.raises(RuntimeError, match="weight: expected shape"):
        torch.ops.mmctr_fused.soft_tiers(history, torch.zeros(2, 8), torch.zeros(2, 4), 5)
    with pytest.raises(RuntimeError, match="D must be 8, 16, 32 or 64, got 12"):
        torch.ops.mmctr_fused.soft_tiers(torch.zeros(2, 3, 12), torch.zeros(2, 12), torch.zeros(2, 3), 5)
    unit = (torch.zeros(2, 8), torch.zeros(8, 8), torch.zeros(8, 8), torch.zeros(2, 8))  # query, A, Wp, row term
    with pytest.raises(RuntimeError, match="mask: expected shape"):
        torch.ops.mmctr_fused.din_attention(
            history, torch.ones(2, 4, dtype=torch.bool), *unit, torch.zeros(8), torch.zeros(()), False, False
        )
    with pytest.raises(RuntimeError, match="hidden width must be 8, 16 or 32, got 4"):
        torch.ops.mmctr_fused.din_attention(
            history, torch.ones(2, 3, dtype=torch.bool), *unit, torch.zeros(4), torch.zeros(()), False, False
        )
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="query_projection: expected shape"):
        torch.ops.mmctr_fused.bilinear_attention(history, mask, torch.zeros(2, 4), torch.zeros(()), False)
    with pytest.raises(RuntimeError, match="grad: expected shape"):
        torch.ops.mmctr_fused.bilinear_attention_backward(
            torch.zeros(3, 8), history, mask, torch.zeros(2, 8), torch.zeros(()), False
        )
    with pytest.raises(RuntimeError, match="grad: expected shape"):
        torch.ops.mmctr_fused.din_attention_backward(
            torch.zeros(2, 7), torch.zeros(0), history, mask, *unit, torch.zeros(8), torch.zeros(()), False, True
        )
    with pytest.raises(RuntimeError, match="hidden .*expected shape"):
        torch.ops.mmctr_fused.din_attention_backward(
            torch.zeros(2, 8), torch.zeros(2, 3, 4), history, mask, *unit, torch.zeros(8), torch.zeros(()), False, True
        )
