"""Block-causal chunk attention (Mirasol3B §3.3.1, eq. 8) in Triton: flash-style forward and backward.

Every query row i (at key position Lk - Lq + i) sees keys [0, key_end[i]), the end of its chunk.
Forward: one program per (batch*head, query block); the key loop stops at the largest key_end of the
block, so tiles above the chunk diagonal are never loaded; online softmax; the logsumexp is saved.
Backward: recomputes the probabilities from the logsumexp. One kernel per key block accumulates dK, dV
and the per-head key-bias gradient, starting at the first query block that can see the key block; one
kernel per query block accumulates dQ over its visible keys.
"""

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N = 16, 16


@triton.jit
def _load_tile(ptr, first_row, rows, row_ok, dims, dim_ok, DIM, ACC: tl.constexpr):
    """Rows `rows` of a row-major (.., DIM) matrix starting at row first_row, zero outside, in ACC."""
    offsets = (first_row + rows)[:, None] * DIM + dims[None, :]
    return tl.load(ptr + offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """key_bias[b, cols] of batch b = bh // HEADS (zeros without a bias)."""
    bias = tl.zeros([BLOCK_N], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + (bh // HEADS) * LK + cols, mask=col_ok, other=0.0).to(ACC)
    return bias


@triton.jit
def _chunk_attention_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, out_ptr, lse_ptr,
    HEADS, LQ, LK, DIM, scale,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < DIM
    q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, ACC)
    ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
    key_stop = tl.max(ends, axis=0)
    row_max = tl.full([BLOCK_M], float("-inf"), ACC)
    row_sum = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for j0 in range(0, key_stop, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        if HAS_BIAS:
            s += _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)[None, :]
        s = tl.where(cols[None, :] < ends[:, None], s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp(s - shift[:, None])
        rescale = tl.exp(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
        acc = acc * rescale[:, None] + tl.dot(p, v, input_precision="ieee")
        row_max = new_max
    safe_sum = tl.where(row_ok, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    tl.store(out_ptr + (bh * LQ + rows)[:, None] * DIM + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(lse_ptr + bh * LQ + rows, row_max + tl.log(safe_sum), mask=row_ok)


@triton.jit
def _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale):
    """P (BLOCK_M, BLOCK_N) from the saved logsumexp and dS = P * (dO v^T - delta)."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias[None, :]
    visible = cols[None, :] < ends[:, None]
    p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    return p, p * (dp - delta[:, None])


@triton.jit
def _chunk_attention_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, first_row_ptr, do_ptr, lse_ptr, delta_ptr,
    dk_ptr, dv_ptr, dbias_ptr,
    HEADS, LQ, LK, DIM, scale,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    j0 = tl.program_id(1) * BLOCK_N
    cols = j0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < LK
    dim_ok = dims < DIM
    kv_mask = col_ok[:, None] & dim_ok[None, :]
    k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
    v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
    bias = _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dbias = tl.zeros([BLOCK_N], ACC)
    # The first query row that sees key j0: rows before it only see earlier chunks (skipped tiles).
    first_row = tl.load(first_row_ptr + j0)
    for i0 in range((first_row // BLOCK_M) * BLOCK_M, LQ, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, ACC)
        do = _load_tile(do_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, ACC)
        lse = tl.load(lse_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
        ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
        p, ds = _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale)
        dv += tl.dot(tl.trans(p), do, input_precision="ieee")
        dk += tl.dot(tl.trans(ds), q, input_precision="ieee") * scale
        dbias += tl.sum(ds, axis=0)
    tl.store(dk_ptr + (bh * LK + cols)[:, None] * DIM + dims[None, :], dk, mask=kv_mask)
    tl.store(dv_ptr + (bh * LK + cols)[:, None] * DIM + dims[None, :], dv, mask=kv_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + bh * LK + cols, dbias, mask=col_ok)


@triton.jit
def _chunk_attention_dq_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    HEADS, LQ, LK, DIM, scale,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < DIM
    q_mask = row_ok[:, None] & dim_ok[None, :]
    q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, ACC)
    do = _load_tile(do_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, ACC)
    lse = tl.load(lse_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
    ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
    key_stop = tl.max(ends, axis=0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for j0 in range(0, key_stop, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
        v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, ACC)
        bias = _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)
        _, ds = _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale)
        dq += tl.dot(ds, k, input_precision="ieee") * scale
    tl.store(dq_ptr + (bh * LQ + rows)[:, None] * DIM + dims[None, :], dq, mask=q_mask)


def _acc_types(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def chunk_attention(q, k, v, key_end, key_bias, scale: float):
    """q (B, H, Lq, Dh), k, v (B, H, Lk, Dh), key_end (Lq,) int64 (query row i sees keys [0, key_end[i])),
    key_bias (B, Lk) or None -> out (B, H, Lq, Dh), lse (B, H, Lq)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    acc_torch, acc_tl = _acc_types(q.dtype)
    key_end = key_end.to(torch.int32).contiguous()  # 32-bit offsets in the kernels
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, lq, dtype=acc_torch, device=q.device)
    bias = key_bias.contiguous() if key_bias is not None else q.new_empty(0)
    if out.numel():
        grid = (batch * heads, triton.cdiv(lq, BLOCK_M))
        _chunk_attention_kernel[grid](
            q, k, v, bias, key_end, out, lse, heads, lq, lk, dim, scale,
            HAS_BIAS=key_bias is not None, ACC=acc_tl, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_block_d(dim),
        )
    return out, lse


def chunk_attention_backward(grad_out, q, k, v, out, lse, key_end, first_row, key_bias, scale: float,
                             bias_grad: bool):
    """key_end (Lq,), first_row (Lk,) int64: the chunk layout (first_row[j]: first query row seeing key j).

    Returns grad_q, grad_k, grad_v (shapes of q, k, v) and grad_bias (B, Lk) or an empty tensor.
    """
    q, k, v, grad_out = q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous()
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    acc_torch, acc_tl = _acc_types(q.dtype)
    key_end, first_row = key_end.to(torch.int32).contiguous(), first_row.to(torch.int32).contiguous()
    delta = (grad_out.to(acc_torch) * out.to(acc_torch)).sum(-1).contiguous()  # rowsum(P * dP) = <dO, O>
    lse = lse.to(acc_torch).contiguous()
    bias = key_bias.contiguous() if key_bias is not None else q.new_empty(0)
    grad_q = torch.zeros(q.shape, dtype=acc_torch, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc_torch, device=q.device)
    grad_v = torch.zeros(v.shape, dtype=acc_torch, device=q.device)
    grad_bias_heads = torch.zeros(batch, heads, lk, dtype=acc_torch, device=q.device)
    if q.numel():
        meta = dict(HAS_BIAS=key_bias is not None, ACC=acc_tl, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_block_d(dim))
        _chunk_attention_dkdv_kernel[(batch * heads, triton.cdiv(lk, BLOCK_N))](
            q, k, v, bias, key_end, first_row, grad_out, lse, delta, grad_k, grad_v, grad_bias_heads,
            heads, lq, lk, dim, scale, **meta,
        )
        _chunk_attention_dq_kernel[(batch * heads, triton.cdiv(lq, BLOCK_M))](
            q, k, v, bias, key_end, grad_out, lse, delta, grad_q, heads, lq, lk, dim, scale, **meta,
        )
    grad_bias = grad_bias_heads.sum(1).to(key_bias.dtype) if bias_grad else q.new_empty(0)
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_bias
