"""Hard top-k gather, pure PyTorch (STTS eq. 4 with the slicing of hard inference; MIST eq. 5 Top_j).

The k highest scores of each group, their rows of x gathered. Ties go to the lower index, NaN scores
rank after every number.
"""

from __future__ import annotations

import torch


def ranking(values: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Positions along the last axis, best first, by the ranking rule of every selection op.

    Larger value first; NaN after every number (after -inf too); equal values, and NaNs among
    themselves, by lower position. Positions where `allowed` is False come after all others.
    """
    nan = torch.isnan(values)
    order = torch.sort(values.masked_fill(nan, float("-inf")), dim=-1, descending=True, stable=True).indices
    rank_class = nan.to(torch.int8) if allowed is None else nan.to(torch.int8) + 2 * (~allowed).to(torch.int8)
    # a stable sort by class keeps the value order inside each class
    by_class = torch.sort(rank_class.gather(-1, order), dim=-1, stable=True).indices
    return order.gather(-1, by_class)


def topk_indices(scores: torch.Tensor, k: int, sorted_by_index: bool) -> torch.Tensor:
    """(B, N) scores -> (B, k) int64 positions of the k best by `ranking` (NaN last, ties lower position).

    sorted_by_index: ascending positions (STTS: "indices sorted to preserve the order of the input
    sequence"); otherwise by rank.
    """
    order = ranking(scores)[:, :k]
    return torch.sort(order, dim=1).values if sorted_by_index else order


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, k) -> x[b, index[b, j]] of shape (B, k, D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def topk_gather_backward(grad: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Adjoint of gather_rows for distinct indices: (B, k, D) -> (B, n, D), zero rows elsewhere."""
    out = grad.new_zeros(grad.shape[0], n, grad.shape[2])
    return out.scatter(1, index.unsqueeze(-1).expand(-1, -1, grad.shape[2]), grad)


def topk_gather(x: torch.Tensor, scores: torch.Tensor, k: int, sorted_by_index: bool):
    """x (B, N, D), scores (B, N) -> (selected (B, k, D), index (B, k))."""
    index = topk_indices(scores, k, sorted_by_index)
    return gather_rows(x, index), index
