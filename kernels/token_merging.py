"""Triton kernels of token merging (TESTA §3.2.2; ToMe bipartite soft matching and merge_wavg).

best_partner fuses cosine similarity with the row max/argmax of bipartite matching: one program owns
BLOCK_A rows of set A and streams set B in tiles, keeping a running best score and its first argmax,
so the |A| x |B| similarity matrix never exists in memory. The raw rows enter tl.dot in their own
dtype (tensor cores for float16 / bfloat16, tf32 or ieee for float32) with float32 (float64)
accumulation, and the tile is divided by the product of the two row norms: a.b / (|a| |b|), the
cosine of F.normalize(a) . F.normalize(b) without rounding unit vectors to the input dtype. Every
element of a tl.dot tile is reduced over C the same way, so equal rows give equal similarities; NaN
similarities (a row with NaN or inf) rank after every number, as in the reference.

scatter_rows (behind merge) accumulates w_i * x_i into its destination row with atomics into a
float32 (float64) buffer, cast to the input dtype at the end; gather_rows (behind unmerge) is a plain
indexed copy with a weight. Offsets are int64 (batch x rows x features can pass 2**31).
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs

_NORM_EPS = 1e-12  # F.normalize's floor on the row norm


@triton.jit
def _best_partner_kernel(
    a_ptr, b_ptr, norm_a_ptr, norm_b_ptr, best_ptr, index_ptr, NA, NB, C,
    ACC_DTYPE: tl.constexpr, DOT: tl.constexpr, OPERAND: tl.constexpr, SNAP_UNIT: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    snap = (8 * (C + 4)).to(tl.float32) * SNAP_UNIT  # the reference's snap_to_one band
    rows = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    row_mask = rows < NA
    a_base = a_ptr + batch * NA * C
    b_base = b_ptr + batch * NB * C
    norm_a = tl.load(norm_a_ptr + batch * NA + rows, mask=row_mask, other=1.0)
    best = tl.full((BLOCK_A,), float("-inf"), ACC_DTYPE)
    best_index = tl.zeros((BLOCK_A,), tl.int32)
    for j0 in range(0, NB, BLOCK_B):
        cols = j0 + tl.arange(0, BLOCK_B)
        col_mask = cols < NB
        acc = tl.zeros((BLOCK_A, BLOCK_B), ACC_DTYPE)
        for c0 in range(0, C, BLOCK_C):
            chans = c0 + tl.arange(0, BLOCK_C)
            chan_mask = chans < C
            a = tl.load(a_base + rows[:, None].to(tl.int64) * C + chans[None, :],
                        mask=row_mask[:, None] & chan_mask[None, :], other=0.0).to(OPERAND)
            b = tl.load(b_base + cols[:, None].to(tl.int64) * C + chans[None, :],
                        mask=col_mask[:, None] & chan_mask[None, :], other=0.0).to(OPERAND)
            acc += tl.dot(a, tl.trans(b), input_precision=DOT, out_dtype=ACC_DTYPE)
        norm_b = tl.load(norm_b_ptr + batch * NB + cols, mask=col_mask, other=1.0)
        # One division by |a| |b|: with C = 1 it is |a b| itself, so the cosine is exactly +-1.
        sim = acc / (norm_a[:, None] * norm_b[None, :])
        sim = tl.where(1 - sim <= snap, 1.0, sim)
        # NaN ranks after every number: it only wins a row with nothing else (restored below).
        sim = tl.where(col_mask[None, :] & (sim == sim), sim, float("-inf"))
        tile_best = tl.max(sim, axis=1)
        tile_index = tl.argmax(sim, axis=1).to(tl.int32) + j0  # first maximum within the tile
        better = tile_best > best  # strict: an earlier tile keeps ties
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)
    best = tl.where(best == float("-inf"), float("nan"), best)  # a cosine is never -inf: all NaN
    tl.store(best_ptr + batch * NA + rows, best, mask=row_mask)
    tl.store(index_ptr + batch * NA + rows, best_index.to(tl.int64), mask=row_mask)


def _snap_unit(acc_dtype: torch.dtype) -> float:
    """Unit roundoff of the accumulator (a power of two, exact in the kernel's float32 constant)."""
    return 2.0**-53 if acc_dtype == torch.float64 else 2.0**-24


def _norms(x: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    return x.to(acc_dtype).norm(dim=-1).clamp_min(_NORM_EPS).contiguous()


def best_partner(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (B, Na, C), b (B, Nb, C) -> best cosine similarity (B, Na) and first argmax into b (B, Na)."""
    acc_dtype, acc_tl = configs.accumulator(a.dtype)
    norm_a, norm_b = _norms(a, acc_dtype), _norms(b, acc_dtype)
    a, b = a.contiguous(), b.contiguous()
    batch, na, c = a.shape
    nb = b.shape[1]
    best = torch.empty(batch, na, dtype=acc_dtype, device=a.device)
    index = torch.empty(batch, na, dtype=torch.int64, device=a.device)
    config = configs.launch("best_partner", c, a.device, a.dtype)
    grid = (batch, triton.cdiv(na, config["BLOCK_A"]))
    _best_partner_kernel[grid](
        a, b, norm_a, norm_b, best, index, na, nb, c, ACC_DTYPE=acc_tl,
        DOT=configs.dot_precision(a.dtype, a.device), OPERAND=configs.dot_operand(a.dtype, a.device),
        SNAP_UNIT=_snap_unit(acc_dtype), **config.kwargs(),
    )
    return best, index


@triton.jit
def _row_block(N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's batch, BLOCK_N rows and BLOCK_D features of a (B, N, D) tensor, with masks."""
    blocks_per_batch = tl.cdiv(N, BLOCK_N)
    batch = (tl.program_id(0) // blocks_per_batch).to(tl.int64)
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


_acc_dtype = configs.accumulator


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
        config = configs.launch("rows", d, x.device)
        grid = (batch * triton.cdiv(n, config["BLOCK_N"]), triton.cdiv(d, config["BLOCK_D"]))
        _scatter_rows_kernel[grid](x, dst_index, w, out, n, d, n_out, HAS_WEIGHT=weight is not None,
                                   ACC_DTYPE=acc_tl, **config.kwargs())
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
        config = configs.launch("rows", d, y.device)
        grid = (batch * triton.cdiv(n, config["BLOCK_N"]), triton.cdiv(d, config["BLOCK_D"]))
        _gather_rows_kernel[grid](y, dst_index, w, out, n, d, m, HAS_WEIGHT=weight is not None,
                                  ACC_DTYPE=acc_tl, **config.kwargs())
    return out


def aot_specs():
    """GPU launches: similarity in every table entry, dtype and dot precision; the row kernels."""
    specs = []
    for dtype in configs.DTYPES:
        name, (acc_torch, acc_tl) = configs.TL_NAMES[dtype], configs.accumulator(dtype)
        acc_name = configs.TL_NAMES[acc_torch]
        for precision, suffix in configs.gemm_variants(dtype):
            for config in configs.gpu_table("best_partner", dtype, precision).values():
                specs.append(configs.AotSpec(
                    _best_partner_kernel, "token_merging", name, config,
                    dict(config.blocks, ACC_DTYPE=acc_tl, DOT=precision, OPERAND=configs.dot_operand(dtype, "cuda"),
                         SNAP_UNIT=_snap_unit(acc_torch)),
                    types=dict(norm_a_ptr="*" + acc_name, norm_b_ptr="*" + acc_name, best_ptr="*" + acc_name,
                               index_ptr="*i64"),
                    data=name, variant=suffix, aligned=("C",),
                    tensor_cores=configs.requires_tensor_cores(dtype, precision)))
        rows = configs.GPU["rows"][max(configs.GPU["rows"])]
        for kernel, out in ((_scatter_rows_kernel, acc_name), (_gather_rows_kernel, name)):
            specs.append(configs.AotSpec(kernel, "token_merging", name, rows,
                                         dict(rows.blocks, HAS_WEIGHT=True, ACC_DTYPE=acc_tl),
                                         types=dict(dst_ptr="*i64", w_ptr="*" + acc_name, out_ptr="*" + out),
                                         data=name, aligned=("D",)))
    return specs
