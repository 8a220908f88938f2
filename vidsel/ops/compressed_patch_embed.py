"""`compressed_patch_embed`: MM-ViT's tokenizer of a compressed clip (MM-ViT §3.2, eq. 1–4).

One call embeds the I-frames, motion vectors and residuals (patchify + linear projection + bias +
spatiotemporal positional encoding, eq. 1–3) and the audio features (linear 128 -> D + temporal
positional encoding, eq. 4, replicated over the N patch positions)::

    params = vidsel.nn.CompressedPatchEmbed(dim=768, patch=16, num_frames=8, size=224).params()
    tokens = vidsel.ops.compressed_patch_embed(iframe, motion, residual, audio_feat, params)
    # (B, 4, T, N, D): modalities I, M, R, A
    visual, audio = vidsel.ops.compressed_patch_embed(..., expand_audio=False)
    # (B, 3, T, N, D) and (B, T, D): attention can broadcast audio instead of holding N copies

Motion at codec block granularity. The codec stores one vector per g×g block (`motion (B, T, 2, H/g,
W/g)`). On such a piecewise-constant field a patch's projection only needs the sum of the weights over
each constant cell: with c = gcd(P, g), E_M · M_(p,t) = E'_M · M'_(p,t) where E'_M (D, 2, P/c, P/c) sums
E_M over c×c cells and M'_(p,t) holds the (P/c)² cell values, read straight from the block grid. The
fused backends (cpu, triton, cuda) therefore never build the dense H×W flow, and run a GEMM with
K = 2(P/c)² instead of 2P² (32 instead of 512 for g=4, P=16); the reference upsamples (nearest) and
runs the dense convolution. Both agree up to float rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vidsel.ops._dispatch import OpBackends, resolve, run_backend
from vidsel.ops._validation import check_int, check_tensor, refuse_double_backward
from vidsel.reference import compressed_patch_embed as reference

NUM_PARAMS = 12


class CompressedEmbedParams(NamedTuple):
    """Learnable tensors of the compressed patch embedding (D = token dim, P = patch, N = (H/P)(W/P)).

    iframe_weight   (D, 3, P, P)  E_I of eq. 1, Conv2d layout      iframe_bias   (D,)   iframe_pos   (T, N, D)
    motion_weight   (D, 2, P, P)  E_M of eq. 2 (dense-field layout) motion_bias   (D,)   motion_pos   (T, N, D)
    residual_weight (D, 3, P, P)  E_R of eq. 3                     residual_bias (D,)   residual_pos (T, N, D)
    audio_weight    (D, F)        E_A of eq. 4 (F = 128, VGGish)   audio_bias    (D,)   audio_pos    (T, D)

    The pos tensors are full learnable spatiotemporal tables PE(p, t) (temporal PE_A(t) for audio). The
    audio triple may be None when clips carry no audio. All tensors share one dtype and device.
    """

    iframe_weight: Tensor
    iframe_bias: Tensor
    iframe_pos: Tensor
    motion_weight: Tensor
    motion_bias: Tensor
    motion_pos: Tensor
    residual_weight: Tensor
    residual_bias: Tensor
    residual_pos: Tensor
    audio_weight: Optional[Tensor] = None
    audio_bias: Optional[Tensor] = None
    audio_pos: Optional[Tensor] = None


def motion_cell(patch: int, block: int) -> int:
    """Side of the constant cells a patch splits into over a g-block field: gcd(P, g)."""
    return math.gcd(patch, block)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _reference_forward(iframe, motion, residual, audio_feat, visual, audio, patch, expand_audio):
    params = CompressedEmbedParams(*visual, *(audio or [None] * 3))
    tokens, audio_tokens = reference.compressed_patch_embed(iframe, motion, residual, audio_feat, params, patch,
                                                            expand_audio)
    return tokens, _empty(iframe) if audio_tokens is None else audio_tokens


def _reference_backward(grad_tokens, grad_audio, iframe, motion, residual, audio_feat, visual, audio, patch,
                        expand_audio, input_mask):
    params = CompressedEmbedParams(*visual, *(audio or [None] * 3))
    grads = reference.compressed_patch_embed_backward(grad_tokens, grad_audio, [iframe, motion, residual, audio_feat],
                                                      params, patch, expand_audio, input_mask)
    return [_empty(grad_tokens) if g is None else g for g in grads]


# Every backend takes the parameters as two lists: visual (9 tensors) and audio (3, or none without audio).
EMBED = OpBackends("compressed_patch_embed", reference=_reference_forward, triton="compressed_patch_embed")
EMBED_BACKWARD = OpBackends("compressed_patch_embed_backward", reference=_reference_backward,
                            triton="compressed_patch_embed")


@torch.library.custom_op("vidsel::compressed_patch_embed", mutates_args=())
def _embed(
    iframe: Tensor, motion: Tensor, residual: Tensor, audio_feat: Optional[Tensor],
    iframe_weight: Tensor, iframe_bias: Tensor, iframe_pos: Tensor,
    motion_weight: Tensor, motion_bias: Tensor, motion_pos: Tensor,
    residual_weight: Tensor, residual_bias: Tensor, residual_pos: Tensor,
    audio_weight: Optional[Tensor], audio_bias: Optional[Tensor], audio_pos: Optional[Tensor],
    patch: int, expand_audio: bool, impl: str,
) -> tuple[Tensor, Tensor]:
    visual = [iframe_weight, iframe_bias, iframe_pos, motion_weight, motion_bias, motion_pos,
              residual_weight, residual_bias, residual_pos]
    audio = [] if audio_feat is None else [audio_weight, audio_bias, audio_pos]
    return tuple(run_backend(EMBED, impl, iframe, motion, residual, audio_feat, visual, audio, patch, expand_audio))


@_embed.register_fake
def _(iframe, motion, residual, audio_feat, iw, ib, ipos, mw, mb, mpos, rw, rb, rpos, aw, ab, apos,
      patch, expand_audio, impl):
    batch, frames, _, height, width = iframe.shape
    dim, tokens = iw.shape[0], (height // patch) * (width // patch)
    modalities = 4 if audio_feat is not None and expand_audio else 3
    audio_tokens = _empty(iframe) if audio_feat is None else iframe.new_empty(batch, frames, dim)
    return iframe.new_empty(batch, modalities, frames, tokens, dim), audio_tokens


@torch.library.custom_op("vidsel::compressed_patch_embed_backward", mutates_args=())
def _embed_backward(
    grad_tokens: Tensor, grad_audio: Tensor,
    iframe: Tensor, motion: Tensor, residual: Tensor, audio_feat: Optional[Tensor],
    iframe_weight: Tensor, iframe_bias: Tensor, iframe_pos: Tensor,
    motion_weight: Tensor, motion_bias: Tensor, motion_pos: Tensor,
    residual_weight: Tensor, residual_bias: Tensor, residual_pos: Tensor,
    audio_weight: Optional[Tensor], audio_bias: Optional[Tensor], audio_pos: Optional[Tensor],
    patch: int, expand_audio: bool, input_mask: list[bool], impl: str,
) -> list[Tensor]:
    """Gradients of the 16 tensor inputs (empty tensors for absent audio / inputs not in input_mask).

    grad_tokens (B, M, T, N, D) contiguous, grad_audio (B, T, D) (or empty without audio);
    input_mask: which of iframe, motion, residual, audio_feat need a gradient (weights always do).
    """
    visual = [iframe_weight, iframe_bias, iframe_pos, motion_weight, motion_bias, motion_pos,
              residual_weight, residual_bias, residual_pos]
    audio = [] if audio_feat is None else [audio_weight, audio_bias, audio_pos]
    return list(run_backend(EMBED_BACKWARD, impl, grad_tokens, grad_audio, iframe, motion, residual, audio_feat,
                            visual, audio, patch, expand_audio, input_mask))


@_embed_backward.register_fake
def _(grad_tokens, grad_audio, iframe, motion, residual, audio_feat, iw, ib, ipos, mw, mb, mpos, rw, rb, rpos,
      aw, ab, apos, patch, expand_audio, input_mask, impl):
    inputs = [iframe, motion, residual, audio_feat]
    grads = [t.new_empty(t.shape) if t is not None and need else _empty(grad_tokens)
             for t, need in zip(inputs, input_mask)]
    grads += [t.new_empty(t.shape) for t in (iw, ib, ipos, mw, mb, mpos, rw, rb, rpos)]
    grads += [_empty(grad_tokens)] * 3 if audio_feat is None else [t.new_empty(t.shape) for t in (aw, ab, apos)]
    return grads


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:16])
    ctx.patch, ctx.expand_audio, ctx.impl = inputs[16], inputs[17], inputs[18]


def _backward(ctx, grad_tokens, grad_audio):
    saved = ctx.saved_tensors
    has_audio = saved[3] is not None
    if grad_tokens is None:
        grad_tokens = torch.zeros_like(_embed_output_like(saved, ctx.patch, ctx.expand_audio))
    if grad_audio is None or not has_audio:
        grad_audio = saved[0].new_zeros((saved[0].shape[0], saved[0].shape[1], saved[4].shape[0]) if has_audio
                                        else (0,))
    mask = [bool(ctx.needs_input_grad[i]) and saved[i] is not None for i in range(4)]
    grads = _embed_backward(grad_tokens.contiguous(), grad_audio.contiguous(), *saved, ctx.patch,
                            ctx.expand_audio, mask, ctx.impl)
    result = [g if (i >= 4 or mask[i]) and (i < 13 or has_audio) else None for i, g in enumerate(grads)]
    return (*result, None, None, None)


def _embed_output_like(saved, patch, expand_audio):
    iframe, weight = saved[0], saved[4]
    batch, frames, _, height, width = iframe.shape
    modalities = 4 if saved[3] is not None and expand_audio else 3
    return iframe.new_empty(batch, modalities, frames, (height // patch) * (width // patch), weight.shape[0])


_embed.register_autograd(_backward, setup_context=_setup)
refuse_double_backward(_embed_backward, "compressed_patch_embed")


def _forward_flops(iframe_shape, motion_shape, audio_shape, dim, patch, fused: bool) -> int:
    batch, frames, _, height, width = iframe_shape
    rows = batch * frames * (height // patch) * (width // patch)
    cell = motion_cell(patch, height // motion_shape[-2]) if fused else 1
    depth = 3 * patch * patch * 2 + 2 * (patch // cell) ** 2
    audio = 0 if audio_shape is None else batch * frames * audio_shape[-1]
    return 2 * dim * (rows * depth + audio)


@register_flop_formula(torch.ops.vidsel.compressed_patch_embed)
def _embed_flops(iframe_shape, motion_shape, residual_shape, audio_shape, iw_shape, *args, **kwargs) -> int:
    """2 FLOPs per multiply-add of the projections (the fused motion GEMM counts its reduced depth)."""
    patch, impl = args[-3], args[-1]
    return _forward_flops(iframe_shape, motion_shape, audio_shape, iw_shape[0], patch, impl != "reference")


@register_flop_formula(torch.ops.vidsel.compressed_patch_embed_backward)
def _embed_backward_flops(grad_shape, grad_audio_shape, iframe_shape, motion_shape, residual_shape, audio_shape,
                          iw_shape, *args, **kwargs) -> int:
    """Weight gradients always (one forward's worth), input gradients per input_mask (another at most)."""
    patch, mask, impl = args[-4], args[-2], args[-1]
    forward = _forward_flops(iframe_shape, motion_shape, audio_shape, iw_shape[0], patch, impl != "reference")
    return forward + (forward * sum(bool(m) for m in mask)) // 4


def _check_params(params, iframe: Tensor, patch: int, tokens: int, audio_feat: Tensor | None) -> CompressedEmbedParams:
    if not isinstance(params, CompressedEmbedParams):
        raise TypeError(f"params must be a vidsel.ops.CompressedEmbedParams, got {type(params).__name__}")
    frames = iframe.shape[1]
    dim = params.iframe_weight.shape[0] if isinstance(params.iframe_weight, Tensor) else None
    if dim == 0:
        raise ValueError("params.iframe_weight must have an embedding width D >= 1, got D = 0")
    for name, channels in (("iframe", 3), ("motion", 2), ("residual", 3)):
        _param(params, f"{name}_weight", iframe, (dim, channels, patch, patch))
        _param(params, f"{name}_bias", iframe, (dim,))
        _param(params, f"{name}_pos", iframe, (frames, tokens, dim))
    if audio_feat is not None:
        if params.audio_weight is None:
            raise ValueError("audio_feat is given but params.audio_weight/audio_bias/audio_pos are None")
        # Checked here for every backend: a kernel would read F columns of a narrower weight.
        _param(params, "audio_weight", iframe, (dim, audio_feat.shape[-1]))
        _param(params, "audio_bias", iframe, (dim,))
        _param(params, "audio_pos", iframe, (frames, dim))
    return params


def _param(params, name: str, iframe: Tensor, shape) -> None:
    value = check_tensor(f"params.{name}", getattr(params, name), floating=True, like=iframe, shape=shape)
    if value.dtype != iframe.dtype:
        raise TypeError(f"params.{name} has dtype {value.dtype} but iframe has {iframe.dtype}")


def _check_inputs(iframe, motion, residual, audio_feat, patch):
    check_tensor("iframe", iframe, ndim=5, floating=True)
    batch, frames, channels, height, width = iframe.shape
    check_tensor("iframe", iframe, shape=(None, None, 3, None, None))
    check_int("patch", patch, 1)
    if batch == 0 or frames == 0:
        raise ValueError(f"iframe must have B >= 1 and T >= 1, got shape {tuple(iframe.shape)}")
    if height % patch or width % patch or height == 0 or width == 0:
        raise ValueError(f"iframe height and width must be positive multiples of patch={patch}, got {height}x{width}")
    for name, value in (("motion", motion), ("residual", residual)):
        check_tensor(name, value, ndim=5, floating=True, like=iframe)
        if value.dtype != iframe.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but iframe has {iframe.dtype}")
    check_tensor("residual", residual, shape=(batch, frames, 3, height, width))
    check_tensor("motion", motion, shape=(batch, frames, 2, None, None))
    mh, mw = motion.shape[-2:]
    if mh == 0 or mw == 0 or height % mh or width % mw or height // mh != width // mw:
        raise ValueError(
            f"motion must have shape (B, T, 2, H/g, W/g) for one block size g dividing H={height} and W={width}, "
            f"got {tuple(motion.shape)}")
    if audio_feat is not None:
        check_tensor("audio_feat", audio_feat, ndim=3, floating=True, like=iframe, shape=(batch, frames, None))
        if audio_feat.dtype != iframe.dtype:
            raise TypeError(f"audio_feat has dtype {audio_feat.dtype} but iframe has {iframe.dtype}")


def compressed_patch_embed(
    iframe: Tensor,
    motion: Tensor,
    residual: Tensor,
    audio_feat: Tensor | None,
    params: CompressedEmbedParams,
    *,
    patch: int = 16,
    expand_audio: bool = True,
    impl: str = "auto",
):
    """Token embeddings of a compressed clip, MM-ViT eq. 1–4 (§3.2).

    Args:
        iframe: (B, T, 3, H, W) I-frames (H, W multiples of patch).
        motion: (B, T, 2, H/g, W/g) motion vectors at codec block granularity g (g = 1: dense flow).
        residual: (B, T, 3, H, W) residuals (signed).
        audio_feat: (B, T, F) per-segment audio features (F = 128, VGGish-like), or None (no audio).
        params: CompressedEmbedParams (shapes in its docstring), e.g. `CompressedPatchEmbed.params()`.
        patch: patch side P; N = (H/P)(W/P) tokens per frame and modality.
        expand_audio: True -> one tensor with the audio token replicated over the N positions;
            False -> visual tokens and the (B, T, D) audio tokens separately (no N copies).
        impl: "auto" | "reference" | "cpu" | "triton" | "cuda".

    Returns:
        expand_audio=True: tokens (B, 4, T, N, D), modalities (I, M, R, A) — (B, 3, T, N, D) when
        audio_feat is None. expand_audio=False: (visual (B, 3, T, N, D), audio (B, T, D) or None).
    """
    _check_inputs(iframe, motion, residual, audio_feat, patch)
    height, width = iframe.shape[-2:]
    params = _check_params(params, iframe, patch, (height // patch) * (width // patch), audio_feat)
    if not isinstance(expand_audio, bool):
        raise TypeError(f"expand_audio must be a bool, got {type(expand_audio).__name__}")
    impl = resolve("compressed_patch_embed", impl, iframe.device, EMBED, EMBED_BACKWARD)
    audio_params = list(params[9:]) if audio_feat is not None else [None] * 3
    tokens, audio_tokens = _embed(iframe, motion, residual, audio_feat, *params[:9], *audio_params,
                                  patch, expand_audio, impl)
    if expand_audio:
        return tokens
    return tokens, (audio_tokens if audio_feat is not None else None)
