"""`frame_select`: STTS §3.3 temporal selection of k whole frames, hard or perturbed.

    frame_scores = scorer(x.mean(2))                                 # (B, T) from frame-pooled tokens
    z = vidsel.ops.frame_select(x, frame_scores, k=4, mode="perturbed")   # (B, 4, N, D)

A frame is one row of (N * D) features (STTS eq. 9 reshapes x to (M, N x C)), so the hard mode is
topk_gather over the frame axis and the perturbed mode is Y_sigma^T x with Y_sigma from
perturbed_topk (eq. 7); both keep the selected frames in temporal order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidsel.ops._dispatch import resolve
from vidsel.ops._validation import check_choice, check_int, check_tensor
from vidsel.ops.perturbed_topk import (
    INDICATOR_MATMUL,
    INDICATOR_MATMUL_BACKWARD,
    PERTURBED_TOPK,
    PERTURBED_TOPK_BACKWARD,
    _indicator_matmul,
    perturbed_topk,
)
from vidsel.ops.topk_gather import TOPK_GATHER, TOPK_GATHER_BACKWARD, topk_gather

MODES = ("hard", "perturbed")


def frame_select(
    x: Tensor,
    scores: Tensor,
    k: int,
    *,
    mode: str = "hard",
    num_samples: int = 500,
    sigma: float = 0.1,
    seed: int | None = None,
    impl: str = "auto",
) -> Tensor:
    """Keeps k of the T frames of every clip (STTS §3.3 temporal selection, eq. 9).

    Args:
        x: (B, T, N, D) tokens, N per frame.
        scores: (B, T) floating frame scores, finite.
        k: frames kept, 1 <= k <= T.
        mode: "hard" — the k best frames (ties to the earlier frame), gradient to x only (STTS
            inference). "perturbed" — row i is the perturbed-maximum indicator-weighted average of
            the frames for the i-th selected slot (eq. 7), differentiable w.r.t. x and scores (eq. 8).
        num_samples, sigma, seed: of perturbed_topk (perturbed mode only; ignored when hard).
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        (B, k, N, D) frames in temporal order, x's dtype. A frame no slot selects (hard: not among
        the k best; perturbed: a zero indicator in every slot) is never read, not even a NaN in it.
    """
    check_tensor("x", x, ndim=4, floating=True)
    check_tensor("scores", scores, ndim=2, floating=True, like=x, shape=tuple(x.shape[:2]))
    check_choice("mode", mode, MODES)
    batch, frames, tokens, dim = x.shape
    check_int("k", k, 1, frames)
    impl = resolve("frame_select", impl, x.device, TOPK_GATHER, TOPK_GATHER_BACKWARD, PERTURBED_TOPK,
                   PERTURBED_TOPK_BACKWARD, INDICATOR_MATMUL, INDICATOR_MATMUL_BACKWARD)
    rows = x.reshape(batch, frames, tokens * dim)
    if mode == "hard":
        selected, _ = topk_gather(rows, scores, k, sorted_by_index=True, impl=impl)
    else:
        indicators = perturbed_topk(scores, k, num_samples=num_samples, sigma=sigma, seed=seed, impl=impl)
        # the zero-weight-safe product of perturbed_topk_select: a frame no slot selects (indicator 0)
        # is never read, so a NaN or inf in it cannot reach the output through 0 * NaN
        selected = _indicator_matmul(indicators.to(x.dtype).contiguous(), rows, impl)
    return selected.reshape(batch, k, tokens, dim)
