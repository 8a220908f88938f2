"""Pure-PyTorch reference of the perturbed-maximum differentiable top-k (STTS §3.2, eq. 5-8;
Berthet et al. 2020, "Learning with differentiable perturbed optimizers").

For scores s (L,) the hard top-k (eq. 4-6) is the stack Y in {0,1}^(k x L) of one-hot rows of the
k largest entries sorted by position (row i = the i-th selected item in input order). With noise
Z_1..Z_n ~ N(0, I_L) drawn from the shared Philox stream (vidsel/reference/philox.py, stream
STREAM_PERTURBED_TOPK, counter (l div 4, sample, batch row)):

    forward  (eq. 7)  P = 1/n sum_s Y(s + sigma Z_s)                       (k, L)
    backward (eq. 8)  dP[i, l]/ds[m] = 1/(n sigma) sum_s Y_s[i, l] Z_s[m]
                      grad_s[m] = 1/(n sigma) sum_s g_s Z_s[m],  g_s = <G, Y_s> = sum_i G[i, y_s,i]

Ties (only possible with sigma = 0 or repeated scores) go to the lower position. sigma = 0 is the
hard top-k with zero gradient (STTS §3.2, end). This reference builds the (B, n, L) noise and the
(B, n, k) indices; the fused backends never do.
"""

from __future__ import annotations

import torch

from vidsel.reference import philox
from vidsel.reference.topk_gather import ranking


def perturbed_values(scores: torch.Tensor, num_samples: int, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) scores -> (perturbed scores s + sigma Z, Z), both (B, n, L) float64."""
    batch, length = scores.shape
    noise = philox.normal(seed, batch, num_samples, length, philox.STREAM_PERTURBED_TOPK, scores.device)
    return scores.to(torch.float64).unsqueeze(1) + sigma * noise, noise


def topk_in_input_order(values: torch.Tensor, k: int) -> torch.Tensor:
    """(..., L) -> (..., k) int64 positions of the k largest (ties: lower position, NaN last), ascending."""
    order = ranking(values)[..., :k]
    return torch.sort(order, dim=-1).values


def perturbed_topk(scores: torch.Tensor, k: int, num_samples: int, sigma: float, seed: int) -> torch.Tensor:
    """Eq. 7: (B, L) scores -> (B, k, L) indicators, the mean over samples of the one-hot top-k."""
    values, _ = perturbed_values(scores, num_samples, sigma, seed)
    index = topk_in_input_order(values, k)  # (B, n, k)
    one_hot = torch.nn.functional.one_hot(index, scores.shape[1])  # (B, n, k, L)
    counts = one_hot.sum(1)
    return (counts.to(torch.float64) / num_samples).to(scores.dtype)


def perturbed_topk_backward(
    grad: torch.Tensor, scores: torch.Tensor, k: int, num_samples: int, sigma: float, seed: int
) -> torch.Tensor:
    """Eq. 8 contracted with grad (B, k, L): grad_s = E[<G, Y> Z] / sigma, shape (B, L)."""
    if sigma == 0:
        return torch.zeros_like(scores)
    values, noise = perturbed_values(scores, num_samples, sigma, seed)
    index = topk_in_input_order(values, k)  # (B, n, k)
    picked = grad.to(torch.float64).unsqueeze(1).expand(-1, num_samples, -1, -1)
    per_sample = picked.gather(3, index.unsqueeze(-1)).squeeze(-1).sum(-1)  # g_s: (B, n)
    grad_scores = torch.einsum("bn,bnl->bl", per_sample, noise) / (num_samples * sigma)
    return grad_scores.to(scores.dtype)


def indicator_matmul(indicators: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 9: (B, k, L) indicators, (B, L, D) x -> Y^T x of shape (B, k, D), in x's dtype.

    A zero indicator never contributes, not even a NaN or inf of its row of x (0 * NaN).
    """
    return zero_weight_safe_bmm(indicators.to(x.dtype), x)


def zero_weight_safe_bmm(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """bmm(weights (B, k, L), x (B, L, D)) in which weights[b, i, l] == 0 ignores x[b, l] entirely.

    The product runs on x with its non-finite entries zeroed; those entries are then added back for
    the non-zero weights only (rare: the loop runs over non-finite rows of x).
    """
    finite = torch.isfinite(x)
    out = torch.bmm(weights, torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)))
    for b, l in (~finite).any(-1).nonzero().tolist():
        w = weights[b, :, l, None]
        bad = torch.where(finite[b, l], torch.zeros_like(x[b, l]), x[b, l])
        out[b] += torch.where(w != 0, w * bad, torch.zeros_like(out[b]))
    return out


def indicator_matmul_backward(
    grad: torch.Tensor, indicators: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x (B, L, D), grad_indicators (B, k, L)); the latter restricted to the support of the
    indicators (zero where they are zero) — all the perturbed backward (eq. 8) ever reads."""
    weights = indicators.to(x.dtype)
    grad_x = torch.bmm(weights.transpose(1, 2), grad)
    grad_indicators = torch.bmm(grad, x.transpose(1, 2)) * (indicators != 0)
    return grad_x, grad_indicators.to(indicators.dtype)
