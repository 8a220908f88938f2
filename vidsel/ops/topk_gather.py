"""`topk_gather`: hard top-k over the token axis fused with the row gather.

STTS eq. 4 at inference ("a single Top-K operation ... implemented with slicing the tensor") and
MIST eq. 5 (the Top_j patches of each frame)::

    scores = scorer(x)                                        # (B*T, N) per frame
    x_sel, index = vidsel.ops.topk_gather(x, scores, k=12)    # (B*T, 12, D), positions ascending

The backward scatters the gradient to the selected rows (zeros elsewhere); scores get no gradient
(the hard top-k is piecewise constant; train with perturbed_topk / gumbel_topk instead).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import OpBackends, resolve, run_backend
from vidsel.ops._validation import check_int, check_tensor
from vidsel.reference import topk_gather as reference


def _reference_topk_gather(x: Tensor, scores: Tensor, k: int, sorted_by_index: bool) -> tuple[Tensor, Tensor]:
    selected, index = reference.topk_gather(x, scores, k, sorted_by_index)
    return selected.contiguous(), index.contiguous()


TOPK_GATHER = OpBackends("topk_gather", reference=_reference_topk_gather, triton="topk_gather")
TOPK_GATHER_BACKWARD = OpBackends("topk_gather_backward", reference=reference.topk_gather_backward,
                                  triton="topk_gather")


@torch.library.custom_op("vidsel::topk_gather", mutates_args=())
def _topk_gather(x: Tensor, scores: Tensor, k: int, sorted_by_index: bool, impl: str) -> tuple[Tensor, Tensor]:
    return tuple(run_backend(TOPK_GATHER, impl, x, scores, k, sorted_by_index))


@torch.library.custom_op("vidsel::topk_gather_backward", mutates_args=())
def _topk_gather_backward(grad: Tensor, index: Tensor, n: int, impl: str) -> Tensor:
    """grad (B, k, D) rows written to their distinct positions index (B, k) of a zero (B, n, D)."""
    return run_backend(TOPK_GATHER_BACKWARD, impl, grad, index, n)


@_topk_gather.register_fake
def _(x, scores, k, sorted_by_index, impl):
    return x.new_empty(x.shape[0], k, x.shape[2]), x.new_empty(x.shape[0], k, dtype=torch.int64)


@_topk_gather_backward.register_fake
def _(grad, index, n, impl):
    return grad.new_empty(grad.shape[0], n, grad.shape[2])


def _setup(ctx, inputs, output):
    x, _, _, _, impl = inputs
    ctx.save_for_backward(output[1])
    ctx.n, ctx.impl = x.shape[1], impl


def _backward(ctx, grad_selected, grad_index):
    (index,) = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _topk_gather_backward(grad_selected.contiguous(), index, ctx.n, ctx.impl)
    return grad_x, None, None, None, None


def _backward_setup(ctx, inputs, output):
    _, index, _, impl = inputs
    ctx.save_for_backward(index)
    ctx.impl = impl


def _backward_backward(ctx, grad):
    """The scatter's adjoint is the gather of the same rows (the gather_rows op of token merging)."""
    from vidsel.ops.token_merging import _gather_rows

    (index,) = ctx.saved_tensors
    return _gather_rows(grad.contiguous(), index, None, ctx.impl), None, None, None


_topk_gather.register_autograd(_backward, setup_context=_setup)
_topk_gather_backward.register_autograd(_backward_backward, setup_context=_backward_setup)


@register_flop_formula(torch.ops.vidsel.topk_gather)
def _topk_gather_flops(x_shape, scores_shape, k, sorted_by_index, impl, *args, **kwargs) -> int:
    return 0  # selection is comparisons and the gather moves data: no multiply-adds


@register_flop_formula(torch.ops.vidsel.topk_gather_backward)
def _topk_gather_backward_flops(grad_shape, index_shape, n, impl, *args, **kwargs) -> int:
    return 0  # a scatter of distinct rows: data movement only


def topk_gather(
    x: Tensor, scores: Tensor, k: int, *, sorted_by_index: bool = True, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The k highest-scoring rows of every group (STTS eq. 4 hard Top-K; MIST eq. 5 Top_j).

    Args:
        x: (*G, N, D) tokens; *G any number of group dims (e.g. B*T frames), possibly none.
        scores: (*G, N) floating scores; +-inf allowed (e.g. -inf to mask a token). Ranking: larger
            first, NaN after every number (so never chosen while numbers remain), then lower position.
        k: number of rows kept per group, 1 <= k <= N.
        sorted_by_index: True keeps the chosen rows in input order (STTS: "indices sorted to
            preserve the order of the input sequence"); False orders them by descending score.
            Equal scores are always broken in favour of the lower position.
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        selected (*G, k, D) rows of x, differentiable w.r.t. x (the gradient is scattered back to
        the chosen rows, zero elsewhere); index (*G, k) int64 positions in [0, N).
    """
    check_tensor("x", x, floating=True)
    check_tensor("scores", scores, floating=True, like=x)
    if x.dim() < 2:
        raise ValueError(f"x must have shape (*G, N, D), got {tuple(x.shape)}")
    if tuple(scores.shape) != tuple(x.shape[:-1]):
        expected = tuple(x.shape[:-1])
        raise ValueError(f"scores must have shape (*G, N) = {expected} to match x, got {tuple(scores.shape)}")
    if not isinstance(sorted_by_index, bool):
        raise TypeError(f"sorted_by_index must be a bool, got {type(sorted_by_index).__name__}")
    *group_shape, n, dim = x.shape
    check_int("k", k, 1, n)
    impl = resolve("topk_gather", impl, x.device, TOPK_GATHER, TOPK_GATHER_BACKWARD)
    groups = math.prod(group_shape)
    selected, index = _topk_gather(x.reshape(groups, n, dim), scores.reshape(groups, n), k, sorted_by_index, impl)
    return selected.reshape(*group_shape, k, dim), index.reshape(*group_shape, k)
