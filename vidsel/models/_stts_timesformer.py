"""Compact divided space-time TimeSformer (Bertasius et al., ICML 2021) for the STTS variant.

ViT-B/16 per frame (patch embedding shared by frames, one class token), position and time
embeddings, and blocks of temporal attention (over the T frames at each patch position, followed by
temporal_fc), spatial attention (over the patches of each frame with the class token copied per
frame, the copies averaged back) and an MLP. 8×224² ViT-B: 196 GFLOPs (fvcore convention).

Kept separate from the TESTA encoder on purpose: the STTS selectors need the (T, H, W) grid between
blocks, nothing else; the block takes it as an argument so the grid may shrink from block to block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention: (B, L, D) -> (B, L, D), via scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DividedBlock(nn.Module):
    """Temporal attention, then spatial attention, then MLP (TimeSformer "divided space-time").

    forward(x (B, 1 + T·N, D), thw=(T, H, W)) -> (B, 1 + T·N, D), N = H·W.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.temporal_norm = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> Tensor:
        batch, _, dim = x.shape
        frames, patches = thw[0], thw[1] * thw[2]
        cls, tokens = x[:, :1], x[:, 1:]
        # temporal attention: each patch position attends over the frames
        along_time = tokens.reshape(batch, frames, patches, dim).transpose(1, 2).reshape(batch * patches, frames, dim)
        temporal = self.temporal_fc(self.temporal_attn(self.temporal_norm(along_time)))
        tokens = tokens + temporal.reshape(batch, patches, frames, dim).transpose(1, 2).reshape(batch, -1, dim)
        # spatial attention: the patches of each frame plus a copy of the class token
        cls_copies = cls.expand(batch, frames, dim).reshape(batch * frames, 1, dim)
        per_frame = torch.cat([cls_copies, tokens.reshape(batch * frames, patches, dim)], dim=1)
        spatial = self.attn(self.norm1(per_frame))
        cls_update = spatial[:, 0].reshape(batch, frames, dim).mean(dim=1, keepdim=True)
        x = torch.cat([cls + cls_update, tokens + spatial[:, 1:].reshape(batch, frames * patches, dim)], dim=1)
        return x + self.mlp(self.norm2(x))


class TimeSformer(nn.Module):
    """Divided space-time video transformer; `embed` and `classify` are used by STTSTimeSformer."""

    def __init__(self, *, num_frames=8, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 num_classes=400):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.blocks = nn.ModuleList(DividedBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        for parameter in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(parameter, std=0.02)

    def embed(self, video: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """(B, 3, T, H, W) -> tokens (B, 1 + T·h·w, D) with position + time embeddings, (T, h, w)."""
        batch, _, frames = video.shape[:3]
        patches = self.patch_embed(video.transpose(1, 2).flatten(0, 1))  # (B·T, D, h, w)
        height, width = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # (B·T, h·w, D)
        dim = patches.shape[-1]
        patches = patches + self.pos_embed[:, 1:]
        patches = patches.reshape(batch, frames, height * width, dim) + self.time_embed[:, :frames, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, 1, dim)
        return torch.cat([cls, patches.reshape(batch, -1, dim)], dim=1), (frames, height, width)

    def classify(self, x: Tensor) -> Tensor:
        """(B, 1 + L, D) -> logits (B, num_classes) from the normalised class token."""
        return self.head(self.norm(x)[:, 0])

    def forward(self, video: Tensor) -> Tensor:
        x, thw = self.embed(video)
        for block in self.blocks:
            x = block(x, thw)
        return self.classify(x)
