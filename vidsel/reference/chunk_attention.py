"""Block-causal chunk attention, pure PyTorch (Mirasol3B §3.3.1, eq. 8). The ground truth.

The sequence of N features is cut into T time chunks. Eq. 8 masks feature j for feature i (in chunk t)
unless j lies in a chunk <= t: attention is full inside a chunk and causal across chunks, which keeps
the Combiner (eq. 2, x_t = Combiner(u_1..u_t)) and the latent autoregressive model causal in time.
This reference builds the dense (Lq, Lk) mask and evaluates softmax(q k^T * scale + bias) v directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def chunk_layout(chunk_lens: Sequence[int], lq: int, device=None) -> tuple[Tensor, Tensor]:
    """Where each query's keys end and each key's queries start: the layout every backend reads.

    chunk_lens: positive chunk lengths summing to Lk. Queries are the last Lq of the Lk positions (a
    streaming prefill when Lq < Lk); query row i sits at position p = Lk - Lq + i.
    Returns key_end (Lq,) int64: row i sees keys [0, key_end[i]), the end of p's chunk (eq. 8), and
    first_row (Lk,) int64: the first query row that sees key j (rows i >= first_row[j] do).
    """
    # Built on the host with numpy: O(L) serial work, where torch's index ops would each open a parallel
    # region (milliseconds on a busy CPU, per call).
    lens = np.asarray(list(chunk_lens), dtype=np.int64)
    chunk_end = np.repeat(np.cumsum(lens), lens)  # (Lk,): end of each key's chunk
    offset = chunk_end.shape[0] - lq
    first_row = np.maximum(chunk_end - np.repeat(lens, lens) - offset, 0)
    key_end, first_row = torch.from_numpy(chunk_end[offset:].copy()), torch.from_numpy(first_row)
    if device is not None and torch.device(device).type == "cuda":
        # From pinned memory the copies are asynchronous; a pageable source would block the host.
        return key_end.pin_memory().to(device, non_blocking=True), first_row.pin_memory().to(device, non_blocking=True)
    return key_end.to(device), first_row.to(device)


def visibility_mask(key_end: Tensor, lk: int) -> Tensor:
    """(Lq, Lk) bool, True where query i may attend to key j: j < key_end[i]."""
    return torch.arange(lk, device=key_end.device)[None, :] < key_end[:, None]


def block_causal_mask(chunk_lens: Sequence[int], lq: int, device=None) -> Tensor:
    """(Lq, Lk) bool, True where query i may attend to key j (eq. 8): chunk(j) <= chunk(query i)."""
    key_end, _ = chunk_layout(chunk_lens, lq, device)
    return visibility_mask(key_end, sum(chunk_lens))


def chunk_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, key_end: Tensor, key_bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """q (B, H, Lq, Dh), k, v (B, H, Lk, Dh), key_end (Lq,) from chunk_layout, key_bias (B, Lk) or None.

    Returns out (B, H, Lq, Dh) and the logsumexp of each query's masked scores (B, H, Lq), both
    computed in float32 (float64 for float64 inputs); out is cast back to q's dtype.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.einsum("bhid,bhjd->bhij", q.to(compute), k.to(compute)) * scale
    if key_bias is not None:
        scores = scores + key_bias.to(compute)[:, None, None, :]
    scores = scores.masked_fill(~visibility_mask(key_end, k.shape[2]), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhij,bhjd->bhid", probs, v.to(compute))
    return out.to(q.dtype), lse


def chunk_causal_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, key_end: Tensor, key_bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of chunk_causal_attention w.r.t. q, k, v and key_bias (None without a bias).

    With P = softmax(S), S = q k^T * scale + bias: dV = P^T dO, dP = dO v^T,
    dS = P * (dP - rowsum(P * dP)), dq = dS k * scale, dk = dS^T q * scale, dbias_j = sum_{h,i} dS_ij.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q32, k32, v32, go = (t.to(compute) for t in (q, k, v, grad_out))
    _, lse = chunk_causal_attention(q, k, v, key_end, key_bias, scale)
    scores = torch.einsum("bhid,bhjd->bhij", q32, k32) * scale
    if key_bias is not None:
        scores = scores + key_bias.to(compute)[:, None, None, :]
    probs = torch.exp(scores.masked_fill(~visibility_mask(key_end, k.shape[2]), float("-inf")) - lse[..., None])
    grad_v = torch.einsum("bhij,bhid->bhjd", probs, go)
    grad_probs = torch.einsum("bhid,bhjd->bhij", go, v32)
    grad_scores = probs * (grad_probs - (probs * grad_probs).sum(-1, keepdim=True))
    grad_q = torch.einsum("bhij,bhjd->bhid", grad_scores, k32) * scale
    grad_k = torch.einsum("bhij,bhid->bhjd", grad_scores, q32) * scale
    grad_bias = grad_scores.sum((1, 2)).to(key_bias.dtype) if key_bias is not None else None
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_bias
