"""Hard top-k gather, pure PyTorch (STTS eq. 4 with the slicing of hard inference; MIST eq. 5 Top_j).

The k highest scores of each group, their rows of x gathered. Ties go to the lower index.
"""

from __future__ import annotations

import torch


def topk_indices(scores: torch.Tensor, k: int, sorted_by_index: bool) -> torch.Tensor:
    """(B, N) scores -> (B, k) int64 positions of the k largest, ties to the lower position.

    sorted_by_index: ascending positions (STTS: "indices sorted to preserve the order of the input
    sequence"); otherwise by descending score.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
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
