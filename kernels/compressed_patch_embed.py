"""Triton kernels of the fused compressed-domain patch embedding (MM-ViT §3.2, eq. 1–4).

One gather-GEMM kernel serves every modality: a program computes a (BLOCK_M tokens × BLOCK_D) tile of
    out[b, m, t, n, :] = sum_k patch(x)[bt, n, k] · W'[k, :] + (PE + bias)[t, n, :]
reading the patch columns k = (channel, cell row, cell column) straight from the input (no im2col
buffer). Motion is read from its g-block grid with the weight pre-summed over c×c cells (c = gcd(P, g)),
so the dense flow never exists. Audio (eq. 4) is the same kernel with 1×1 "patches" of F channels.
Backward: the input gradient (G · W', scattered back with atomics into a float32/float64 buffer,
because several cells may share a motion block) and the weight gradient (patch^T · G) are kernels too;
the bias / positional-encoding gradients are plain sums.
Operands enter tl.dot in the input dtype (float16 / bfloat16 on tensor cores, float32 as tf32 or
ieee per kernels/configs.py) with float32 (float64) accumulation; element offsets are int64.
"""

import math

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs


@triton.jit
def _patch_columns(rows, ks, N, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS):
    """Element offsets (rows × ks) of patch columns in the input (B*T frames of CHANNELS × IN_H × IN_W).

    Index arithmetic stays int32 (rows and columns are far below 2**31); only the frame offset, the
    product that can pass 2**31 elements, is int64."""
    frame = rows // N
    n = rows % N
    ph = n // GRID_W
    pw = n % GRID_W
    ch = ks // (CELLS * CELLS)
    ci = (ks // CELLS) % CELLS
    cj = ks % CELLS
    y = (ph[:, None] * PATCH + ci[None, :] * CELL) // SCALE
    x = (pw[:, None] * PATCH + cj[None, :] * CELL) // SCALE
    return frame.to(tl.int64)[:, None] * (CHANNELS * IN_H * IN_W) + ((ch[None, :] * IN_H + y) * IN_W + x)


@triton.jit
def _token_offsets(rows, N, T, BATCH_STRIDE, OFFSET):
    """Row index (int64, in units of D) of token row (b*T + t)*N + n of a tensor laid out (B, [modality], T, N, D):
    BATCH_STRIDE / OFFSET are the batch stride and modality offset counted in token rows."""
    frame = rows // N
    return (frame // T).to(tl.int64) * BATCH_STRIDE + OFFSET + ((frame % T) * N + rows % N)


@triton.jit
def _patch_project_kernel(
    x_ptr, w_ptr, add_ptr, out_ptr, ROWS, N, T, D, K, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS,
    OUT_BATCH_STRIDE, OUT_OFFSET, ACC: tl.constexpr, DOT: tl.constexpr, OPERAND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < ROWS
    feat_mask = feats < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        src = _patch_columns(rows, ks, N, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS)
        a = tl.load(x_ptr + src, mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(OPERAND)
        w = tl.load(w_ptr + ks[:, None] * D + feats[None, :], mask=k_mask[:, None] & feat_mask[None, :],
                    other=0.0).to(OPERAND)
        acc += tl.dot(a, w, input_precision=DOT, out_dtype=ACC)
    mask = row_mask[:, None] & feat_mask[None, :]
    shift_rows = ((rows // N) % T) * N + rows % N
    acc += tl.load(add_ptr + shift_rows[:, None] * D + feats[None, :], mask=mask, other=0.0).to(ACC)
    dst = _token_offsets(rows, N, T, OUT_BATCH_STRIDE, OUT_OFFSET)
    tl.store(out_ptr + dst[:, None] * D + feats[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _patch_grad_input_kernel(
    grad_ptr, w_ptr, gx_ptr, ROWS, N, T, D, K, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS,
    G_BATCH_STRIDE, G_OFFSET, ACC: tl.constexpr, DOT: tl.constexpr, OPERAND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < ROWS
    k_mask = ks < K
    g_rows = _token_offsets(rows, N, T, G_BATCH_STRIDE, G_OFFSET)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        feat_mask = feats < D
        g = tl.load(grad_ptr + g_rows[:, None] * D + feats[None, :], mask=row_mask[:, None] & feat_mask[None, :],
                    other=0.0).to(OPERAND)
        w = tl.load(w_ptr + ks[None, :] * D + feats[:, None], mask=feat_mask[:, None] & k_mask[None, :],
                    other=0.0).to(OPERAND)
        acc += tl.dot(g, w, input_precision=DOT, out_dtype=ACC)
    src = _patch_columns(rows, ks, N, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS)
    tl.atomic_add(gx_ptr + src, acc, mask=row_mask[:, None] & k_mask[None, :])


@triton.jit
def _patch_grad_weight_kernel(
    grad_ptr, x_ptr, gw_ptr, ROWS, N, T, D, K, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS,
    G_BATCH_STRIDE, G_OFFSET, ACC: tl.constexpr, DOT: tl.constexpr, OPERAND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k_mask = ks < K
    feat_mask = feats < D
    acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=ACC)
    for m0 in range(0, ROWS, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < ROWS
        src = _patch_columns(rows, ks, N, GRID_W, CELLS, CELL, SCALE, PATCH, IN_H, IN_W, CHANNELS)
        a = tl.load(x_ptr + src, mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(OPERAND)
        g_rows = _token_offsets(rows, N, T, G_BATCH_STRIDE, G_OFFSET)
        g = tl.load(grad_ptr + g_rows[:, None] * D + feats[None, :], mask=row_mask[:, None] & feat_mask[None, :],
                    other=0.0).to(OPERAND)
        acc += tl.dot(tl.trans(a), g, input_precision=DOT, out_dtype=ACC)
    tl.store(gw_ptr + ks[:, None] * D + feats[None, :], acc, mask=k_mask[:, None] & feat_mask[None, :])


class _Geometry:
    """How one modality's patches are read (see csrc/cpu/compressed_patch_embed.h, PatchGeometry)."""

    def __init__(self, x, height, width, patch):
        self.frames_total = x.shape[0] * x.shape[1]
        self.time = x.shape[1]
        self.channels, self.in_h, self.in_w = x.shape[2], x.shape[3], x.shape[4]
        self.scale = height // self.in_h
        self.cell = math.gcd(patch, self.scale)
        self.cells, self.patch, self.grid_w = patch // self.cell, patch, width // patch
        self.tokens = (height // patch) * (width // patch)
        self.depth = self.channels * self.cells * self.cells

    def args(self, dim):
        return (self.frames_total * self.tokens, self.tokens, self.time, dim, self.depth, self.grid_w, self.cells,
                self.cell, self.scale, self.patch, self.in_h, self.in_w, self.channels)


def _audio_geometry(audio_feat):
    """Audio features (B, T, F) as frames of F channels and one 1×1 patch."""
    return _Geometry(audio_feat.view(*audio_feat.shape, 1, 1), 1, 1, 1)


_acc = configs.accumulator


def _meta(x, dim) -> dict:
    """Constexpr arguments and launch options of the three kernels for input x and embedding dim."""
    config = configs.launch("patch_project", dim, x.device, x.dtype)
    return dict(ACC=_acc(x.dtype)[1], DOT=configs.dot_precision(x.dtype, x.device),
                OPERAND=configs.dot_operand(x.dtype, x.device), **config.kwargs())


def presum_weight(weight, geometry):
    """(D, C, P, P) -> E' (D, C (P/c)^2): the weight summed over c×c cells (c = 1: a reshape)."""
    dim, c, cells, cell = weight.shape[0], geometry.channels, geometry.cells, geometry.cell
    return weight.reshape(dim, c, cells, cell, cells, cell).sum((3, 5)).reshape(dim, -1)


def expand_weight_grad(grad, geometry):
    """Adjoint of presum_weight: (D, C (P/c)^2) -> (D, C, P, P)."""
    dim, c, cells, cell = grad.shape[0], geometry.channels, geometry.cells, geometry.cell
    full = grad.reshape(dim, c, cells, 1, cells, 1).expand(dim, c, cells, cell, cells, cell)
    return full.reshape(dim, c, cells * cell, cells * cell)


def _project(x, geometry, weight2d, shift, out, batch_stride, offset):
    rows, dim = geometry.frames_total * geometry.tokens, weight2d.shape[0]
    weight_kd = weight2d.t().contiguous()
    meta = _meta(x, dim)
    grid = (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(dim, meta["BLOCK_D"]))
    _patch_project_kernel[grid](x.contiguous(), weight_kd, shift.contiguous(), out, *geometry.args(dim),
                                batch_stride, offset, **meta)


def compressed_patch_embed(iframe, motion, residual, audio_feat, visual, audio, patch, expand_audio):
    """Same contract as torch.ops.vidsel_C.compressed_patch_embed -> (tokens, audio_tokens or empty)."""
    batch, frames, _, height, width = iframe.shape
    dim = visual[0].shape[0]
    replicate = audio_feat is not None and expand_audio
    modalities = 4 if replicate else 3
    tokens = (height // patch) * (width // patch)
    out = torch.empty(batch, modalities, frames, tokens, dim, dtype=iframe.dtype, device=iframe.device)
    slot = frames * tokens  # token rows per (batch, modality)
    for m, x in enumerate((iframe, motion, residual)):
        geometry = _Geometry(x, height, width, patch)
        shift = visual[3 * m + 2].reshape(frames * tokens, dim) + visual[3 * m + 1]
        _project(x, geometry, presum_weight(visual[3 * m], geometry), shift, out, modalities * slot, m * slot)
    if audio_feat is None:
        return out, iframe.new_empty(0)
    audio_tokens = torch.empty(batch, frames, dim, dtype=iframe.dtype, device=iframe.device)
    _project(audio_feat, _audio_geometry(audio_feat), audio[0], audio[2] + audio[1], audio_tokens, frames, 0)
    if replicate:
        out[:, 3].copy_(audio_tokens.unsqueeze(2).expand(batch, frames, tokens, dim))
    return out, audio_tokens


def _modality_backward(x, geometry, weight2d, grad, batch_stride, offset, need_input):
    """grad: contiguous (B, M, T, N, D) -> (grad_x or None, grad of weight2d (D, K)) for one modality."""
    acc_torch = _acc(x.dtype)[0]
    dim, depth = weight2d.shape
    rows = geometry.frames_total * geometry.tokens
    x = x.contiguous()
    weight_kd = weight2d.t().contiguous()
    meta = _meta(x, dim)
    grad_x = None
    if need_input:
        grad_x = torch.zeros(x.shape, dtype=acc_torch, device=x.device)
        grid = (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(depth, meta["BLOCK_K"]))
        _patch_grad_input_kernel[grid](grad, weight_kd, grad_x, *geometry.args(dim), batch_stride, offset, **meta)
        grad_x = grad_x.to(x.dtype)
    grad_w = torch.empty(depth, dim, dtype=acc_torch, device=x.device)
    grid = (triton.cdiv(depth, meta["BLOCK_K"]), triton.cdiv(dim, meta["BLOCK_D"]))
    _patch_grad_weight_kernel[grid](grad, x, grad_w, *geometry.args(dim), batch_stride, offset, **meta)
    return grad_x, grad_w.t().to(x.dtype)


def compressed_patch_embed_backward(grad_tokens, grad_audio, iframe, motion, residual, audio_feat, visual, audio, patch, expand_audio,
                   input_mask):
    """Same contract as torch.ops.vidsel_C.compressed_patch_embed_backward -> 16 gradients."""
    batch, modalities, frames, tokens, dim = grad_tokens.shape
    height, width = iframe.shape[-2:]
    grad_tokens = grad_tokens.contiguous()
    input_grads, param_grads = [iframe.new_empty(0) for _ in range(4)], []  # distinct: outputs may not alias
    slot = frames * tokens  # token rows per (batch, modality)
    for m, x in enumerate((iframe, motion, residual)):
        geometry = _Geometry(x, height, width, patch)
        grad_x, grad_w = _modality_backward(x, geometry, presum_weight(visual[3 * m], geometry), grad_tokens,
                                            modalities * slot, m * slot, input_mask[m])
        if grad_x is not None:
            input_grads[m] = grad_x
        grad_m = grad_tokens[:, m]
        param_grads += [expand_weight_grad(grad_w, geometry), grad_m.sum((0, 1, 2)), grad_m.sum(0)]
    if audio_feat is None:
        return input_grads + param_grads + [iframe.new_empty(0) for _ in range(3)]
    grad_a = grad_audio.to(_acc(iframe.dtype)[0])
    if expand_audio:
        grad_a = grad_a + grad_tokens[:, 3].to(grad_a.dtype).sum(2)
    grad_a = grad_a.to(iframe.dtype).contiguous()
    grad_feat, grad_weight = _modality_backward(audio_feat, _audio_geometry(audio_feat), audio[0], grad_a, frames, 0,
                                                input_mask[3])
    if grad_feat is not None:
        input_grads[3] = grad_feat
    return input_grads + param_grads + [grad_weight, grad_a.sum((0, 1)), grad_a.sum(0)]


def aot_specs():
    """GPU launches of the projection and both gradients: every dtype, dot precision and table entry."""
    specs = []
    for dtype in configs.DTYPES:
        name, (acc_torch, acc_tl) = configs.TL_NAMES[dtype], configs.accumulator(dtype)
        grad = "*" + configs.TL_NAMES[acc_torch]
        for precision, suffix in configs.gemm_variants(dtype):
            for config in configs.gpu_table("patch_project", dtype, precision).values():
                common = dict(config=config, data=name, variant=suffix, aligned=("D",),
                              tensor_cores=configs.requires_tensor_cores(dtype, precision),
                              constexprs=dict(config.blocks, ACC=acc_tl, DOT=precision,
                                              OPERAND=configs.dot_operand(dtype, "cuda")))
                specs += [
                    configs.AotSpec(_patch_project_kernel, "compressed_patch_embed", name, **common),
                    configs.AotSpec(_patch_grad_input_kernel, "compressed_patch_embed", name,
                                    types=dict(gx_ptr=grad), **common),
                    configs.AotSpec(_patch_grad_weight_kernel, "compressed_patch_embed", name,
                                    types=dict(gw_ptr=grad), **common),
                ]
    return specs
