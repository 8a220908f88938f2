"""`gumbel_topk`, `gumbel_topk_select`: k Gumbel-softmax draws (MIST §3.2 segment selection, App. A).

MIST segment selection, K segments of T*N*D features scored against the question::

    logits = (q_proj(q) * seg_proj(segments)).sum(-1) / D**0.5                  # (B, K)
    chosen = vidsel.ops.gumbel_topk_select(segments.flatten(2), logits, k)      # (B, k, T*N*D)
    # eval: deterministic top-k (vidsel.ops.topk_gather), no noise

The Gumbel noise comes from the Philox stream of vidsel/reference/philox.py keyed by `seed`, so
every backend draws the same segments; backward regenerates it instead of storing soft samples.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import OpBackends, resolve, run_backend
from vidsel.ops._validation import check_int, check_seed, check_tensor, is_finite, refuse_double_backward
from vidsel.reference import gumbel_topk as reference
from vidsel.reference import philox

GUMBEL_TOPK = OpBackends("gumbel_topk", reference=reference.gumbel_topk, triton="gumbel_topk")
GUMBEL_TOPK_BACKWARD = OpBackends("gumbel_topk_backward", reference=reference.gumbel_topk_backward,
                                  triton="gumbel_topk")


@torch.library.custom_op("vidsel::gumbel_topk", mutates_args=())
def _gumbel_topk(logits: Tensor, k: int, tau: float, hard: bool, replacement: bool, seed: int, impl: str) -> Tensor:
    return run_backend(GUMBEL_TOPK, impl, logits, k, tau, hard, replacement, seed)


@torch.library.custom_op("vidsel::gumbel_topk_backward", mutates_args=())
def _gumbel_topk_backward(
    grad: Tensor, logits: Tensor, k: int, tau: float, replacement: bool, seed: int, impl: str
) -> Tensor:
    return run_backend(GUMBEL_TOPK_BACKWARD, impl, grad, logits, k, tau, replacement, seed)


@_gumbel_topk.register_fake
def _(logits, k, tau, hard, replacement, seed, impl):
    return logits.new_empty(logits.shape[0], k, logits.shape[1])


@_gumbel_topk_backward.register_fake
def _(grad, logits, k, tau, replacement, seed, impl):
    return torch.empty_like(logits)


def _setup(ctx, inputs, output):
    logits, k, tau, hard, replacement, seed, impl = inputs
    ctx.save_for_backward(logits)
    ctx.args = (k, tau, replacement, seed, impl)


def _backward(ctx, grad):
    """Straight-through for hard=True: the gradient of the soft draws either way."""
    (logits,) = ctx.saved_tensors
    return _gumbel_topk_backward(grad.contiguous(), logits, *ctx.args), None, None, None, None, None, None


_gumbel_topk.register_autograd(_backward, setup_context=_setup)
refuse_double_backward(_gumbel_topk_backward, "gumbel_topk")


@register_flop_formula(torch.ops.vidsel.gumbel_topk)
def _gumbel_topk_flops(logits_shape, k, tau, hard, replacement, seed, impl, *args, **kwargs) -> int:
    """Per draw and item: the perturbation, the scaling and the softmax normalisation."""
    batch, length = logits_shape
    return 2 * batch * k * length


@register_flop_formula(torch.ops.vidsel.gumbel_topk_backward)
def _gumbel_topk_backward_flops(grad_shape, logits_shape, k, tau, replacement, seed, impl, *args, **kwargs) -> int:
    """Regenerated soft draw plus the softmax Jacobian-vector product (<G, y> and y (G - <G, y>))."""
    batch, length = logits_shape
    return 2 * batch * k * length * 3


def _check_args(logits, k, tau, hard, replacement, seed) -> tuple[float, int]:
    check_tensor("logits", logits, ndim=2, floating=True)
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have L >= 1 items to draw from, got shape {tuple(logits.shape)}")
    check_int("k", k, 1, None if replacement else logits.shape[1])
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float, got {type(tau).__name__}")
    # 1/tau must be finite too: a subnormal tau overflows it and every soft draw becomes NaN
    if not is_finite(tau) or tau <= 0 or not is_finite(1.0 / tau):
        raise ValueError(f"tau={tau} must be a finite float > 0 whose reciprocal is finite")
    for name, flag in (("hard", hard), ("replacement", replacement)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    seed = check_seed(seed, philox.draw_seed)
    check_int("seed", seed, 0, philox.MAX_SEED)
    return float(tau), seed


def gumbel_topk(
    logits: Tensor,
    k: int,
    *,
    tau: float = 1.0,
    hard: bool = True,
    replacement: bool = True,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """k Gumbel-softmax draws from softmax(logits) (MIST §3.2; Appendix A).

    Args:
        logits: (B, L) unnormalised log-probabilities of the L items (segments / regions).
        k: number of draws, >= 1 (<= L without replacement).
        tau: softmax temperature > 0.
        hard: True -> one-hot rows in forward with the soft rows' gradient (straight-through);
            False -> the soft rows softmax((logits + g_t) / tau).
        replacement: True (MIST default) -> independent draws; False -> each draw masks the items
            picked before it (their probability set to 0, the rest renormalised).
        seed: key of the Philox noise; None draws one from torch's default generator.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        (B, k, L) in logits' dtype, rows in draw order.

    Contract: L = 0 raises ValueError (nothing to draw), B = 0 gives an empty result. The hard pick
    is the first maximum of logits + g_t with NaN after every number; NaN logits make the soft rows
    NaN. tau must be finite, > 0 and have a finite reciprocal. seed=None under torch.compile and
    double backward raise RuntimeError.
    """
    tau, seed = _check_args(logits, k, tau, hard, replacement, seed)
    impl = resolve("gumbel_topk", impl, logits.device, GUMBEL_TOPK, GUMBEL_TOPK_BACKWARD)
    return _gumbel_topk(logits, k, tau, hard, replacement, seed, impl)


def gumbel_topk_select(
    x: Tensor,
    logits: Tensor,
    k: int,
    *,
    tau: float = 1.0,
    hard: bool = True,
    replacement: bool = True,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """The k drawn rows of x: gumbel_topk(logits, k)ᵀ-weighted rows, (B, L, D) -> (B, k, D).

    With hard=True row t is exactly x[b, pick_t] in forward; gradients reach x (through the one-hot
    rows) and logits (straight-through, through the soft rows). Arguments as gumbel_topk.
    """
    check_tensor("x", x, ndim=3, floating=True)
    check_tensor("logits", logits, ndim=2, floating=True, like=x, shape=(x.shape[0], x.shape[1]))
    if logits.dtype != x.dtype:
        raise TypeError(f"logits must have the dtype of x ({x.dtype}), got {logits.dtype}")
    weights = gumbel_topk(logits, k, tau=tau, hard=hard, replacement=replacement, seed=seed, impl=impl)
    if not hard:
        return torch.bmm(weights, x)
    finite = torch.isfinite(x)
    product = torch.bmm(weights, torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)))
    # Forward value exactly x[b, pick_t] (a NaN elsewhere in x cannot reach it through 0 * NaN); the
    # gradient is that of weights @ x. For finite x[pick] the correction term is exactly zero.
    picked = x.gather(1, weights.argmax(-1, keepdim=True).expand(-1, -1, x.shape[-1]))
    return product + (picked - product).detach()
