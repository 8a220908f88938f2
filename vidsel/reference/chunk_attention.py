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


def query_groups(key_end: Tensor) -> list[tuple[int, int, int]]:
    """(first query row, end query row, visible keys) of each run of queries sharing a chunk end.

    Every product below runs per group over exactly the keys the group sees, so a key a query cannot
    see never contributes to it, not even through 0 * NaN (eq. 8 is a causal contract, not a weight).
    """
    ends = key_end.tolist()
    groups, start = [], 0
    for row in range(1, len(ends) + 1):
        if row == len(ends) or ends[row] != ends[start]:
            groups.append((start, row, ends[start]))
            start = row
    return groups


def _group_scores(q: Tensor, k: Tensor, key_bias: Tensor | None, scale: float) -> Tensor:
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if key_bias is not None:
        scores = scores + key_bias[:, None, None, :]
    return scores


def chunk_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, key_end: Tensor, key_bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """q (B, H, Lq, Dh), k, v (B, H, Lk, Dh), key_end (Lq,) from chunk_layout, key_bias (B, Lk) or None.

    Returns out (B, H, Lq, Dh) and the logsumexp of each query's masked scores (B, H, Lq), both
    computed in float32 (float64 for float64 inputs); out is cast back to q's dtype.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q32, k32, v32 = (t.to(compute) for t in (q, k, v))
    bias = key_bias.to(compute) if key_bias is not None else None
    out = q32.new_zeros(q.shape[:3] + (v.shape[-1],))
    lse = q32.new_full(q.shape[:3], float("-inf"))
    for r0, r1, end in query_groups(key_end):
        scores = _group_scores(q32[:, :, r0:r1], k32[:, :, :end], bias[:, :end] if bias is not None else None, scale)
        lse[:, :, r0:r1] = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse[:, :, r0:r1, None])
        out[:, :, r0:r1] = torch.einsum("bhij,bhjd->bhid", probs, v32[:, :, :end])
    return out.to(q.dtype), lse


def chunk_causal_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, key_end: Tensor, key_bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of chunk_causal_attention w.r.t. q, k, v and key_bias (None without a bias).

    With P = softmax(S), S = q k^T * scale + bias: dV = P^T dO, dP = dO v^T,
    dS = P * (dP - rowsum(P * dP)), dq = dS k * scale, dk = dS^T q * scale, dbias_j = sum_{h,i} dS_ij.
    Each query group only touches the keys it sees (see query_groups).
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q32, k32, v32, go = (t.to(compute) for t in (q, k, v, grad_out))
    bias = key_bias.to(compute) if key_bias is not None else None
    _, lse = chunk_causal_attention(q, k, v, key_end, key_bias, scale)
    grad_q, grad_k, grad_v = torch.zeros_like(q32), torch.zeros_like(k32), torch.zeros_like(v32)
    grad_bias = torch.zeros(k.shape[:3], dtype=compute, device=k.device)
    for r0, r1, end in query_groups(key_end):
        qg, kg, vg, gog = q32[:, :, r0:r1], k32[:, :, :end], v32[:, :, :end], go[:, :, r0:r1]
        scores = _group_scores(qg, kg, bias[:, :end] if bias is not None else None, scale)
        probs = torch.exp(scores - lse[:, :, r0:r1, None])
        grad_v[:, :, :end] += torch.einsum("bhij,bhid->bhjd", probs, gog)
        grad_probs = torch.einsum("bhid,bhjd->bhij", gog, vg)
        grad_scores = probs * (grad_probs - (probs * grad_probs).sum(-1, keepdim=True))
        grad_q[:, :, r0:r1] = torch.einsum("bhij,bhjd->bhid", grad_scores, kg) * scale
        grad_k[:, :, :end] += torch.einsum("bhij,bhid->bhjd", grad_scores, qg) * scale
        grad_bias[:, :, :end] += grad_scores.sum(2)
    grad_bias = grad_bias.sum(1).to(key_bias.dtype) if key_bias is not None else None
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_bias
