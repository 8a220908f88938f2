"""`anchor_select`: STTS §3.3 anchor-based spatial selection, hard or perturbed.

The score map of every frame is split into overlapping anchors of size (h, w) with stride (sh, sw),
G = ((H - h) // sh + 1) * ((W - w) // sw + 1); each anchor's score is the mean of its scores; the
top-1 anchor is selected and its (h, w) window of x returned::

    scores = scorer(x).view(B, T, 14, 14)
    z = vidsel.ops.anchor_select(x, scores, anchor=10, stride=2, mode="perturbed")  # (B, T, 10, 10, D)

Three custom ops, none of which materialises the (B*T, G, h, w, D) unfold of the STTS code:
  anchor_scores  (F, H, W) -> (F, G)             means from a summed-area table
  anchor_gather  (F, H, W, D), w (F, G) -> (F, h, w, D) = sum_g w_g x[window g]   (eq. 9 over anchors)
  and their backward ops. Hard mode uses a one-hot w (the kernels skip zero weights: a copy);
  perturbed mode uses w = perturbed_topk(anchor scores, k=1) (eq. 7, gradient eq. 8).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import OpBackends, resolve, run_backend
from vidsel.ops._validation import check_choice, check_tensor, refuse_double_backward
from vidsel.ops.perturbed_topk import PERTURBED_TOPK, PERTURBED_TOPK_BACKWARD, perturbed_topk
from vidsel.reference import anchor_select as reference
from vidsel.reference.topk_gather import ranking

MODES = ("hard", "perturbed")


def _reference_anchor_gather_backward(grad, x, weights, stride_h, stride_w, need_grad_x, need_grad_weights):
    grad_x, grad_w = reference.anchor_gather_backward(grad, x, weights, stride_h, stride_w)
    return (grad_x if need_grad_x else x.new_empty(0)), (grad_w if need_grad_weights else weights.new_empty(0))


ANCHOR_SCORES = OpBackends("anchor_scores", reference=reference.anchor_scores, triton="anchor_select")
ANCHOR_SCORES_BACKWARD = OpBackends("anchor_scores_backward", reference=reference.anchor_scores_backward,
                                    triton="anchor_select")
ANCHOR_GATHER = OpBackends("anchor_gather", reference=reference.anchor_gather, triton="anchor_select")
ANCHOR_GATHER_BACKWARD = OpBackends("anchor_gather_backward", reference=_reference_anchor_gather_backward,
                                    triton="anchor_select")


@torch.library.custom_op("vidsel::anchor_scores", mutates_args=())
def _anchor_scores(scores: Tensor, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int, impl: str) -> Tensor:
    return run_backend(ANCHOR_SCORES, impl, scores, anchor_h, anchor_w, stride_h, stride_w)


@torch.library.custom_op("vidsel::anchor_scores_backward", mutates_args=())
def _anchor_scores_backward(
    grad: Tensor, height: int, width: int, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int, impl: str
) -> Tensor:
    """(F, G) -> (F, H, W): every anchor spreads grad / (h w) over its window."""
    return run_backend(ANCHOR_SCORES_BACKWARD, impl, grad, height, width, anchor_h, anchor_w, stride_h, stride_w)


@torch.library.custom_op("vidsel::anchor_gather", mutates_args=())
def _anchor_gather(
    x: Tensor, weights: Tensor, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int, impl: str
) -> Tensor:
    return run_backend(ANCHOR_GATHER, impl, x, weights, anchor_h, anchor_w, stride_h, stride_w)


@torch.library.custom_op("vidsel::anchor_gather_backward", mutates_args=())
def _anchor_gather_backward(
    grad: Tensor, x: Tensor, weights: Tensor, stride_h: int, stride_w: int, need_grad_x: bool,
    need_grad_weights: bool, impl: str,
) -> tuple[Tensor, Tensor]:
    """grad (F, h, w, D) -> grad_x (F, H, W, D), grad_weights (F, G); an unneeded one is empty (0,)."""
    return tuple(run_backend(ANCHOR_GATHER_BACKWARD, impl, grad, x, weights, stride_h, stride_w, need_grad_x,
                             need_grad_weights))


@_anchor_scores.register_fake
def _(scores, anchor_h, anchor_w, stride_h, stride_w, impl):
    rows, cols = reference.anchor_grid(scores.shape[1], scores.shape[2], anchor_h, anchor_w, stride_h, stride_w)
    return scores.new_empty(scores.shape[0], rows * cols)


@_anchor_scores_backward.register_fake
def _(grad, height, width, anchor_h, anchor_w, stride_h, stride_w, impl):
    return grad.new_empty(grad.shape[0], height, width)


@_anchor_gather.register_fake
def _(x, weights, anchor_h, anchor_w, stride_h, stride_w, impl):
    return x.new_empty(x.shape[0], anchor_h, anchor_w, x.shape[3])


@_anchor_gather_backward.register_fake
def _(grad, x, weights, stride_h, stride_w, need_grad_x, need_grad_weights, impl):
    grad_x = x.new_empty(x.shape if need_grad_x else (0,))
    return grad_x, weights.new_empty(weights.shape if need_grad_weights else (0,))


def _scores_setup(ctx, inputs, output):
    scores, *geometry, impl = inputs
    ctx.size, ctx.geometry, ctx.impl = scores.shape[1:], geometry, impl


def _scores_backward(ctx, grad):
    grad_scores = _anchor_scores_backward(grad.contiguous(), *ctx.size, *ctx.geometry, ctx.impl)
    return grad_scores, None, None, None, None, None


def _scores_backward_setup(ctx, inputs, output):
    _, _, _, *geometry, impl = inputs
    ctx.geometry, ctx.impl = geometry, impl


def _scores_backward_backward(ctx, grad):
    """anchor_scores_backward is the adjoint of the (linear) anchor mean, so its adjoint is the mean."""
    return _anchor_scores(grad.contiguous(), *ctx.geometry, ctx.impl), *([None] * 7)


def _gather_setup(ctx, inputs, output):
    x, weights, _, _, stride_h, stride_w, impl = inputs
    ctx.save_for_backward(x, weights)
    ctx.stride, ctx.impl = (stride_h, stride_w), impl


def _gather_backward(ctx, grad):
    x, weights = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_w):
        return (None,) * 7
    grad_x, grad_w = _anchor_gather_backward(grad.contiguous(), x, weights, *ctx.stride, need_x, need_w, ctx.impl)
    return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None, None, None


_anchor_scores.register_autograd(_scores_backward, setup_context=_scores_setup)
_anchor_scores_backward.register_autograd(_scores_backward_backward, setup_context=_scores_backward_setup)
_anchor_gather.register_autograd(_gather_backward, setup_context=_gather_setup)
refuse_double_backward(_anchor_gather_backward, "anchor_select")


@register_flop_formula(torch.ops.vidsel.anchor_scores)
def _anchor_scores_flops(scores_shape, anchor_h, anchor_w, stride_h, stride_w, impl, *args, **kwargs) -> int:
    """One add per window element of every anchor (direct window sums), plus the division."""
    frames, height, width = scores_shape
    rows, cols = reference.anchor_grid(height, width, anchor_h, anchor_w, stride_h, stride_w)
    return frames * rows * cols * (anchor_h * anchor_w + 1)


@register_flop_formula(torch.ops.vidsel.anchor_scores_backward)
def _anchor_scores_backward_flops(grad_shape, height, width, *args, **kwargs) -> int:
    return grad_shape[0] * (4 * grad_shape[1] + 3 * height * width)


@register_flop_formula(torch.ops.vidsel.anchor_gather)
def _anchor_gather_flops(x_shape, weights_shape, anchor_h, anchor_w, *args, **kwargs) -> int:
    """One multiply-add per anchor and window element (upper bound: zero weights are skipped)."""
    frames, anchors = weights_shape
    return 2 * frames * anchors * anchor_h * anchor_w * x_shape[3]


@register_flop_formula(torch.ops.vidsel.anchor_gather_backward)
def _anchor_gather_backward_flops(grad_shape, x_shape, weights_shape, stride_h, stride_w, need_x, need_w, *a, **kw):
    frames, anchor_h, anchor_w, dim = grad_shape
    per_pass = 2 * frames * weights_shape[1] * anchor_h * anchor_w * dim
    return per_pass * (int(need_x) + int(need_w))


def _pair(name: str, value, low: int) -> tuple[int, int]:
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    for item in pair:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if item < low:
            raise ValueError(f"{name}={value!r} must be >= {low}")
    return pair


def anchor_scores(scores: Tensor, anchor, stride=None, *, impl: str = "auto") -> Tensor:
    """Mean score of every anchor (STTS §3.3): scores (*F, H, W) -> (*F, G), row-major anchor grid.

    Differentiable (the gradient spreads evenly over each anchor's window). See anchor_select for
    anchor and stride. Every backend sums each window directly in float64 (no prefix-sum table, whose
    differences lose small windows next to finfo.min-masked or infinite scores); F = 0 is empty; a
    non-finite score reaches only the anchors covering it.
    """
    check_tensor("scores", scores, floating=True)
    if scores.dim() < 2:
        raise ValueError(f"scores must have shape (*F, H, W), got {tuple(scores.shape)}")
    height, width = scores.shape[-2:]
    (ah, aw), (sh, sw) = _geometry(anchor, stride, height, width)
    impl = resolve("anchor_scores", impl, scores.device, ANCHOR_SCORES, ANCHOR_SCORES_BACKWARD)
    out = _anchor_scores(scores.reshape(-1, height, width), ah, aw, sh, sw, impl)
    return out.reshape(*scores.shape[:-2], out.shape[-1])


def _geometry(anchor, stride, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    ah, aw = _pair("anchor", anchor, 1)
    if ah > height or aw > width:
        raise ValueError(f"anchor=({ah}, {aw}) is larger than the ({height}, {width}) score map")
    sh, sw = _pair("stride", 1 if stride is None else stride, 1)
    return (ah, aw), (sh, sw)


def anchor_select(
    x: Tensor,
    scores: Tensor,
    anchor,
    stride=None,
    *,
    mode: str = "hard",
    num_samples: int = 500,
    sigma: float = 0.1,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Selects one (h, w) anchor window of every frame (STTS §3.3 anchor-based spatial selection).

    Args:
        x: (B, T, H, W, D) tokens of each frame on their patch grid.
        scores: (B, T, H, W) floating token scores (the scorer output, eq. 3), finite.
        anchor: h or (h, w), the anchor size; 1 <= h <= H, 1 <= w <= W.
        stride: s or (sh, sw) >= 1 between anchors (STTS's alpha); None means 1 (every position,
            G = (H - h + 1)(W - w + 1)). Anchors that would cross the border are not formed.
        mode: "hard" — the anchor of highest mean score, ties to the lower row-major index (STTS
            inference; no gradient to scores). "perturbed" — the indicator-weighted sum of all G
            windows with indicators = perturbed_topk(anchor scores, k=1) (eq. 7), differentiable
            w.r.t. x and scores (eq. 8); for training.
        num_samples, sigma, seed: of perturbed_topk (perturbed mode only; ignored when hard).
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda" (also passed to perturbed_topk).

    Returns:
        (B, T, h, w, D) in x's dtype.

    Contract: hard picks the best anchor mean, NaN after every number, ties to the lower index;
    the output is exactly the picked window (other windows, even NaN ones, are never read).
    Double backward raises RuntimeError.
    """
    check_tensor("x", x, ndim=5, floating=True)
    check_tensor("scores", scores, ndim=4, floating=True, like=x, shape=tuple(x.shape[:4]))
    check_choice("mode", mode, MODES)
    batch, frames, height, width, dim = x.shape
    (ah, aw), (sh, sw) = _geometry(anchor, stride, height, width)
    impl = resolve("anchor_select", impl, x.device, ANCHOR_SCORES, ANCHOR_GATHER, ANCHOR_SCORES_BACKWARD,
                   ANCHOR_GATHER_BACKWARD, PERTURBED_TOPK, PERTURBED_TOPK_BACKWARD)
    flat_x = x.reshape(batch * frames, height, width, dim)
    flat_scores = scores.reshape(batch * frames, height, width)
    if mode == "hard":
        # float64 means summed in one fixed order on every backend, so every backend picks the same anchor.
        means = _anchor_scores(flat_scores.detach().double(), ah, aw, sh, sw, impl)
        # a scatter, not one_hot: one_hot's class count is a Python int, which under torch.compile
        # would specialise the graph on the number of anchors G
        best = ranking(means)[:, :1]
        weights = torch.zeros(means.shape, dtype=x.dtype, device=x.device).scatter(1, best, 1.0)
    else:
        means = _anchor_scores(flat_scores, ah, aw, sh, sw, impl)
        weights = perturbed_topk(means, 1, num_samples=num_samples, sigma=sigma, seed=seed, impl=impl)[:, 0]
    out = _anchor_gather(flat_x, weights.contiguous(), ah, aw, sh, sw, impl)
    return out.reshape(batch, frames, ah, aw, dim)
