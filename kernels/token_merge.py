"""Row scatter/gather behind merge and unmerge (TESTA §3.2.2 averaging; ToMe merge_wavg).

scatter_rows accumulates w_i * x_i into its destination row with atomics into a float32 (float64)
buffer, cast to the input dtype at the end; gather_rows is a plain indexed copy with a weight.
"""

import torch
import triton
import triton.language as tl

BLOCK_N, BLOCK_D = 16, 64


@triton.jit
def _row_block(N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's batch, BLOCK_N rows and BLOCK_D features of a (B, N, D) tensor, with masks."""
    blocks_per_batch = tl.cdiv(N, BLOCK_N)
    batch = tl.program_id(0) // blocks_per_batch
    rows = (tl.program_id(0) % blocks_per_batch) * BLOCK_N + tl.arange(0, BLOCK_N)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < N
    return batch, rows, feats, row_mask, row_mask[:, None] & (feats < D)[None, :]


@triton.jit
def _scatter_rows_kernel(
    x_ptr, dst_ptr, w_ptr, out_ptr, N, D, N_OUT,
    HAS_WEIGHT: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    batch, rows, feats, row_mask, mask = _row_block(N, D, BLOCK_N, BLOCK_D)
    dst = tl.load(dst_ptr + batch * N + rows, mask=row_mask, other=0)
    x = tl.load(x_ptr + (batch * N + rows)[:, None] * D + feats[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + batch * N + rows, mask=row_mask, other=0.0).to(ACC_DTYPE)
        x = x * w[:, None]
    tl.atomic_add(out_ptr + (batch * N_OUT + dst)[:, None] * D + feats[None, :], x, mask=mask)


@triton.jit
def _gather_rows_kernel(
    y_ptr, dst_ptr, w_ptr, out_ptr, N, D, M,
    HAS_WEIGHT: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    batch, rows, feats, row_mask, mask = _row_block(N, D, BLOCK_N, BLOCK_D)
    src = tl.load(dst_ptr + batch * N + rows, mask=row_mask, other=0)
    y = tl.load(y_ptr + (batch * M + src)[:, None] * D + feats[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + batch * N + rows, mask=row_mask, other=0.0).to(ACC_DTYPE)
        y = y * w[:, None]
    tl.store(out_ptr + (batch * N + rows)[:, None] * D + feats[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _acc_dtype(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _check_indices(dst_index: torch.Tensor, upper: int) -> None:
    # Out-of-range indices would be out-of-bounds memory accesses in the kernel.
    if dst_index.numel() and (int(dst_index.min()) < 0 or int(dst_index.max()) >= upper):
        raise ValueError(f"dst_index values must lie in [0, {upper})")


def scatter_rows(x, dst_index, weight, n_out: int):
    """x (B, N, D), dst_index (B, N), weight (B, N) or None -> (B, n_out, D)."""
    _check_indices(dst_index, n_out)
    x, dst_index = x.contiguous(), dst_index.contiguous()
    batch, n, d = x.shape
    acc_torch, acc_tl = _acc_dtype(x.dtype)
    out = torch.zeros(batch, n_out, d, dtype=acc_torch, device=x.device)
    w = weight.to(acc_torch).contiguous() if weight is not None else x.new_empty(0, dtype=acc_torch)
    if x.numel():
        grid = (batch * triton.cdiv(n, BLOCK_N), triton.cdiv(d, BLOCK_D))
        _scatter_rows_kernel[grid](x, dst_index, w, out, n, d, n_out, HAS_WEIGHT=weight is not None,
                                   ACC_DTYPE=acc_tl, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return out.to(x.dtype)


def gather_rows(y, dst_index, weight):
    """y (B, M, D), dst_index (B, N), weight (B, N) or None -> (B, N, D)."""
    _check_indices(dst_index, y.shape[1])
    y, dst_index = y.contiguous(), dst_index.contiguous()
    batch, m, d = y.shape
    n = dst_index.shape[1]
    acc_torch, acc_tl = _acc_dtype(y.dtype)
    out = torch.empty(batch, n, d, dtype=y.dtype, device=y.device)
    w = weight.to(acc_torch).contiguous() if weight is not None else y.new_empty(0, dtype=acc_torch)
    if out.numel():
        grid = (batch * triton.cdiv(n, BLOCK_N), triton.cdiv(d, BLOCK_D))
        _gather_rows_kernel[grid](y, dst_index, w, out, n, d, m, HAS_WEIGHT=weight is not None,
                                  ACC_DTYPE=acc_tl, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return out
