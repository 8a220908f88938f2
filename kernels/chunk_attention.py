"""Block-causal chunk attention (Mirasol3B §3.3.1, eq. 8) in Triton: flash-style forward and backward.

Every query row i (at key position Lk - Lq + i) sees keys [0, key_end[i]), the end of its chunk.
Forward: one program per (batch*head, query block); the key loop stops at the largest key_end of the
block, so tiles above the chunk diagonal are never loaded; online softmax; the logsumexp is saved.
Backward: recomputes the probabilities from the logsumexp. One kernel per key block accumulates dK, dV
and the per-head key-bias gradient, starting at the first query block that can see the key block; one
kernel per query block accumulates dQ over its visible keys.
Masked keys never reach a query, not even a NaN or inf (0 * NaN inside tl.dot would carry it): every
kernel runs twice. The fast pass (EXACT=False) is plain flash attention; such a leak can only make an
output row NaN. The exact pass (EXACT=True; the fast pass's reduction tile, see configs.EXACT_PASS)
does nothing past a NaN check of its block of outputs unless that finds one; then it recomputes the
block with masked dS zeroed and, among the keys (forward, dQ) or query rows (dK/dV) that some row
(key) of the block cannot see, the non-finite ones taken out of the tile products: forward and dQ,
their non-finite V / K entries zeroed; dK/dV, rows with a non-finite q or dO zeroed and unseen. Afterwards it adds back, pair by pair from memory, the terms of the
visible pairs it took out, so visible non-finite inputs propagate as in the reference. It rewrites
only the rows (keys) that held a NaN (no host sync); under the interpreter, and on a GPU wherever it
keeps the fast pass's tiles, results out of a hidden value's reach keep the bits of a clean run.
Operands enter tl.dot in the input dtype (float16 / bfloat16 on tensor cores; P and dS are rounded
to it, as in FlashAttention) with float32 accumulation; float32 uses tf32 or ieee per
kernels/configs.py, float64 ieee. The scale enters as a tensor of the accumulator dtype (a Python
float would be float32 in a compiled kernel); offsets are int64. The head dim is a compile-time
constant (row strides known, so tile loads vectorise for any head dim).
"""

import itertools

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs


@triton.jit
def _load_tile(ptr, first_row, rows, row_ok, dims, dim_ok, DIM: tl.constexpr, DTYPE: tl.constexpr):
    """Rows `rows` of a row-major (.., DIM) matrix starting at (int64) row first_row, zero outside, in DTYPE."""
    offsets = (first_row + rows)[:, None] * DIM + dims[None, :]
    return tl.load(ptr + offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(DTYPE)


@triton.jit
def _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """key_bias[b, cols] of batch b = bh // HEADS (zeros without a bias)."""
    bias = tl.zeros([BLOCK_N], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + (bh // HEADS) * LK + cols, mask=col_ok, other=0.0).to(ACC)
    return bias


@triton.jit
def _non_finite(x):
    return (x != x) | (tl.abs(x) == float("inf"))


@triton.jit
def _nan_rows(ptr, first_row, rows, row_ok, dims, dim_ok, DIM: tl.constexpr):
    """(rows,) bool: which rows of a row-major (.., DIM) matrix hold a NaN (False outside row_ok)."""
    offsets = (first_row + rows)[:, None] * DIM + dims[None, :]
    x = tl.load(ptr + offsets, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)
    return tl.max((x != x).to(tl.int32), axis=1) > 0  # (float32: the interpreter compares bfloat16 as bits)


@triton.jit
def _nan_or_inf_rows(x):
    """(R,) bool: the rows of x (R, D) holding a NaN or an infinity."""
    return tl.max(_non_finite(x).to(tl.int32), axis=1) > 0


@triton.jit
def _any(flags):
    return tl.max(flags.to(tl.int32), axis=0) > 0


@triton.jit
def _hide_non_finite(x, straddling):
    """x (R, D) with its non-finite entries zeroed in the rows flagged `straddling` (R,)."""
    return tl.where(straddling[:, None] & _non_finite(x), 0.0, x)


@triton.jit
def _load_row(ptr, row, dims, dim_ok, DIM: tl.constexpr, ACC: tl.constexpr):
    return tl.load(ptr + row * DIM + dims, mask=dim_ok, other=0.0).to(ACC)


@triton.jit
def _flag(flags, r, SIZE: tl.constexpr):
    """flags[r] of a (SIZE,) bool vector, as a scalar."""
    return tl.sum(tl.where(tl.arange(0, SIZE) == r, flags.to(tl.int32), 0), axis=0) > 0


@triton.jit
def _pair(q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, lse_ptr, delta_ptr, bh, HEADS, LQ, LK, i, j, scale, dims, dim_ok,
          DIM: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, GRAD: tl.constexpr):
    """P_ij = exp(q_i . k_j * scale + bias_j - lse_i) of one visible pair, elementwise (no tl.dot), and
    with GRAD dS_ij = P_ij * (dO_i . v_j - delta_i) (else 0)."""
    row, key = bh * LQ + i, bh * LK + j
    s = tl.sum(_load_row(q_ptr, row, dims, dim_ok, DIM, ACC) * _load_row(k_ptr, key, dims, dim_ok, DIM, ACC)) * scale
    if HAS_BIAS:
        s += tl.load(bias_ptr + (bh // HEADS) * LK + j).to(ACC)
    p = tl.exp(s - tl.load(lse_ptr + row))
    ds = p * 0.0
    if GRAD:
        dp = tl.sum(_load_row(do_ptr, row, dims, dim_ok, DIM, ACC) * _load_row(v_ptr, key, dims, dim_ok, DIM, ACC))
        ds = p * (dp - tl.load(delta_ptr + row))
    return p, ds


@triton.jit
def _add_back_hidden_terms(dst_ptr, operand_ptr, q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, lse_ptr, delta_ptr,
                           key_end_ptr, row_ok, first_end, bh, HEADS, LQ, LK, scale, dims, dim_ok, DIM: tl.constexpr,
                           HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, GRAD: tl.constexpr):
    """Row by row, from memory (no tile stays live), for the block's rows i: the terms w_ij x_jd of visible
    keys j >= first_end whose operand entry x_jd is not finite, zeroed in the tile products, added back to
    dst. Forward: x = v, w = P (dst = out); GRAD: x = k, w = dS * scale (dst = dQ)."""
    tl.debug_barrier()
    for r in range(0, BLOCK_M):
        i = tl.program_id(1) * BLOCK_M + r
        redo_i = _flag(row_ok, r, BLOCK_M)
        dst_i = _load_row(dst_ptr, bh * LQ + i, dims, dim_ok & redo_i, DIM, ACC)
        for j in range(first_end, tl.where(redo_i, tl.load(key_end_ptr + i, mask=redo_i, other=0), 0)):
            x_j = _load_row(operand_ptr, bh * LK + j, dims, dim_ok, DIM, ACC)
            if _any(_non_finite(x_j)):
                p_ij, ds_ij = _pair(q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, lse_ptr, delta_ptr, bh, HEADS, LQ, LK,
                                    i, j, scale, dims, dim_ok, DIM, HAS_BIAS, ACC, GRAD)
                if GRAD:
                    dst_i += tl.where(_non_finite(x_j), ds_ij * x_j, 0.0) * scale
                else:
                    dst_i += tl.where(_non_finite(x_j), p_ij * x_j, 0.0)
        tl.store(dst_ptr + (bh * LQ + i) * DIM + dims, dst_i.to(dst_ptr.dtype.element_ty), mask=dim_ok & redo_i)


@triton.jit
def _chunk_attention_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, out_ptr, lse_ptr,
    HEADS, LQ, LK, DIM: tl.constexpr, scale_ptr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < DIM
    q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, OPERAND)
    ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
    key_stop = tl.max(ends, axis=0)
    first_end = tl.min(tl.where(row_ok, ends, LK), axis=0)  # keys from here on are hidden from some rows
    if EXACT:
        row_ok = _nan_rows(out_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM)
        key_stop = tl.where(_any(row_ok), key_stop, 0)
    row_max = tl.full([BLOCK_M], float("-inf"), ACC)
    row_sum = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for j0 in range(0, key_stop, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
        s = tl.dot(q, tl.trans(k), input_precision=DOT, out_dtype=ACC) * scale
        if HAS_BIAS:
            s += _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)[None, :]
        s = tl.where(cols[None, :] < ends[:, None], s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp(s - shift[:, None])
        rescale = tl.exp(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(p, axis=1)
        v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
        if EXACT:
            v = _hide_non_finite(v, cols >= first_end)
        acc = acc * rescale[:, None] + tl.dot(p.to(OPERAND), v, input_precision=DOT, out_dtype=ACC)
        row_max = new_max
    safe_sum = tl.where(row_ok, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    lse = row_max + tl.log(safe_sum)
    tl.store(out_ptr + (bh * LQ + rows)[:, None] * DIM + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(lse_ptr + bh * LQ + rows, lse, mask=row_ok)
    if EXACT:
        _add_back_hidden_terms(out_ptr, v_ptr, q_ptr, k_ptr, v_ptr, v_ptr, bias_ptr, lse_ptr, lse_ptr, key_end_ptr,
                               row_ok, first_end, bh, HEADS, LQ, LK, scale, dims, dim_ok, DIM, HAS_BIAS, ACC,
                               BLOCK_M, False)


@triton.jit
def _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale, ACC: tl.constexpr, DOT: tl.constexpr,
                       EXACT: tl.constexpr):
    """P (BLOCK_M, BLOCK_N) from the saved logsumexp and dS = P * (dO v^T - delta), both in ACC
    (EXACT: dS exactly 0 at hidden pairs, whatever dO v^T holds there)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT, out_dtype=ACC) * scale + bias[None, :]
    visible = cols[None, :] < ends[:, None]
    p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT, out_dtype=ACC)
    ds = p * (dp - delta[:, None])
    if EXACT:
        ds = tl.where(visible, ds, 0.0)
    return p, ds


@triton.jit
def _chunk_attention_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, first_row_ptr, do_ptr, lse_ptr, delta_ptr,
    dk_ptr, dv_ptr, dbias_ptr,
    HEADS, LQ, LK, DIM: tl.constexpr, scale_ptr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr)
    j0 = tl.program_id(1) * BLOCK_N
    cols = j0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < LK
    dim_ok = dims < DIM
    k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
    v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
    bias = _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dbias = tl.zeros([BLOCK_N], ACC)
    # The first query row that sees key j0: rows before it only see earlier chunks (skipped tiles).
    first_row = tl.load(first_row_ptr + j0)
    row_stop = LQ
    if EXACT:
        redo = _nan_rows(dk_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM)
        redo |= _nan_rows(dv_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM)
        if HAS_BIAS:
            grad_bias = tl.load(dbias_ptr + bh * LK + cols, mask=col_ok, other=0.0)
            redo |= grad_bias != grad_bias
        col_ok = redo  # from here on: the keys this pass rewrites
        row_stop = tl.where(_any(redo), LQ, 0)
    # Rows before all_see see only some keys of the block: their non-finite q / dO are hidden from the rest.
    all_see = tl.load(first_row_ptr + tl.minimum(j0 + BLOCK_N, LK) - 1)
    for i0 in range((first_row // BLOCK_M) * BLOCK_M, row_stop, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        row_ok = rows < LQ
        q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, OPERAND)
        do = _load_tile(do_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, OPERAND)
        lse = tl.load(lse_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
        ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
        if EXACT:
            # Rows before all_see holding a non-finite q / dO are left out here (zeroed, seeing no key)
            # and added pair by pair below: one masked copy of each operand, no raw copy kept.
            bad = (rows < all_see) & (_nan_or_inf_rows(q) | _nan_or_inf_rows(do))
            q, do = tl.where(bad[:, None], 0.0, q), tl.where(bad[:, None], 0.0, do)
            ends = tl.where(bad, 0, ends)
        p, ds = _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale, ACC, DOT, EXACT)
        dv += tl.dot(tl.trans(p.to(OPERAND)), do, input_precision=DOT, out_dtype=ACC)
        dk += tl.dot(tl.trans(ds.to(OPERAND)), q, input_precision=DOT, out_dtype=ACC) * scale
        dbias += tl.sum(ds, axis=0)
    kv_mask = col_ok[:, None] & dim_ok[None, :]
    tl.store(dk_ptr + (bh * LK + cols)[:, None] * DIM + dims[None, :], dk, mask=kv_mask)
    tl.store(dv_ptr + (bh * LK + cols)[:, None] * DIM + dims[None, :], dv, mask=kv_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + bh * LK + cols, dbias, mask=col_ok)
    if EXACT:
        # Key by key, from memory: the terms P_ij dO_i, dS_ij q_i and dS_ij of the visible queries left out above.
        tl.debug_barrier()
        for c in range(0, BLOCK_N):
            j = j0 + c
            redo_j = _flag(col_ok, c, BLOCK_N)
            dk_j = _load_row(dk_ptr, bh * LK + j, dims, dim_ok & redo_j, DIM, ACC)
            dv_j = _load_row(dv_ptr, bh * LK + j, dims, dim_ok & redo_j, DIM, ACC)
            dbias_j = tl.zeros([1], ACC)
            i_stop = tl.where(redo_j, tl.minimum(all_see, LQ), 0)
            for i in range(tl.load(first_row_ptr + j, mask=redo_j, other=0), i_stop):
                qi = _load_row(q_ptr, bh * LQ + i, dims, dim_ok, DIM, ACC)
                doi = _load_row(do_ptr, bh * LQ + i, dims, dim_ok, DIM, ACC)
                if _any(_non_finite(qi) | _non_finite(doi)):
                    p_ij, ds_ij = _pair(q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, lse_ptr, delta_ptr, bh, HEADS, LQ, LK, i,
                                        j, scale, dims, dim_ok, DIM, HAS_BIAS, ACC, True)
                    dv_j += p_ij * doi
                    dk_j += ds_ij * qi * scale
                    dbias_j += ds_ij
            tl.store(dk_ptr + (bh * LK + j) * DIM + dims, dk_j, mask=dim_ok & redo_j)
            tl.store(dv_ptr + (bh * LK + j) * DIM + dims, dv_j, mask=dim_ok & redo_j)
            if HAS_BIAS:
                bias_at = dbias_ptr + bh * LK + j + tl.arange(0, 1)
                tl.store(bias_at, tl.load(bias_at, mask=redo_j, other=0.0) + dbias_j, mask=redo_j)


@triton.jit
def _chunk_attention_dq_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, key_end_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    HEADS, LQ, LK, DIM: tl.constexpr, scale_ptr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < LQ
    dim_ok = dims < DIM
    q = _load_tile(q_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, OPERAND)
    do = _load_tile(do_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM, OPERAND)
    lse = tl.load(lse_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + bh * LQ + rows, mask=row_ok, other=0.0)
    ends = tl.load(key_end_ptr + rows, mask=row_ok, other=0)
    key_stop = tl.max(ends, axis=0)
    first_end = tl.min(tl.where(row_ok, ends, LK), axis=0)  # keys from here on are hidden from some rows
    if EXACT:
        row_ok = _nan_rows(dq_ptr, bh * LQ, rows, row_ok, dims, dim_ok, DIM)
        key_stop = tl.where(_any(row_ok), key_stop, 0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for j0 in range(0, key_stop, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < LK
        k = _load_tile(k_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
        v = _load_tile(v_ptr, bh * LK, cols, col_ok, dims, dim_ok, DIM, OPERAND)
        bias = _load_key_bias(bias_ptr, bh, HEADS, LK, cols, col_ok, HAS_BIAS, ACC, BLOCK_N)
        _, ds = _probs_and_dscores(q, k, v, do, lse, delta, bias, cols, ends, scale, ACC, DOT, EXACT)
        if EXACT:
            k = _hide_non_finite(k, cols >= first_end)
        dq += tl.dot(ds.to(OPERAND), k, input_precision=DOT, out_dtype=ACC) * scale
    tl.store(dq_ptr + (bh * LQ + rows)[:, None] * DIM + dims[None, :], dq, mask=row_ok[:, None] & dim_ok[None, :])
    if EXACT:
        _add_back_hidden_terms(dq_ptr, k_ptr, q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, lse_ptr, delta_ptr, key_end_ptr,
                               row_ok, first_end, bh, HEADS, LQ, LK, scale, dims, dim_ok, DIM, HAS_BIAS, ACC,
                               BLOCK_M, True)


_acc_types = configs.accumulator


def _meta(q, kernel: str, has_bias: bool, exact: bool) -> dict:
    """Constexpr arguments and launch options of one chunk attention kernel (fast or exact pass) for q's
    dtype / head dim."""
    block_d = _block_d(q.shape[-1])
    launch = (configs.exact_launch if exact else configs.launch)(kernel, block_d, q.device, q.dtype)
    return dict(HAS_BIAS=has_bias, ACC=_acc_types(q.dtype)[1], OPERAND=configs.dot_operand(q.dtype, q.device),
                DOT=configs.dot_precision(q.dtype, q.device), BLOCK_D=block_d, EXACT=exact, **launch.kwargs())


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def chunk_attention(q, k, v, key_end, key_bias, scale: float):
    """q (B, H, Lq, Dh), k, v (B, H, Lk, Dh), key_end (Lq,) int64 (query row i sees keys [0, key_end[i])),
    key_bias (B, Lk) or None -> out (B, H, Lq, Dh), lse (B, H, Lq)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    acc_torch = _acc_types(q.dtype)[0]
    key_end = key_end.to(torch.int32).contiguous()  # positions < Lk fit int32; row offsets are int64
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, lq, dtype=acc_torch, device=q.device)
    bias = key_bias.contiguous() if key_bias is not None else q.new_empty(0)
    if out.numel():
        args = (q, k, v, bias, key_end, out, lse, heads, lq, lk, dim, configs.scalar(scale, acc_torch, q.device))
        for exact in (False, True):
            meta = _meta(q, "chunk_attention_fwd", key_bias is not None, exact)
            _chunk_attention_kernel[(batch * heads, triton.cdiv(lq, meta["BLOCK_M"]))](*args, **meta)
    return out, lse


def chunk_attention_backward(grad_out, q, k, v, out, lse, key_end, first_row, key_bias, scale: float,
                             bias_grad: bool):
    """key_end (Lq,), first_row (Lk,) int64: the chunk layout (first_row[j]: first query row seeing key j).

    Returns grad_q, grad_k, grad_v (shapes of q, k, v) and grad_bias (B, Lk) or an empty tensor.
    """
    q, k, v, grad_out = q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous()
    batch, heads, lq, dim = q.shape
    lk = k.shape[2]
    acc_torch = _acc_types(q.dtype)[0]
    key_end, first_row = key_end.to(torch.int32).contiguous(), first_row.to(torch.int32).contiguous()
    delta = (grad_out.to(acc_torch) * out.to(acc_torch)).sum(-1).contiguous()  # rowsum(P * dP) = <dO, O>
    lse = lse.to(acc_torch).contiguous()
    bias = key_bias.contiguous() if key_bias is not None else q.new_empty(0)
    grad_q = torch.zeros(q.shape, dtype=acc_torch, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc_torch, device=q.device)
    grad_v = torch.zeros(v.shape, dtype=acc_torch, device=q.device)
    grad_bias_heads = torch.zeros(batch, heads, lk, dtype=acc_torch, device=q.device)
    if q.numel():
        scale_t = configs.scalar(scale, acc_torch, q.device)
        args = (q, k, v, bias, key_end, first_row, grad_out, lse, delta, grad_k, grad_v, grad_bias_heads,
                heads, lq, lk, dim, scale_t)
        for exact in (False, True):
            meta = _meta(q, "chunk_attention_dkdv", key_bias is not None, exact)
            _chunk_attention_dkdv_kernel[(batch * heads, triton.cdiv(lk, meta["BLOCK_N"]))](*args, **meta)
        args = (q, k, v, bias, key_end, grad_out, lse, delta, grad_q, heads, lq, lk, dim, scale_t)
        for exact in (False, True):
            meta = _meta(q, "chunk_attention_dq", key_bias is not None, exact)
            _chunk_attention_dq_kernel[(batch * heads, triton.cdiv(lq, meta["BLOCK_M"]))](*args, **meta)
    grad_bias = grad_bias_heads.sum(1).to(key_bias.dtype) if bias_grad else q.new_empty(0)
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_bias


def aot_specs():
    """GPU launches of the three kernels (fast and exact pass): every dtype, dot precision and head-dim entry,
    with a key bias."""
    kernels = (("chunk_attention_fwd", _chunk_attention_kernel), ("chunk_attention_dkdv", _chunk_attention_dkdv_kernel),
               ("chunk_attention_dq", _chunk_attention_dq_kernel))
    specs = []
    for table, kernel in kernels:
        for dtype in configs.DTYPES:
            name, (acc_torch, acc_tl) = configs.TL_NAMES[dtype], configs.accumulator(dtype)
            acc = "*" + configs.TL_NAMES[acc_torch]
            types = dict(key_end_ptr="*i32", first_row_ptr="*i32", lse_ptr=acc, delta_ptr=acc, scale_ptr=acc,
                         dk_ptr=acc, dv_ptr=acc, dbias_ptr=acc, dq_ptr=acc)
            types = {arg: t for arg, t in types.items() if arg in kernel.arg_names}
            for precision, suffix in configs.gemm_variants(dtype):
                for block_d, fast in configs.gpu_table(table, dtype, precision).items():
                    for dim, exact in itertools.product((block_d, block_d * 3 // 4), (False, True)):
                        # a power-of-two head dim and one padded to it; the fast and the exact pass
                        config = configs.exact_pass(table, dtype, precision, block_d) if exact else fast
                        constexprs = dict(config.blocks, HAS_BIAS=True, ACC=acc_tl, DOT=precision, DIM=dim,
                                          OPERAND=configs.dot_operand(dtype, "cuda"), BLOCK_D=block_d, EXACT=exact)
                        specs.append(configs.AotSpec(
                            kernel, "chunk_attention", name, config, constexprs, types=types, data=name,
                            variant=" ".join(filter(None, (f"Dh={dim}", suffix, "exact" if exact else ""))),
                            tensor_cores=configs.requires_tensor_cores(dtype, precision)))
    return specs
