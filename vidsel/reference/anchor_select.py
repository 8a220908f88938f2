"""Anchor-based spatial selection, pure PyTorch (STTS §3.3). The ground truth.

* anchor scores: the score map of a frame is split into overlapping anchors of size (h, w) with
  stride (sh, sw), G = ((H - h) / sh + 1) * ((W - w) / sw + 1); each anchor's score is the average
  of the scores it covers.
* anchor gather: the indicator-weighted sum of the G anchor windows, out = sum_g Y_g x[window g]
  (STTS eq. 9 with the anchors as the selected items). A one-hot Y is the hard top-1 anchor.

Anchor sums are accumulated in float64, row-major from 0.0, in every backend, so all backends see
bit-identical anchor scores and pick the same anchor.
"""

from __future__ import annotations

import torch

from vidsel.reference.topk_gather import ranking


def anchor_grid(height: int, width: int, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int):
    """Number of anchor rows and columns: (H - h) // sh + 1, (W - w) // sw + 1 (STTS §3.3)."""
    return (height - anchor_h) // stride_h + 1, (width - anchor_w) // stride_w + 1


def anchor_scores(scores: torch.Tensor, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int) -> torch.Tensor:
    """(B, H, W) score maps -> (B, G) mean score of every anchor, row-major over the anchor grid."""
    windows = scores.double().unfold(1, anchor_h, stride_h).unfold(2, anchor_w, stride_w)  # a view
    # Row-major running sum from 0.0, the order of every kernel: float64 sums of float32 scores are not
    # exact when magnitudes differ widely, so a different (e.g. pairwise) order gives different bits.
    sums = torch.zeros(windows.shape[:3], dtype=torch.float64, device=scores.device)
    for dy in range(anchor_h):
        for dx in range(anchor_w):
            sums = sums + windows[..., dy, dx]
    return (sums / (anchor_h * anchor_w)).flatten(1).to(scores.dtype)


def anchor_offsets(height, width, anchor_h, anchor_w, stride_h, stride_w, device):
    """(G,) top-left row and column of every anchor."""
    rows, cols = anchor_grid(height, width, anchor_h, anchor_w, stride_h, stride_w)
    top = torch.arange(rows, device=device).repeat_interleave(cols) * stride_h
    left = torch.arange(cols, device=device).repeat(rows) * stride_w
    return top, left


def anchor_gather(
    x: torch.Tensor, weights: torch.Tensor, anchor_h: int, anchor_w: int, stride_h: int, stride_w: int
) -> torch.Tensor:
    """x (B, H, W, D), weights (B, G) -> (B, h, w, D) = sum_g weights[b, g] * x[b, window g]."""
    batch, height, width, dim = x.shape
    top, left = anchor_offsets(height, width, anchor_h, anchor_w, stride_h, stride_w, x.device)
    acc = _accumulation_dtype(x.dtype)
    out = torch.zeros(batch, anchor_h, anchor_w, dim, dtype=acc, device=x.device)
    for g in range(top.shape[0]):
        window = x[:, top[g] : top[g] + anchor_h, left[g] : left[g] + anchor_w]
        w = weights[:, g, None, None, None].to(acc)
        out += torch.where(w != 0, w * window.to(acc), 0.0)  # a zero weight ignores even NaN pixels
    return out.to(x.dtype)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def hard_anchor_index(scores: torch.Tensor, anchor_h, anchor_w, stride_h, stride_w) -> torch.Tensor:
    """(B, H, W) -> (B,) index of the best anchor (top-1 of STTS §3.3), ties to the lower index."""
    return ranking(anchor_scores(scores, anchor_h, anchor_w, stride_h, stride_w))[:, 0]


def anchor_scores_backward(grad, height, width, anchor_h, anchor_w, stride_h, stride_w) -> torch.Tensor:
    """Adjoint of anchor_scores: grad (B, G) -> (B, H, W), each anchor adds grad / (h w) to its window."""
    top, left = anchor_offsets(height, width, anchor_h, anchor_w, stride_h, stride_w, grad.device)
    out = torch.zeros(grad.shape[0], height, width, dtype=torch.float64, device=grad.device)
    share = grad.double() / (anchor_h * anchor_w)
    for g in range(top.shape[0]):
        out[:, top[g] : top[g] + anchor_h, left[g] : left[g] + anchor_w] += share[:, g, None, None]
    return out.to(grad.dtype)


def anchor_gather_backward(grad, x, weights, stride_h, stride_w) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of anchor_gather: grad (B, h, w, D) -> grad_x (B, H, W, D), grad_weights (B, G)."""
    batch, height, width, dim = x.shape
    anchor_h, anchor_w = grad.shape[1:3]
    top, left = anchor_offsets(height, width, anchor_h, anchor_w, stride_h, stride_w, x.device)
    acc = _accumulation_dtype(x.dtype)
    grad_x = torch.zeros(x.shape, dtype=acc, device=x.device)
    grad_w = torch.zeros(weights.shape, dtype=torch.float64, device=x.device)
    for g in range(top.shape[0]):
        rows, cols = slice(top[g], top[g] + anchor_h), slice(left[g], left[g] + anchor_w)
        grad_x[:, rows, cols] += weights[:, g, None, None, None].to(acc) * grad.to(acc)
        grad_w[:, g] = (grad.double() * x[:, rows, cols].double()).sum(dim=(1, 2, 3))
    return grad_x.to(x.dtype), grad_w.to(weights.dtype)
