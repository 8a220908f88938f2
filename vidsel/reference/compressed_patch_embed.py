"""Reference compressed-domain patch embedding (MM-ViT §3.2, eq. 1–4), pure PyTorch.

The clip holds T I-frames I, motion vectors M, residuals R and audio features Φ(A):

    z^I_(p,t) = E_I · I_(p,t) + b_I + PE_I(p,t)      (1)
    z^M_(p,t) = E_M · M_(p,t) + b_M + PE_M(p,t)      (2)
    z^R_(p,t) = E_R · R_(p,t) + b_R + PE_R(p,t)      (3)
    z^A_(t)   = E_A · Φ(A_(t)) + b_A + PE_A(t)       (4)

where X_(p,t) is the flattened P×P patch p of frame t (a Conv2d with stride P). The codec stores motion
at block granularity g (one vector per g×g block); the reference expands it to the dense H×W field by
nearest upsampling, exactly what the paper's M ∈ R^{T×2×H×W} is. The audio token is replicated over the
N patch positions ("z^A_(p,t) = z^A_(p',t)").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_motion(motion: Tensor, height: int, width: int) -> Tensor:
    """(B, T, 2, H/g, W/g) block motion -> (B, T, 2, H, W) piecewise-constant dense field."""
    block = height // motion.shape[-2]
    return motion.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)


def patch_embed(x: Tensor, weight: Tensor, bias: Tensor, pos: Tensor, patch: int) -> Tensor:
    """Eq. 1–3 for one modality: x (B, T, C, H, W), weight (D, C, P, P), bias (D,), pos (T, N, D) -> (B, T, N, D)."""
    batch, frames = x.shape[:2]
    y = F.conv2d(x.flatten(0, 1), weight, bias, stride=patch)  # (B*T, D, H/P, W/P)
    return y.flatten(2).transpose(1, 2).reshape(batch, frames, -1, weight.shape[0]) + pos


def audio_embed(audio_feat: Tensor, weight: Tensor, bias: Tensor, pos: Tensor) -> Tensor:
    """Eq. 4: audio_feat (B, T, 128), weight (D, 128), bias (D,), pos (T, D) -> (B, T, D)."""
    return F.linear(audio_feat, weight, bias) + pos


def compressed_patch_embed(iframe, motion, residual, audio_feat, params, patch: int, expand_audio: bool = True):
    """All four modalities. Shapes as in vidsel.ops.compressed_patch_embed; params: CompressedEmbedParams.

    Returns (tokens, audio_tokens): tokens (B, 4, T, N, D) with the audio token repeated over N when
    expand_audio and audio is present, else (B, 3, T, N, D); audio_tokens (B, T, D) or None.
    """
    height, width = iframe.shape[-2:]
    dense_motion = upsample_motion(motion, height, width)
    visual = [
        patch_embed(iframe, params.iframe_weight, params.iframe_bias, params.iframe_pos, patch),
        patch_embed(dense_motion, params.motion_weight, params.motion_bias, params.motion_pos, patch),
        patch_embed(residual, params.residual_weight, params.residual_bias, params.residual_pos, patch),
    ]
    if audio_feat is None:
        return torch.stack(visual, dim=1), None
    audio = audio_embed(audio_feat, params.audio_weight, params.audio_bias, params.audio_pos)
    if not expand_audio:
        return torch.stack(visual, dim=1), audio
    num_patches = visual[0].shape[2]
    replicated = audio.unsqueeze(2).repeat(1, 1, num_patches, 1)  # (B, T, N, D), N copies
    return torch.stack(visual + [replicated], dim=1), audio


def patch_embed_backward(x: Tensor, weight: Tensor, grad: Tensor, patch: int, need_input: bool):
    """Adjoint of patch_embed: grad (B, T, N, D) -> (grad_x or None, grad_weight, grad_bias, grad_pos)."""
    batch, frames, channels, height, width = x.shape
    grad_maps = grad.flatten(0, 1).transpose(1, 2).reshape(batch * frames, -1, height // patch, width // patch)
    grad_weight = torch.nn.grad.conv2d_weight(x.flatten(0, 1), weight.shape, grad_maps, stride=patch)
    grad_x = None
    if need_input:
        grad_x = torch.nn.grad.conv2d_input(x.flatten(0, 1).shape, weight, grad_maps, stride=patch).view(x.shape)
    return grad_x, grad_weight, grad.sum((0, 1, 2)), grad.sum(0)


def compressed_patch_embed_backward(grad_tokens, grad_audio, inputs, params, patch, expand_audio, input_mask):
    """Gradients of all inputs and params of compressed_patch_embed (None where absent or not wanted).

    grad_tokens (B, 3|4, T, N, D); grad_audio (B, T, D) gradient of the separate audio output (or None).
    Motion's gradient is the dense one summed over every g×g block (adjoint of upsample_motion).
    Returns [iframe, motion, residual, audio_feat] grads + the 12 params' grads in CompressedEmbedParams order.
    """
    iframe, motion, residual, audio_feat = inputs
    height, width = iframe.shape[-2:]
    dense = [iframe, upsample_motion(motion, height, width), residual]
    input_grads, param_grads = [None] * 4, []
    for m, x in enumerate(dense):
        grad_x, *grads = patch_embed_backward(x, params[3 * m], grad_tokens[:, m], patch, input_mask[m])
        input_grads[m], param_grads = grad_x, param_grads + grads
    if input_grads[1] is not None:
        batch, frames, _, mh, mw = motion.shape
        block = height // mh
        input_grads[1] = input_grads[1].view(batch, frames, 2, mh, block, mw, block).sum((4, 6))
    if audio_feat is None:
        return input_grads + param_grads + [None] * 3
    grad_a = grad_audio + grad_tokens[:, 3].sum(2) if expand_audio else grad_audio
    if input_mask[3]:
        input_grads[3] = grad_a @ params.audio_weight
    grad_weight = grad_a.flatten(0, 1).t() @ audio_feat.flatten(0, 1)
    return input_grads + param_grads + [grad_weight, grad_a.sum((0, 1)), grad_a.sum(0)]
