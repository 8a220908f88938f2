"""Hard top-k + row gather (STTS eq. 4 at inference; MIST eq. 5 Top_j) and its backward scatter.

Selection without sorting: the rank of score i in its group is the number of scores that beat it
(higher, or equal at a lower position: ties to the lower index; NaN after every number), counted
tile by tile; rank < k
means selected. A second pass places the selected positions — in input order by a running prefix
count, or at slot = rank for score order. The gather and the backward scatter copy whole rows.
Row offsets are int64 (groups x rows x features can pass 2**31 elements).
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs


@triton.jit
def _topk_rank_kernel(s_ptr, rank_ptr, N, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    group = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = i < N
    s_i = tl.load(s_ptr + group * N + i, mask=mask_i, other=0.0)
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        mask_j = j < N
        s_j = tl.load(s_ptr + group * N + j, mask=mask_j, other=0.0)
        higher = s_j[None, :] > s_i[:, None]
        tie_before = (s_j[None, :] == s_i[:, None]) & (j[None, :] < i[:, None])
        # NaN ranks after every number, NaNs among themselves by position
        nan_j = s_j[None, :] != s_j[None, :]
        nan_i = s_i[:, None] != s_i[:, None]
        either_nan = nan_i & ((nan_j == 0) | (j[None, :] < i[:, None]))
        beats = tl.where(nan_i | nan_j, either_nan, higher | tie_before) & mask_j[None, :]
        rank += tl.sum(beats.to(tl.int32), axis=1)
    tl.store(rank_ptr + group * N + i, rank, mask=mask_i)


@triton.jit
def _topk_place_kernel(rank_ptr, index_ptr, N, K, SORTED_BY_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    group = tl.program_id(0).to(tl.int64)
    placed = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)  # running count of selected positions
    for i0 in range(0, N, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        mask = i < N
        rank = tl.load(rank_ptr + group * N + i, mask=mask, other=K)
        chosen = (rank < K) & mask
        flag = chosen.to(tl.int32)
        if SORTED_BY_INDEX:
            slot = placed + tl.cumsum(flag, axis=0) - flag
        else:
            slot = rank
        tl.store(index_ptr + group * K + slot, i.to(tl.int64), mask=chosen)
        placed += tl.sum(flag, axis=0)


@triton.jit
def _copy_rows_kernel(
    src_ptr, index_ptr, dst_ptr, K, N, D, GATHER: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr
):
    """GATHER: dst[g, j] = src[g, index[g, j]]; else (scatter) dst[g, index[g, j]] = src[g, j]."""
    blocks_per_group = tl.cdiv(K, BLOCK_ROWS)
    group = (tl.program_id(0) // blocks_per_group).to(tl.int64)
    j = (tl.program_id(0) % blocks_per_group) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_j = j < K
    mask = mask_j[:, None] & (feats < D)[None, :]
    position = tl.load(index_ptr + group * K + j, mask=mask_j, other=0)
    if GATHER:
        src_rows, dst_rows = group * N + position, group * K + j
    else:
        src_rows, dst_rows = group * K + j, group * N + position
    values = tl.load(src_ptr + src_rows[:, None] * D + feats[None, :], mask=mask, other=0.0)
    tl.store(dst_ptr + dst_rows[:, None] * D + feats[None, :], values, mask=mask)


def _compare_dtype(scores: torch.Tensor) -> torch.Tensor:
    # float16/bfloat16 -> float32 is exact, so the order (and every tie) is preserved.
    return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()


def topk_indices(scores: torch.Tensor, k: int, sorted_by_index: bool) -> torch.Tensor:
    """scores (B, N) -> (B, k) int64 positions of the k largest, ties to the lower position."""
    scores = _compare_dtype(scores).contiguous()
    groups, n = scores.shape
    rank = torch.empty(groups, n, dtype=torch.int32, device=scores.device)
    index = torch.empty(groups, k, dtype=torch.int64, device=scores.device)
    if groups:
        rank_config = configs.launch("topk_rank", n, scores.device)
        _topk_rank_kernel[(groups, triton.cdiv(n, rank_config["BLOCK_I"]))](scores, rank, n, **rank_config.kwargs())
        _topk_place_kernel[(groups,)](rank, index, n, k, SORTED_BY_INDEX=sorted_by_index,
                                      **configs.launch("topk_place", n, scores.device).kwargs())
    return index


def _copy_rows(src, index, dst, n: int, gather: bool):
    groups, k = index.shape
    d = dst.shape[2]
    if groups and k and d:
        config = configs.launch("copy_rows", d, dst.device)
        grid = (groups * triton.cdiv(k, config["BLOCK_ROWS"]), triton.cdiv(d, config["BLOCK_D"]))
        _copy_rows_kernel[grid](src, index, dst, k, n, d, GATHER=gather, **config.kwargs())
    return dst


def topk_gather(x, scores, k: int, sorted_by_index: bool):
    """x (B, N, D), scores (B, N) -> selected (B, k, D), index (B, k)."""
    x = x.contiguous()
    groups, n, d = x.shape
    index = topk_indices(scores, k, sorted_by_index)
    selected = torch.empty(groups, k, d, dtype=x.dtype, device=x.device)
    return _copy_rows(x, index, selected, n, gather=True), index


def topk_gather_backward(grad, index, n: int):
    """grad (B, k, D) to the distinct rows index (B, k) of a zero (B, n, D)."""
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"index values must lie in [0, {n})")
    grad, index = grad.contiguous(), index.contiguous()
    out = torch.zeros(grad.shape[0], n, grad.shape[2], dtype=grad.dtype, device=grad.device)
    return _copy_rows(grad, index, out, n, gather=False)


def aot_specs():
    """GPU launches: ranking in float32 / float64 (half scores are widened), copies in every dtype."""
    rank, place, copy = (configs.GPU[name][max(configs.GPU[name])] for name in ("topk_rank", "topk_place", "copy_rows"))
    specs = []
    for dtype in configs.DTYPES:
        name = configs.TL_NAMES[dtype]
        if dtype in (torch.float32, torch.float64):
            specs.append(configs.AotSpec(_topk_rank_kernel, "topk_gather", name, rank,
                                         dict(BLOCK_I=rank["BLOCK_I"], BLOCK_J=rank["BLOCK_J"]),
                                         types=dict(rank_ptr="*i32"), data=name))
        for gather in (True, False):
            specs.append(configs.AotSpec(_copy_rows_kernel, "topk_gather", name, copy,
                                         dict(GATHER=gather, BLOCK_ROWS=copy["BLOCK_ROWS"], BLOCK_D=copy["BLOCK_D"]),
                                         types=dict(index_ptr="*i64"), data=name, aligned=("D",),
                                         variant="gather" if gather else "scatter"))
    for by_index in (True, False):
        specs.append(configs.AotSpec(_topk_place_kernel, "topk_gather", "i32", place,
                                     dict(SORTED_BY_INDEX=by_index, BLOCK=place["BLOCK"]),
                                     types=dict(rank_ptr="*i32", index_ptr="*i64"),
                                     variant="by index" if by_index else "by score"))
    return specs
