"""`perturbed_topk`, `perturbed_topk_select`: differentiable top-k by perturbed maxima (STTS §3.2).

STTS temporal selection (§3.3, eq. 9), frames as items::

    scores = scorer(x.mean(2))                                     # (B, T)
    z = vidsel.ops.perturbed_topk_select(x.flatten(2), scores, k)   # (B, k, N*C): Y^T x
    # inference: hard top-k, e.g. sigma=0 (or vidsel.ops.topk_gather)

The noise Z is drawn from the counter-based Philox stream of vidsel/reference/philox.py keyed by
`seed`: the compiled backends generate it on the fly in forward and regenerate it in backward, so
neither the (B, n, L) noise nor the (B, n, k, L) one-hots are ever stored (per sample only L
values live in registers / stack). Every backend draws the same noise and selects the same indices.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import OpBackends, resolve, run_backend
from vidsel.ops._validation import check_int, check_seed, check_tensor, is_finite, refuse_double_backward
from vidsel.reference import perturbed_topk as reference
from vidsel.reference import philox

PERTURBED_TOPK = OpBackends("perturbed_topk", reference=reference.perturbed_topk, triton="perturbed_topk")
PERTURBED_TOPK_BACKWARD = OpBackends("perturbed_topk_backward", reference=reference.perturbed_topk_backward,
                                     triton="perturbed_topk")


@torch.library.custom_op("vidsel::perturbed_topk", mutates_args=())
def _perturbed_topk(scores: Tensor, k: int, num_samples: int, sigma: float, seed: int, impl: str) -> Tensor:
    return run_backend(PERTURBED_TOPK, impl, scores, k, num_samples, sigma, seed)


@torch.library.custom_op("vidsel::perturbed_topk_backward", mutates_args=())
def _perturbed_topk_backward(
    grad: Tensor, scores: Tensor, k: int, num_samples: int, sigma: float, seed: int, impl: str
) -> Tensor:
    return run_backend(PERTURBED_TOPK_BACKWARD, impl, grad, scores, k, num_samples, sigma, seed)


@_perturbed_topk.register_fake
def _(scores, k, num_samples, sigma, seed, impl):
    return scores.new_empty(scores.shape[0], k, scores.shape[1])


@_perturbed_topk_backward.register_fake
def _(grad, scores, k, num_samples, sigma, seed, impl):
    return torch.empty_like(scores)


def _setup(ctx, inputs, output):
    scores, k, num_samples, sigma, seed, impl = inputs
    ctx.save_for_backward(scores)
    ctx.args = (k, num_samples, sigma, seed, impl)


def _backward(ctx, grad):
    (scores,) = ctx.saved_tensors
    grad_scores = _perturbed_topk_backward(grad.contiguous(), scores, *ctx.args)
    return grad_scores, None, None, None, None, None


_perturbed_topk.register_autograd(_backward, setup_context=_setup)
refuse_double_backward(_perturbed_topk_backward, "perturbed_topk")


@register_flop_formula(torch.ops.vidsel.perturbed_topk)
def _perturbed_topk_flops(scores_shape, k, num_samples, sigma, seed, impl, *args, **kwargs) -> int:
    """One multiply-add per perturbed score s + sigma Z (the selection itself is comparisons)."""
    batch, length = scores_shape
    return 2 * batch * num_samples * length


@register_flop_formula(torch.ops.vidsel.perturbed_topk_backward)
def _perturbed_topk_backward_flops(grad_shape, scores_shape, k, num_samples, sigma, seed, impl, *args, **kwargs) -> int:
    """Regenerated s + sigma Z, the k-term <G, Y_s> and the L-term accumulation g_s Z_s per sample."""
    batch, length = scores_shape
    return 2 * batch * num_samples * (2 * length + k)


def _dense_indicator_matmul_backward(grad, indicators, x, need_x, need_indicators):
    grad_x, grad_indicators = reference.indicator_matmul_backward(grad, indicators, x)
    empty = x.new_empty(0)
    return (grad_x if need_x else empty), (grad_indicators if need_indicators else empty)


# The C++ kernels skip the zero indicators (~94% of them in STTS's setting); Triton uses the dense
# batched GEMM (cuBLAS on a GPU), as the reference does.
INDICATOR_MATMUL = OpBackends("indicator_matmul", reference=reference.indicator_matmul,
                              triton=reference.indicator_matmul)
INDICATOR_MATMUL_BACKWARD = OpBackends("indicator_matmul_backward", reference=_dense_indicator_matmul_backward,
                                       triton=_dense_indicator_matmul_backward)


@torch.library.custom_op("vidsel::indicator_matmul", mutates_args=())
def _indicator_matmul(indicators: Tensor, x: Tensor, impl: str) -> Tensor:
    """Y^T x (eq. 9): indicators (B, k, L), x (B, L, D) -> (B, k, D)."""
    return run_backend(INDICATOR_MATMUL, impl, indicators, x)


@torch.library.custom_op("vidsel::indicator_matmul_backward", mutates_args=())
def _indicator_matmul_backward(
    grad: Tensor, indicators: Tensor, x: Tensor, need_x: bool, need_indicators: bool, impl: str
) -> tuple[Tensor, Tensor]:
    return tuple(run_backend(INDICATOR_MATMUL_BACKWARD, impl, grad, indicators, x, need_x, need_indicators))


@_indicator_matmul.register_fake
def _(indicators, x, impl):
    return x.new_empty(x.shape[0], indicators.shape[1], x.shape[2])


@_indicator_matmul_backward.register_fake
def _(grad, indicators, x, need_x, need_indicators, impl):
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    return grad_x, (torch.empty_like(indicators) if need_indicators else x.new_empty(0))


def _matmul_setup(ctx, inputs, output):
    indicators, x, impl = inputs
    ctx.save_for_backward(indicators, x)
    ctx.impl = impl


def _matmul_backward(ctx, grad):
    """grad_indicators is restricted to the indicators' support: exact for the perturbed backward."""
    indicators, x = ctx.saved_tensors
    need_indicators, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_indicators = _indicator_matmul_backward(
        grad.contiguous(), indicators, x, need_x, need_indicators, ctx.impl
    )
    return (grad_indicators if need_indicators else None), (grad_x if need_x else None), None


_indicator_matmul.register_autograd(_matmul_backward, setup_context=_matmul_setup)
refuse_double_backward(_indicator_matmul_backward, "perturbed_topk_select")


@register_flop_formula(torch.ops.vidsel.indicator_matmul)
def _indicator_matmul_flops(indicators_shape, x_shape, impl, *args, **kwargs) -> int:
    """Counted as the dense product (the non-zero count is data-dependent)."""
    batch, k, length = indicators_shape
    return 2 * batch * k * length * x_shape[2]


@register_flop_formula(torch.ops.vidsel.indicator_matmul_backward)
def _indicator_matmul_backward_flops(
    grad_shape, indicators_shape, x_shape, need_x, need_indicators, impl, *args, **kwargs
) -> int:
    """One dense (B, k, L) x (B, ., D) product per requested gradient."""
    batch, k, length = indicators_shape
    return 2 * batch * k * length * x_shape[2] * (int(need_x) + int(need_indicators))


def _check_common(scores: Tensor, k, num_samples, sigma, seed, name: str = "scores") -> tuple[int, float, int]:
    check_tensor(name, scores, floating=True)
    if scores.dim() < 2:
        raise ValueError(f"{name} must have shape (B, L) (or (*G, L)), got {tuple(scores.shape)}")
    length = scores.shape[-1]
    check_int("k", k, 1, length)
    check_int("num_samples", num_samples, 1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a float, got {type(sigma).__name__}")
    if not is_finite(sigma) or sigma < 0:
        raise ValueError(f"sigma={sigma} must be a finite float >= 0")
    seed = check_seed(seed, philox.draw_seed)
    check_int("seed", seed, 0, philox.MAX_SEED)
    return length, float(sigma), seed


def perturbed_topk(
    scores: Tensor,
    k: int,
    *,
    num_samples: int = 500,
    sigma: float = 0.1,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Perturbed-maximum top-k indicators (STTS eq. 7, gradient eq. 8; Berthet et al. 2020).

    Args:
        scores: (B, L) (or (*G, L)) floating scores, e.g. the min-max normalised scorer output (eq. 3).
        k: number of items selected, 1 <= k <= L.
        num_samples: n, the number of Gaussian perturbations averaged (STTS: 500).
        sigma: noise scale >= 0; 0 gives the hard top-k and a zero gradient.
        seed: key of the Philox noise stream; None draws one from torch's default generator (so
            torch.manual_seed makes runs repeatable). Pass it explicitly under torch.compile.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        (B, k, L) (or (*G, k, L)) indicators in scores' dtype: entry [i, l] is the fraction of
        samples in which item l is the i-th selected item in input order. Rows sum to 1.

    Contract: B = 0 gives an empty result. Each sample ranks s + sigma Z larger first, NaN after
    every number, ties to the lower position, so a NaN score is never selected while numbers remain.
    ValueError/TypeError for bad arguments; seed=None under torch.compile and double backward raise
    RuntimeError.
    """
    length, sigma, seed = _check_common(scores, k, num_samples, sigma, seed)
    impl = resolve("perturbed_topk", impl, scores.device, PERTURBED_TOPK, PERTURBED_TOPK_BACKWARD)
    flat = scores.reshape(-1, length)
    out = _perturbed_topk(flat, k, num_samples, sigma, seed, impl)
    return out.reshape(*scores.shape[:-1], k, length)


def perturbed_topk_select(
    x: Tensor,
    scores: Tensor,
    k: int,
    *,
    num_samples: int = 500,
    sigma: float = 0.1,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Differentiable selection of k of L rows: Y_sigma^T x (STTS eq. 9 with eq. 7).

    Args:
        x: (B, L, D) items (for frames: (B, T, N*C)).
        scores: (B, L) their scores; same dtype and device as x.
        k, num_samples, sigma, seed, impl: as perturbed_topk.

    Returns:
        (B, k, D): row i is the indicator-weighted average of x for the i-th selected slot.
        Gradients flow to x (indicators^T grad) and to scores (eq. 8 applied to grad x^T, which
        is only evaluated on the indicators' support). Only the (B, k, L) indicator matrix is
        materialised, never per-sample noise or one-hots; the CPU products skip its zeros.
        A zero indicator never reads its row of x: non-finite unselected rows cannot reach the output.
    """
    check_tensor("x", x, ndim=3, floating=True)
    check_tensor("scores", scores, ndim=2, floating=True, like=x, shape=(x.shape[0], x.shape[1]))
    if scores.dtype != x.dtype:
        raise TypeError(f"scores must have the dtype of x ({x.dtype}), got {scores.dtype}")
    length, sigma, seed = _check_common(scores, k, num_samples, sigma, seed)
    impl = resolve("perturbed_topk_select", impl, x.device, PERTURBED_TOPK, PERTURBED_TOPK_BACKWARD,
                   INDICATOR_MATMUL, INDICATOR_MATMUL_BACKWARD)
    indicators = _perturbed_topk(scores, k, num_samples, sigma, seed, impl)
    return _indicator_matmul(indicators, x, impl)
