"""ViT building blocks of the video encoders: patch embedding, attention that also returns the
merging metric, divided space-time block (TimeSformer) and joint space-time block.

Token layout of the divided encoder: a CLS token (B, 1, D) kept apart from the patch tokens
(B, T, L, D). Shapes in the docstrings: B clips, T frames, L patches per frame, D channels,
H heads, C = D / H head channels.

The TESTA visual encoder (TESTA §3.1) is TimeSformer's "divided space-time attention" on BLIP's
ViT-B/16: per block, temporal attention over the T frames of every patch position (followed by
`temporal_fc`), then spatial attention over the L patches of every frame plus a per-frame copy of
CLS (the copies' outputs are averaged back into one CLS), then the MLP over all tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Per-frame 2-D patch embedding: (B, C_in, T, H, W) -> (B, T, L, D), L = (H/P)(W/P)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: Tensor) -> Tensor:
        batch, chans, frames, height, width = video.shape
        frames_first = video.transpose(1, 2).reshape(batch * frames, chans, height, width)
        patches = self.proj(frames_first).flatten(2).transpose(1, 2)  # (B*T, L, D)
        return patches.reshape(batch, frames, -1, patches.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention returning, besides its output, TESTA's merging inputs.

    forward(x (B', N, D), size (B', N) or None, need_importance, need_keys) returns
        out (B', N, D),
        keys (B', N, C) or None: attention keys averaged over heads — the similarity metric (§3.2.2),
        importance (B', N) or None: S_i = sum_{j != i} A_ji averaged over heads (eq. 1).
    With `size`, proportional attention adds log(size_j) to every logit of key j (ToMe), so a
    token standing for s merged tokens gets the attention those s tokens would get.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, size: Tensor | None = None, need_importance: bool = False, need_keys: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        batch, n, dim = x.shape
        qkv_by_token = self.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv_by_token.permute(2, 0, 3, 1, 4).unbind(0)  # (B', H, N, C) each
        bias = None if size is None else size.log().to(q.dtype)[:, None, None, :]
        importance = None
        if need_importance:
            logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            if bias is not None:
                logits = logits + bias
            probs = logits.softmax(dim=-1)
            out = probs @ v
            received = probs.sum(dim=-2) - probs.diagonal(dim1=-2, dim2=-1)  # eq. (1), per head
            importance = received.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(batch, n, dim))
        # Mean over heads read in (B', N, H, C) order: each token's keys are one contiguous row.
        keys = qkv_by_token[:, :, 1].mean(dim=2) if need_keys else None
        return out, keys, importance


class Mlp(nn.Sequential):
    """Linear(D, hidden) -> GELU -> Linear(hidden, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer block, split into its three stages so TESTA can merge between them.

    temporal(x, size, need_importance, need_keys)      -> x, frame keys, frame importance
    spatial(cls, x, size, need_importance, need_keys)  -> cls, x, patch keys, patch importance
    mlp_stage(cls, x)                                  -> cls, x
    (keys are only computed when needed: the metric of a merge that happens.)
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.temporal_norm1 = layer_norm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def temporal(
        self, x: Tensor, size: Tensor | None, need_importance: bool = False, need_keys: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Attention across frames at every patch position.

        x (B, T, L, D); size (B, T, L) tokens each stands for, or None (no proportional attention).
        Returns x (B, T, L, D), frame metric (B, T, C) = keys averaged over patches (§3.2.1: a frame
        token is the mean of its patch tokens) or None, frame importance (B, T) or None.
        """
        batch, frames, patches, dim = x.shape
        per_position = x.transpose(1, 2).reshape(batch * patches, frames, dim)
        position_size = None if size is None else size.transpose(1, 2).reshape(batch * patches, frames)
        out, keys, importance = self.temporal_attn(
            self.temporal_norm1(per_position), position_size, need_importance, need_keys
        )
        out = self.temporal_fc(out).reshape(batch, patches, frames, dim).transpose(1, 2)
        frame_keys = None if keys is None else keys.reshape(batch, patches, frames, -1).mean(dim=1)
        if importance is not None:
            importance = importance.reshape(batch, patches, frames).mean(dim=1)
        return x + out, frame_keys, importance

    def spatial(
        self, cls: Tensor, x: Tensor, size: Tensor | None, need_importance: bool = False, need_keys: bool = True
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Attention within every frame, a copy of CLS prepended to each.

        cls (B, 1, D), x (B, T, L, D), size (B, T, L) or None.
        Returns cls (B, 1, D) (+ mean over frames of the copies' outputs), x (B, T, L, D),
        patch keys (B*T, L, C) or None, patch importance (B*T, L) or None.
        """
        batch, frames, patches, dim = x.shape
        per_frame = torch.cat([cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim),
                               x.reshape(batch * frames, patches, dim)], dim=1)
        token_size = None
        if size is not None:
            cls_size = torch.ones(batch * frames, 1, dtype=size.dtype, device=size.device)
            token_size = torch.cat([cls_size, size.reshape(batch * frames, patches)], dim=1)
        out, keys, importance = self.attn(self.norm1(per_frame), token_size, need_importance, need_keys)
        cls = cls + out[:, 0].reshape(batch, frames, dim).mean(dim=1, keepdim=True)
        x = x + out[:, 1:].reshape(batch, frames, patches, dim)
        if importance is not None:
            importance = importance[:, 1:]
        return cls, x, (None if keys is None else keys[:, 1:]), importance

    def mlp_stage(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """MLP over CLS + all T*L patch tokens: cls (B, 1, D), x (B, T, L, D) -> same shapes."""
        batch, frames, patches, dim = x.shape
        tokens = torch.cat([cls, x.reshape(batch, frames * patches, dim)], dim=1)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens[:, :1], tokens[:, 1:].reshape(batch, frames, patches, dim)


class JointSpaceTimeBlock(nn.Module):
    """Pre-norm ViT block over all 1 + T*L tokens at once (TimeSformer "joint space-time").

    forward(x (B, N, D), size (B, N) or None) -> x (B, N, D), keys (B, N, C). The attention step
    and the MLP step are separate methods so ToMe can merge between them.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attention(self, x: Tensor, size: Tensor | None, need_keys: bool = True) -> tuple[Tensor, Tensor | None]:
        out, keys, _ = self.attn(self.norm1(x), size, need_keys=need_keys)
        return x + out, keys

    def mlp_stage(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """timm-style init: truncated normal(0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_in = module.in_channels * math.prod(module.kernel_size)
        nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(module.bias)
