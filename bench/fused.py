"""``python -m bench.fused``: the fused CPU kernels (``recsys.models.fused``) against the eager ops.

In one process, one thread, the two taking turns on the same inputs (a
training batch's shapes: B = 2,048 impressions, L = 50 history slots,
prefix-masked histories of uniform length), it times

1. SimTier with the learned metric, forward, and forward + backward; the
   paper's hard tiers over the fixed cosine (no gradient), forward;
2. target attention without gradients (a frozen MAKE; evaluation), for the
   hidden widths 8 and 32;
3. target attention forward + backward over the frozen history (MAKE in
   stage 1, and fine-tuned in stage 2), the query and the unit's weights
   taking gradients, at 8 and 32 wide;
4. the same over keys that take gradients too (the ID model's attention
   over its trained embeddings), at 32 wide,

and prints eager time / fused time (the kernels' speed-up) for each, with
the largest difference of their outputs. The two sides are twin modules
with the same weights, one built with ``fused=True``.

Usage::

    python -m bench.fused [--dim 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from recsys.allocator import pin_malloc_thresholds
from recsys.models import fused
from recsys.models.attention import TargetAttention
from recsys.models.simtier import SimTier


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def eager_over_fused(
    eager_fn: Callable[[], torch.Tensor], fused_fn: Callable[[], torch.Tensor], rounds: int, repeats: int = 20
) -> tuple[float, float, float]:
    """(eager seconds, fused seconds, largest output difference); median of ``rounds`` turns."""
    eager, ours = [], []
    for _ in range(rounds):
        eager.append(_time(eager_fn, repeats))
        ours.append(_time(fused_fn, repeats))
    return statistics.median(eager), statistics.median(ours), float((fused_fn() - eager_fn()).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fused", description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=16, help="D, the vector width")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--history", type=int, default=50, help="L, history slots")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pin_malloc_thresholds()
    if not fused.load():
        raise SystemExit("the fused kernels are not available here (an AVX2 CPU, g++ and ninja are needed)")
    B, L, D = args.batch_size, args.history, args.dim
    g = torch.Generator().manual_seed(0)
    history = torch.nn.functional.normalize(torch.randn(B, L, D, generator=g), dim=-1)
    target = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    mask = torch.arange(L) < torch.randint(0, L + 1, (B,), generator=g).unsqueeze(1)
    probe = torch.randn(B, 50, generator=g)

    def tiers_forward(simtier: SimTier) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return simtier(target, history, mask)

        return run

    def tiers_forward_backward(simtier: SimTier) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            simtier.zero_grad()
            (simtier(target, history, mask) * probe).sum().backward()
            return simtier.metric.grad

        return run

    def attention(att: TargetAttention) -> Callable[[], torch.Tensor]:
        return lambda: att(target, history, mask)

    def attention_forward_backward(att: TargetAttention, keys_grad: bool = False) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            att.zero_grad()
            query = target.clone().requires_grad_()
            keys = history.clone().requires_grad_() if keys_grad else history
            (att(query, keys, mask) * probe[:, :1]).sum().backward()
            grads = [query.grad, *(p.grad for p in att.parameters()), *([keys.grad] if keys_grad else [])]
            return torch.cat([t.flatten() for t in grads])

        return run

    # (eager, fused) twins: the metric starts at the identity in both; the attention copies its weights
    simtiers = [SimTier(50, soft=True, unit_vectors=True, metric_dim=D, fused=k) for k in (False, True)]
    cases: dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]] = {
        "SimTier, learned metric: forward": (tiers_forward(simtiers[0]), tiers_forward(simtiers[1])),
        "SimTier, learned metric: forward + backward": (
            tiers_forward_backward(simtiers[0]), tiers_forward_backward(simtiers[1])
        ),
    }
    hard = [SimTier(20, unit_vectors=True, fused=k) for k in (False, True)]  # the paper's form
    cases["SimTier, paper (hard, cosine, 20): forward"] = (tiers_forward(hard[0]), tiers_forward(hard[1]))
    for hidden in (8, 32):
        atts = [TargetAttention(D, [hidden], fused=k).requires_grad_(False) for k in (False, True)]
        atts[1].load_state_dict(atts[0].state_dict())
        cases[f"target attention {hidden} wide, no gradients"] = (attention(atts[0]), attention(atts[1]))
    for hidden in (8, 32):
        atts = [TargetAttention(D, [hidden], fused=k) for k in (False, True)]
        atts[1].load_state_dict(atts[0].state_dict())
        cases[f"target attention {hidden} wide, forward + backward"] = (
            attention_forward_backward(atts[0]), attention_forward_backward(atts[1])
        )
    atts = [TargetAttention(D, [32], fused=k) for k in (False, True)]
    atts[1].load_state_dict(atts[0].state_dict())
    cases["target attention 32 wide, + key gradients"] = (
        attention_forward_backward(atts[0], keys_grad=True), attention_forward_backward(atts[1], keys_grad=True)
    )
    print(f"fused kernels vs eager ops (B={B}, L={L}, D={D}, 1 thread, median of {args.rounds} turns)")
    for label, (eager_fn, fused_fn) in cases.items():
        eager, ours, diff = eager_over_fused(eager_fn, fused_fn, args.rounds)
        print(f"  {label:<46} eager {eager * 1e3:6.2f} ms  fused {ours * 1e3:6.2f} ms  {eager / ours:4.1f}x  (max diff {diff:.1e})")


if __name__ == "__main__":
    main()
