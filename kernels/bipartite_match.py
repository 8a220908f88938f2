"""Fused cosine-similarity + row max/argmax for bipartite matching (TESTA §3.2.2).

One program owns BLOCK_A rows of set A and streams set B in tiles, keeping a running best score and
its first argmax: the |A| x |B| similarity matrix never exists in memory.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_A, BLOCK_B, BLOCK_C = 16, 32, 32


@triton.jit
def _best_partner_kernel(
    a_ptr, b_ptr, best_ptr, index_ptr, NA, NB, C,
    ACC_DTYPE: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    batch = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    row_mask = rows < NA
    a_base = a_ptr + batch * NA * C
    b_base = b_ptr + batch * NB * C
    best = tl.full((BLOCK_A,), float("-inf"), ACC_DTYPE)
    best_index = tl.zeros((BLOCK_A,), tl.int32)
    for j0 in range(0, NB, BLOCK_B):
        cols = j0 + tl.arange(0, BLOCK_B)
        col_mask = cols < NB
        acc = tl.zeros((BLOCK_A, BLOCK_B), ACC_DTYPE)
        for c0 in range(0, C, BLOCK_C):
            chans = c0 + tl.arange(0, BLOCK_C)
            chan_mask = chans < C
            a = tl.load(a_base + rows[:, None] * C + chans[None, :],
                        mask=row_mask[:, None] & chan_mask[None, :], other=0.0).to(ACC_DTYPE)
            b = tl.load(b_base + cols[:, None] * C + chans[None, :],
                        mask=col_mask[:, None] & chan_mask[None, :], other=0.0).to(ACC_DTYPE)
            acc += tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=ACC_DTYPE)
        acc = tl.where(col_mask[None, :], acc, float("-inf"))
        tile_best = tl.max(acc, axis=1)
        tile_index = tl.argmax(acc, axis=1).to(tl.int32) + j0  # first maximum within the tile
        better = tile_best > best  # strict: an earlier tile keeps ties
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)
    tl.store(best_ptr + batch * NA + rows, best, mask=row_mask)
    tl.store(index_ptr + batch * NA + rows, best_index.to(tl.int64), mask=row_mask)


def best_partner(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (B, Na, C), b (B, Nb, C) -> best cosine similarity (B, Na) and first argmax into b (B, Na)."""
    acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a = F.normalize(a.to(acc_dtype), dim=-1).contiguous()
    b = F.normalize(b.to(acc_dtype), dim=-1).contiguous()
    batch, na, c = a.shape
    nb = b.shape[1]
    best = torch.empty(batch, na, dtype=acc_dtype, device=a.device)
    index = torch.empty(batch, na, dtype=torch.int64, device=a.device)
    grid = (batch, triton.cdiv(na, BLOCK_A))
    _best_partner_kernel[grid](
        a, b, best, index, na, nb, c,
        ACC_DTYPE=tl.float64 if acc_dtype == torch.float64 else tl.float32,
        BLOCK_A=BLOCK_A, BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C,
    )
    return best, index
