"""Anchor-based spatial selection (STTS §3.3) in Triton.

  anchor scores      direct float64 window sums (no summed-area table: exact next to huge scores)
  scores backward    every score gathers grad / (h w) of the <= ceil(h/sh) * ceil(w/sw) anchors covering it
  anchor gather      out[f, i, j] = sum_g w[f, g] x[f, top_g + i, left_g + j] (zero weights skipped)
  gather backward    grad_x by the same covering-anchor gather; grad_w[f, g] = <grad[f], x[f, window g]>

No (F, G, h, w, D) tensor is formed. A score-map row must fit one tile (W <= 128); the table walks
the map in tiles of BLOCK_R rows. Offsets are int64 (frames x pixels x features can pass 2**31).
"""

import torch
import triton
import triton.language as tl

from vidsel.kernels import configs

MAX_MAP_SIDE = 128


@triton.jit
def _anchor_mean_kernel(s_ptr, out_ptr, H, W, AH, AW, SH, SW, COLS, G, BLOCK_G: tl.constexpr):
    """Float64 mean of every anchor window, summed directly (out is float64)."""
    frame = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = g < G
    top, left = (g // COLS) * SH, (g % COLS) * SW
    base = s_ptr + frame * H * W
    total = tl.zeros([BLOCK_G], tl.float64)
    for dy in range(0, AH):
        for dx in range(0, AW):
            total += tl.load(base + (top + dy) * W + left + dx, mask=mask, other=0.0).to(tl.float64)
    tl.store(out_ptr + frame * G + g, total / (AH * AW), mask=mask)


@triton.jit
def _covering_anchor(p, q, dy, dx, AH, AW, SH, SW, ROWS, COLS):
    """The (dy, dx)-th candidate anchor covering pixel (p, q): its index, top, left and validity."""
    gy = p // SH - dy
    gx = q // SW - dx
    valid = (gy >= 0) & (gy < ROWS) & (gy * SH + AH > p) & (gx >= 0) & (gx < COLS) & (gx * SW + AW > q)
    return gy * COLS + gx, gy * SH, gx * SW, valid


@triton.jit
def _anchor_scores_backward_kernel(
    grad_ptr, out_ptr, H, W, AH, AW, SH, SW, ROWS, COLS, COVER_H, COVER_W, BLOCK_P: tl.constexpr
):
    frame = tl.program_id(0).to(tl.int64)
    pixel = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = pixel < H * W
    p, q = pixel // W, pixel % W
    acc = tl.zeros([BLOCK_P], dtype=tl.float64)
    for dy in range(0, COVER_H):
        for dx in range(0, COVER_W):
            g, _, _, valid = _covering_anchor(p, q, dy, dx, AH, AW, SH, SW, ROWS, COLS)
            acc += tl.load(grad_ptr + frame * ROWS * COLS + g, mask=mask & valid, other=0.0).to(tl.float64)
    out = acc / (AH * AW)
    tl.store(out_ptr + frame * H * W + pixel, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _anchor_gather_kernel(
    x_ptr, w_ptr, out_ptr, H, W, D, AH, AW, SH, SW, COLS, G,
    ACC_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    blocks = tl.cdiv(AH * AW, BLOCK_P)
    frame = (tl.program_id(0) // blocks).to(tl.int64)
    pos = (tl.program_id(0) % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (pos < AH * AW)[:, None] & (feats < D)[None, :]
    i, j = pos // AW, pos % AW
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=ACC_DTYPE)
    for g in range(0, G):
        weight = tl.load(w_ptr + frame * G + g)
        if weight != 0.0:
            rows = (frame * H + (g // COLS) * SH + i) * W + (g % COLS) * SW + j
            x = tl.load(x_ptr + rows[:, None] * D + feats[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
            acc += weight * x
    out_rows = frame * AH * AW + pos
    tl.store(out_ptr + out_rows[:, None] * D + feats[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _anchor_grad_x_kernel(
    grad_ptr, w_ptr, out_ptr, H, W, D, AH, AW, SH, SW, ROWS, COLS, COVER_H, COVER_W,
    ACC_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    blocks = tl.cdiv(H * W, BLOCK_P)
    frame = (tl.program_id(0) // blocks).to(tl.int64)
    pixel = (tl.program_id(0) % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pixel_mask = pixel < H * W
    feat_mask = feats < D
    p, q = pixel // W, pixel % W
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=ACC_DTYPE)
    for dy in range(0, COVER_H):
        for dx in range(0, COVER_W):
            g, top, left, valid = _covering_anchor(p, q, dy, dx, AH, AW, SH, SW, ROWS, COLS)
            valid = valid & pixel_mask
            weight = tl.load(w_ptr + frame * ROWS * COLS + g, mask=valid, other=0.0)
            rows = frame * AH * AW + (p - top) * AW + (q - left)
            mask = valid[:, None] & feat_mask[None, :]
            grad = tl.load(grad_ptr + rows[:, None] * D + feats[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
            acc += weight[:, None] * grad
    out_rows = frame * H * W + pixel
    tl.store(out_ptr + out_rows[:, None] * D + feats[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=pixel_mask[:, None] & feat_mask[None, :])


@triton.jit
def _anchor_grad_w_kernel(
    grad_ptr, x_ptr, out_ptr, H, W, D, AH, AW, SH, SW, COLS,
    ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    frame = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    G = tl.num_programs(1)
    top, left = (g // COLS) * SH, (g % COLS) * SW
    span = AW * D  # one window row is contiguous in both x and grad
    acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for i in range(0, AH):
        x_row = x_ptr + ((frame * H + top + i) * W + left) * D
        g_row = grad_ptr + (frame * AH + i) * span
        for c0 in range(0, span, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            mask = c < span
            acc += tl.load(g_row + c, mask=mask, other=0.0).to(ACC_DTYPE) * tl.load(
                x_row + c, mask=mask, other=0.0).to(ACC_DTYPE)
    tl.store(out_ptr + frame * G + g, tl.sum(acc, axis=0))


_acc_dtype = configs.accumulator


def _grid_shape(height, width, ah, aw, sh, sw):
    return (height - ah) // sh + 1, (width - aw) // sw + 1


def anchor_scores(scores, ah: int, aw: int, sh: int, sw: int):
    """scores (F, H, W) -> (F, G) anchor means, direct window sums in float64.

    Not a summed-area table: differences of large prefix sums lose small windows next to huge
    (finfo.min-masked) or infinite scores. The float64 means reach half/bfloat16 through float32
    (the interpreter mishandles a direct float64 -> bfloat16 cast).
    """
    frames, height, width = scores.shape
    if width > MAX_MAP_SIDE:
        raise ValueError(f"triton anchor_scores handles score maps up to {MAX_MAP_SIDE} wide, got width {width}")
    scores = scores.contiguous()
    rows, cols = _grid_shape(height, width, ah, aw, sh, sw)
    out = torch.empty(frames, rows * cols, dtype=torch.float64, device=scores.device)
    if frames:
        mean = configs.launch("anchor_mean", 1, scores.device)
        _anchor_mean_kernel[(frames, triton.cdiv(rows * cols, mean["BLOCK_G"]))](
            scores, out, height, width, ah, aw, sh, sw, cols, rows * cols, **mean.kwargs())
    if scores.dtype in (torch.float16, torch.bfloat16):
        out = out.to(torch.float32)
    return out.to(scores.dtype)


def anchor_scores_backward(grad, height: int, width: int, ah: int, aw: int, sh: int, sw: int):
    """grad (F, G) -> (F, H, W)."""
    grad = grad.contiguous()
    rows, cols = _grid_shape(height, width, ah, aw, sh, sw)
    out = torch.empty(grad.shape[0], height, width, dtype=grad.dtype, device=grad.device)
    if grad.shape[0]:
        block_p = configs.launch("anchor_pixels", 1, grad.device)["BLOCK_P"]
        grid = (grad.shape[0], triton.cdiv(height * width, block_p))
        _anchor_scores_backward_kernel[grid](grad, out, height, width, ah, aw, sh, sw, rows, cols,
                                             triton.cdiv(ah, sh), triton.cdiv(aw, sw), BLOCK_P=block_p)
    return out


def anchor_gather(x, weights, ah: int, aw: int, sh: int, sw: int):
    """x (F, H, W, D), weights (F, G) -> (F, h, w, D)."""
    x = x.contiguous()
    frames, height, width, dim = x.shape
    rows, cols = _grid_shape(height, width, ah, aw, sh, sw)
    acc_torch, acc_tl = _acc_dtype(x.dtype)
    weights = weights.to(acc_torch).contiguous()
    out = torch.empty(frames, ah, aw, dim, dtype=x.dtype, device=x.device)
    if out.numel():
        config = configs.launch("anchor_pixels", dim, x.device)
        grid = (frames * triton.cdiv(ah * aw, config["BLOCK_P"]), triton.cdiv(dim, config["BLOCK_D"]))
        _anchor_gather_kernel[grid](x, weights, out, height, width, dim, ah, aw, sh, sw, cols, rows * cols,
                                    ACC_DTYPE=acc_tl, **config.kwargs())
    return out


def anchor_gather_backward(grad, x, weights, sh: int, sw: int, need_grad_x: bool, need_grad_weights: bool):
    """grad (F, h, w, D) -> grad_x (F, H, W, D) or (0,), grad_weights (F, G) or (0,)."""
    grad, x = grad.contiguous(), x.contiguous()
    frames, height, width, dim = x.shape
    ah, aw = grad.shape[1:3]
    rows, cols = _grid_shape(height, width, ah, aw, sh, sw)
    acc_torch, acc_tl = _acc_dtype(x.dtype)
    grad_x, grad_w = x.new_empty(0), weights.new_empty(0)
    if need_grad_x:
        grad_x = torch.empty_like(x)
        if grad_x.numel():
            config = configs.launch("anchor_pixels", dim, x.device)
            grid = (frames * triton.cdiv(height * width, config["BLOCK_P"]), triton.cdiv(dim, config["BLOCK_D"]))
            _anchor_grad_x_kernel[grid](grad, weights.to(acc_torch).contiguous(), grad_x, height, width, dim, ah, aw,
                                        sh, sw, rows, cols, triton.cdiv(ah, sh), triton.cdiv(aw, sw),
                                        ACC_DTYPE=acc_tl, **config.kwargs())
    if need_grad_weights:
        grad_w = torch.empty(frames, rows * cols, dtype=acc_torch, device=x.device)
        if frames:
            _anchor_grad_w_kernel[(frames, rows * cols)](grad, x, grad_w, height, width, dim, ah, aw, sh, sw, cols,
                                                         ACC_DTYPE=acc_tl,
                                                         **configs.launch("anchor_dot", 1, x.device).kwargs())
        grad_w = grad_w.to(weights.dtype)
    return grad_x, grad_w


def aot_specs():
    """GPU launches of every kernel in every dtype."""
    mean, dot = configs.GPU["anchor_mean"][1], configs.GPU["anchor_dot"][1]
    pixels = configs.GPU["anchor_pixels"][max(configs.GPU["anchor_pixels"])]
    specs = []
    for dtype in configs.DTYPES:
        name, acc = configs.TL_NAMES[dtype], configs.accumulator(dtype)
        acc_name = configs.TL_NAMES[acc[0]]
        tiles = dict(BLOCK_P=pixels["BLOCK_P"], BLOCK_D=pixels["BLOCK_D"], ACC_DTYPE=acc[1])
        specs += [
            configs.AotSpec(_anchor_mean_kernel, "anchor_select", name, mean, dict(BLOCK_G=mean["BLOCK_G"]),
                            types=dict(out_ptr="*fp64"), data=name),
            configs.AotSpec(_anchor_scores_backward_kernel, "anchor_select", name, pixels,
                            dict(BLOCK_P=pixels["BLOCK_P"]), data=name),
            configs.AotSpec(_anchor_gather_kernel, "anchor_select", name, pixels, tiles,
                            types=dict(w_ptr="*" + acc_name), data=name, aligned=("D",)),
            configs.AotSpec(_anchor_grad_x_kernel, "anchor_select", name, pixels, tiles,
                            types=dict(w_ptr="*" + acc_name), data=name, aligned=("D",)),
            configs.AotSpec(_anchor_grad_w_kernel, "anchor_select", name, dot,
                            dict(ACC_DTYPE=acc[1], BLOCK=dot["BLOCK"]), types=dict(out_ptr="*" + acc_name), data=name),
        ]
    return specs
