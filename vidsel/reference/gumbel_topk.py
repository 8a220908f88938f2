"""Pure-PyTorch reference of the Gumbel-softmax top-k of MIST (§3.2 segment selection, Appendix A).

k draws from softmax(logits) with the Gumbel-softmax trick (Jang et al. 2017). Draw t uses the
Gumbel noise g_t of the shared Philox stream (vidsel/reference/philox.py, STREAM_GUMBEL_TOPK,
counter (l div 4, draw t, batch row)):

    soft_t = softmax((logits + g_t) / tau)         (L,)   over the items still allowed
    hard_t = one_hot(argmax(logits + g_t))          ties: lower position, NaN after every number

with replacement (MIST default) every draw sees all items; without replacement (Appendix A, "after
each selection, the probabilities of selected segments on next round sampling are set to 0") the
items hard-selected by earlier draws are masked out of later draws. Output row t of (B, k, L) is
hard_t (hard=True, straight-through: the gradient is that of soft_t) or soft_t. Rows keep draw order.

Backward of one draw (softmax Jacobian): grad_logits += (soft_t * (G_t - <G_t, soft_t>)) / tau.
"""

from __future__ import annotations

import torch

from vidsel.reference import philox
from vidsel.reference.topk_gather import ranking


def gumbel_draws(logits: torch.Tensor, k: int, tau: float, replacement: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) logits -> (soft, hard), each (B, k, L) float64."""
    batch, length = logits.shape
    noise = philox.gumbel(seed, batch, k, length, philox.STREAM_GUMBEL_TOPK, logits.device)
    perturbed = logits.to(torch.float64).unsqueeze(1) + noise  # (B, k, L)
    if replacement:
        return torch.softmax(perturbed / tau, dim=-1), _one_hot_best(perturbed)
    allowed = torch.ones(batch, length, dtype=torch.bool, device=logits.device)
    soft, hard = [], []
    for t in range(k):
        masked = perturbed[:, t].masked_fill(~allowed, float("-inf"))
        soft.append(torch.softmax(masked / tau, dim=-1))
        hard.append(_one_hot_best(perturbed[:, t], allowed))
        allowed &= hard[-1] == 0
    return torch.stack(soft, 1), torch.stack(hard, 1)


def _one_hot_best(values: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot of the best allowed item along the last axis (first maximum, NaN last), float64."""
    first = ranking(values, allowed)[..., 0]
    return torch.nn.functional.one_hot(first, values.shape[-1]).to(torch.float64)


def gumbel_topk(logits: torch.Tensor, k: int, tau: float, hard: bool, replacement: bool, seed: int) -> torch.Tensor:
    """(B, L) logits -> (B, k, L) one-hot (hard) or soft Gumbel-softmax draws, logits' dtype."""
    soft, one_hot = gumbel_draws(logits, k, tau, replacement, seed)
    return (one_hot if hard else soft).to(logits.dtype)


def gumbel_topk_backward(
    grad: torch.Tensor, logits: torch.Tensor, k: int, tau: float, replacement: bool, seed: int
) -> torch.Tensor:
    """(B, k, L) grad -> (B, L): the soft-draw gradient (also the straight-through one for hard=True)."""
    soft, _ = gumbel_draws(logits, k, tau, replacement, seed)
    g = grad.to(torch.float64)
    inner = (g * soft).sum(-1, keepdim=True)
    return (soft * (g - inner)).sum(1).div(tau).to(logits.dtype)
