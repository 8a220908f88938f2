"""Pure-PyTorch reference of bipartite token merging (TESTA §3.2, ToMe). The ground truth.

TESTA §3.2.2: partition the N tokens into sets A and B, find for each token of A its most similar
token of B by cosine similarity of the attention keys, and merge R of the pairs by averaging.
  * geometry-based ("alternate"): A and B alternate along the sequence; the R most similar pairs merge.
    As in ToMe and TESTA, parity counts from position 0: A = even, B = odd positions, and the
    `protected` leading tokens (ToMe's class token = A's first slot, distillation token = B's first
    slot) are only excluded from matching. "alternate_after_protected" instead restarts the parity
    after the protected tokens (A = protected, protected + 2, ...).
  * importance-based: A = the R least important tokens by S_i = sum_{j != i} A_ji (eq. 1); all merge.
Merging is ToMe's size-weighted average: x' = sum_i s_i x_i / sum_i s_i, s' = sum_i s_i.

Ranking rule, shared by every backend: larger similarity first, NaN after every number, equal
scores (and NaNs among themselves) by lower position — both for the best B partner of an A token and
for the order in which A tokens merge. A metric row holding NaN or ±inf has a NaN similarity with
every row, so it merges last, into B's first token when it merges at all. Importance ranks the
other way (least important first) with NaN after every number, so a NaN importance joins A last.
Each similarity is a fixed-order sum over channels of one (A row, B row) pair, never a GEMM whose
rounding depends on where the pair sits in a tile, so duplicated rows give bit-equal similarities;
with C = 1 every similarity is exactly -1, 0 or 1; and similarities within rounding of 1 count as 1
(snap_to_one), so a token and its duplicate tie at 1 on every backend whatever each one rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALTERNATE, IMPORTANCE, ALTERNATE_AFTER_PROTECTED = 0, 1, 2


def alternate_starts(kind: int, protected: int) -> tuple[int, int]:
    """First A and first B position of an alternate partition (each set then steps by 2)."""
    if kind == ALTERNATE_AFTER_PROTECTED:
        return protected, protected + 1
    odd = protected % 2  # ToMe parity: A = even, B = odd positions among the free tokens
    return protected + odd, protected + 1 - odd


def alternate_sizes(n: int, kind: int, protected: int) -> tuple[int, int]:
    """|A|, |B| of an alternate partition of n tokens."""
    a0, b0 = alternate_starts(kind, protected)
    return max(0, (n - a0 + 1) // 2), max(0, (n - b0 + 1) // 2)


def partition_positions(
    batch: int, n: int, r: int, kind: int, importance: torch.Tensor | None, protected: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of A (B, |A|) and B (B, |B|) tokens, each row ascending."""
    if kind != IMPORTANCE:
        a0, b0 = (min(start, n) for start in alternate_starts(kind, protected))  # protected = N: both empty
        a_pos = torch.arange(a0, n, 2, device=device)
        return a_pos.expand(batch, -1), torch.arange(b0, n, 2, device=device).expand(batch, -1)
    free = torch.arange(protected, n, device=device)
    # least important first; torch.sort puts NaN after +inf and keeps equal values in position order
    order = torch.sort(importance[:, protected:], dim=1, stable=True).indices
    a_pos = torch.sort(free[order[:, :r]], dim=1).values
    b_pos = torch.sort(free[order[:, r:]], dim=1).values
    return a_pos, b_pos


_SIM_CHUNK = 1 << 22  # elements of the (B, rows, Nb, C) product block summed at once


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, Na, C), b (B, Nb, C) -> (B, Na, Nb) cosine similarity of every A row with every B row.

    Rows are divided by their norm (F.normalize) and each entry is one reduction over C of the
    products of a single pair, so its rounding does not depend on the pair's place in the matrix.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    rows = max(1, _SIM_CHUNK // max(1, a.shape[0] * b.shape[1] * b.shape[2]))
    blocks = [(a[:, i : i + rows, None, :] * b[:, None]).sum(-1) for i in range(0, a.shape[1], rows)]
    return torch.cat(blocks, dim=1) if blocks else a.new_zeros(a.shape[0], 0, b.shape[1])


def best_partner(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of every A row to every B row, reduced to (best score, best partner).

    a (B, Na, C), b (B, Nb, C) -> scores (B, Na), partner index into b (B, Na). Best = the first
    maximum over the numbers; a row of NaN similarities only scores NaN with partner 0.
    """
    sim = snap_to_one(cosine_similarity(a, b), a.shape[-1])
    nan = sim.isnan()
    scores, partner = sim.masked_fill(nan, float("-inf")).max(dim=-1)
    return scores.masked_fill(nan.all(dim=-1), float("nan")), partner


def snap_to_one(sim: torch.Tensor, channels: int) -> torch.Tensor:
    """Similarities within 8 (C + 4) u of 1 count as exactly 1 (u: unit roundoff of sim's dtype).

    A cosine of C channels rounds by about 2 (C + 2) u on every backend, so a token and a duplicate
    (or a scaled copy) of it — similarity 1 exactly, 1 +- a few ulps once rounded — tie wherever and
    however they are computed. NaN stays NaN.
    """
    unit = 2.0**-53 if sim.dtype == torch.float64 else 2.0**-24
    return torch.where(1 - sim <= 8 * (channels + 4) * unit, torch.ones_like(sim), sim)


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Positions of scores (B, M) from first to last by the ranking rule (NaN last, ties by position)."""
    by_value = torch.sort(scores, dim=1, descending=True, stable=True).indices  # NaN first here
    nan_flags = scores.isnan().gather(1, by_value).to(torch.uint8)
    return by_value.gather(1, torch.sort(nan_flags, dim=1, stable=True).indices)


def matching_from_partners(
    n: int, r: int, kind: int, a_pos, b_pos, scores, partner
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turns best partners into the four index tensors of a Matching.

    scores (B, |A|) best similarity of each A token, partner (B, |A|) its index into B.
    Returns kept_index (B, N-r), merged_index (B, r) ascending, merged_into (B, r), dst_index (B, N).
    """
    batch = a_pos.shape[0]
    if kind != IMPORTANCE:  # the r most similar pairs by the ranking rule
        chosen = rank_descending(scores)[:, :r]
    else:  # every A token merges
        chosen = torch.arange(a_pos.shape[1], device=a_pos.device).expand(batch, -1)
    chosen = torch.sort(chosen, dim=1).values
    merged_index = a_pos.gather(1, chosen)
    merged_into = b_pos.gather(1, partner.gather(1, chosen))

    is_merged = torch.zeros(batch, n, dtype=torch.bool, device=a_pos.device)
    is_merged.scatter_(1, merged_index, True)
    kept_index = torch.sort(is_merged.to(torch.int8), dim=1, stable=True).indices[:, : n - r]
    slot = torch.cumsum((~is_merged).to(torch.int64), dim=1) - 1
    dst_index = slot.clone()
    dst_index.scatter_(1, merged_index, slot.gather(1, merged_into))
    return kept_index.contiguous(), merged_index.contiguous(), merged_into.contiguous(), dst_index


def bipartite_match(metric, r: int, kind: int, importance, protected: int):
    """Reference matching. metric (B, N, C), importance (B, N) or None -> see matching_from_partners."""
    batch, n, _ = metric.shape
    compute = metric if metric.dtype == torch.float64 else metric.float()
    a_pos, b_pos = partition_positions(batch, n, r, kind, importance, protected, metric.device)
    if r == 0 or b_pos.shape[1] == 0:
        scores = torch.zeros(a_pos.shape, dtype=compute.dtype, device=metric.device)
        partner = torch.zeros(a_pos.shape, dtype=torch.int64, device=metric.device)
    else:
        take = lambda pos: compute.gather(1, pos.unsqueeze(-1).expand(-1, -1, compute.shape[-1]))  # noqa: E731
        scores, partner = best_partner(take(a_pos), take(b_pos))
    return matching_from_partners(n, r, kind, a_pos, b_pos, scores, partner)


def scatter_rows(x, dst_index, weight, n_out: int):
    """out[b, dst[b, i]] += w[b, i] * x[b, i]. x (B, N, D) -> (B, n_out, D)."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.to(acc_dtype)
    if weight is not None:
        rows = rows * weight.to(acc_dtype).unsqueeze(-1)
    out = torch.zeros(x.shape[0], n_out, x.shape[2], dtype=acc_dtype, device=x.device)
    out.scatter_add_(1, dst_index.unsqueeze(-1).expand_as(rows), rows)
    return out.to(x.dtype)


def gather_rows(y, dst_index, weight):
    """out[b, i] = w[b, i] * y[b, dst[b, i]]. y (B, M, D) -> (B, N, D)."""
    out = y.gather(1, dst_index.unsqueeze(-1).expand(-1, -1, y.shape[2]))
    if weight is not None:
        acc_dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        out = (out.to(acc_dtype) * weight.to(acc_dtype).unsqueeze(-1)).to(y.dtype)
    return out
