"""Attention layers of MM-ViT (§3.3): joint, factorised temporal / spatial, cross-modal (eq. 16–20),
local windows and the window convolution of MM-ViT IV.

Token layout shared by every layer: a CLS token `cls` (B, 1, D) kept apart from the modality tokens
`x` (B, S, T, N, D) (S modalities, T segments, N = h·w patches per frame in row-major order, D channels).
Every layer is pre-norm with a residual connection and maps (cls, x) -> (cls, x) of the same shapes.
Projections are shared across modalities: eq. 5–7 give W^l_Q, W^l_K, W^l_V one per layer l, none per s.

Groupings (einops patterns) of the factorised layers:
  temporal, within each modality (III, IV)   b s (w f) n d -> (b s w n) f d     (F = f frames per window)
  temporal, across modalities (II, eq. 9)    b s t n d     -> (b n) (s t) d
  spatial, within each modality (III, IV)    b s t (gh wh gw ww) d -> (b s t gh gw) (wh ww) d
  spatial, across modalities (II, eq. 10)    b s t n d     -> (b t) (s n) d
  cross-modal (III, IV; eq. 16)              b s t n d     -> (b t n) s d
CLS joins every spatial group as a prepended copy; the copies' outputs are averaged back (TimeSformer).
Attention runs through F.scaled_dot_product_attention; co-attention gathers the other modalities' keys
instead of masking, so no dense mask is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

CROSS_MODAL_KINDS = ("merged", "coatt", "shift")


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class MultiHeadAttention(nn.Module):
    """MSA (eq. 5–8 with h heads): x (B', L, D) -> (B', L, D), one fused qkv projection, SDPA, output proj."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B', L, D) -> q, k, v each (B', h, L, D/h)."""
        return rearrange(self.qkv(x), "b l (three h c) -> three b h l c", three=3, h=self.num_heads).unbind(0)

    def merge_heads(self, out: Tensor) -> Tensor:
        """(B', h, L, D/h) -> output projection of the concatenated heads (B', L, D)."""
        return self.proj(rearrange(out, "b h l c -> b l (h c)"))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.heads(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v))


class Mlp(nn.Module):
    """Eq. 11 / 15: z = MLP(LN(y)) + y on CLS and every modality token."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = layer_norm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def _mlp(self, t: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(t))))

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return cls + self._mlp(cls), x + self._mlp(x)


class JointAttention(nn.Module):
    """MM-ViT I (eq. 5–8): every token attends to all 1 + S·T·N tokens (CLS first)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = layer_norm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, modalities, frames, patches, dim = x.shape
        tokens = torch.cat([cls, rearrange(x, "b s t n d -> b (s t n) d")], dim=1)
        out = self.attn(self.norm(tokens))
        body = rearrange(out[:, 1:], "b (s t n) d -> b s t n d", s=modalities, t=frames)
        return cls + out[:, :1], x + body


class TemporalAttention(nn.Module):
    """MSA_time (eq. 9 / 12) followed by a linear layer (TimeSformer's temporal_fc), residual.

    across_modalities: attend over all S·T tokens at one patch position (II); else over the frames of
    one modality (III), restricted to windows of `window` consecutive frames when given (IV, F = T/2).
    CLS does not take part (as in TimeSformer's divided attention).
    """

    def __init__(self, dim: int, num_heads: int, across_modalities: bool = False, window: int | None = None):
        super().__init__()
        if across_modalities and window is not None:
            raise ValueError("temporal windows are defined per modality (across_modalities=False)")
        self.across_modalities, self.window = across_modalities, window
        self.norm = layer_norm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.fc = nn.Linear(dim, dim)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, modalities, frames, patches, _ = x.shape
        if self.across_modalities:
            groups = rearrange(self.norm(x), "b s t n d -> (b n) (s t) d")
            out = rearrange(self.attn(groups), "(b n) (s t) d -> b s t n d", b=batch, s=modalities)
        else:
            window = self.window or frames
            if frames % window:
                raise ValueError(f"T={frames} frames must be a multiple of the temporal window {window}")
            groups = rearrange(self.norm(x), "b s (w f) n d -> (b s w n) f d", f=window)
            out = rearrange(self.attn(groups), "(b s w n) f d -> b s (w f) n d", b=batch, s=modalities, n=patches)
        return cls, x + self.fc(out)


class SpatialAttention(nn.Module):
    """MSA_space (eq. 10 / 14), residual; a copy of CLS joins every group and the copies are averaged.

    across_modalities: attend over all S·N tokens of one frame (II); else over the N patches of one
    modality and frame (III), or over non-overlapping windows of `window` = (wh, ww) patches (IV,
    M = N/4: 7×7 windows on the 14×14 grid). `grid` = (h, w) patches per frame.
    """

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], across_modalities: bool = False,
                 window: tuple[int, int] | None = None):
        super().__init__()
        if across_modalities and window is not None:
            raise ValueError("spatial windows are defined per modality (across_modalities=False)")
        window = window or grid
        if grid[0] % window[0] or grid[1] % window[1]:
            raise ValueError(f"the patch grid {grid} must be a multiple of the spatial window {window}")
        self.grid, self.window, self.across_modalities = grid, window, across_modalities
        self.norm = layer_norm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)

    def _group(self, x: Tensor) -> Tensor:
        if self.across_modalities:
            return rearrange(x, "b s t n d -> (b t) (s n) d")
        return rearrange(x, "b s t (gh wh gw ww) d -> (b s t gh gw) (wh ww) d", wh=self.window[0],
                         gw=self.grid[1] // self.window[1], ww=self.window[1])

    def _ungroup(self, out: Tensor, batch: int, modalities: int) -> Tensor:
        if self.across_modalities:
            return rearrange(out, "(b t) (s n) d -> b s t n d", b=batch, s=modalities)
        return rearrange(out, "(b s t gh gw) (wh ww) d -> b s t (gh wh gw ww) d", b=batch, s=modalities,
                         gh=self.grid[0] // self.window[0], gw=self.grid[1] // self.window[1], wh=self.window[0])

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, modalities, frames, patches, dim = x.shape
        if patches != self.grid[0] * self.grid[1]:
            raise ValueError(f"x has N={patches} patches, this layer was built for a {self.grid} grid")
        groups = self._group(self.norm(x))
        per_batch = groups.shape[0] // batch
        cls_copies = self.norm(cls).expand(batch, per_batch, dim).reshape(batch * per_batch, 1, dim)
        out = self.attn(torch.cat([cls_copies, groups], dim=1))
        cls_out = out[:, 0].reshape(batch, per_batch, dim).mean(dim=1, keepdim=True)
        return cls + cls_out, x + self._ungroup(out[:, 1:], batch, modalities)


def shift_merge(v: Tensor) -> Tensor:
    """Eq. 17–20 on values v (..., S, D): r^(s_i) = v_i^(s_1) ‖ … ‖ v_i^(s_S) + v^(s_i).

    Each v^(s) is split into S equal portions; modality i receives portion i of every modality,
    concatenated in modality order, plus its own value (the residual of eq. 17–20). D % S == 0.
    """
    modalities = v.shape[-2]
    if v.shape[-1] % modalities:
        raise ValueError(f"shift-merge needs D={v.shape[-1]} divisible by the number of modalities {modalities}")
    return rearrange(v, "... j (i c) -> ... i (j c)", i=modalities) + v


class CrossModalAttention(nn.Module):
    """MCA (eq. 13) over the S tokens at each (p, t), a linear layer after it, residual.

    kind "merged" (eq. 16, s' = S): every modality's query attends to the keys and values of all S.
    kind "coatt" (s' = S \\ {s}): a query attends only to the other modalities (needs S >= 2).
    kind "shift" (eq. 17–20): no queries or keys; values are split into S portions and exchanged
    across modalities (plus the value itself), then the output projection.
    """

    def __init__(self, dim: int, num_heads: int, kind: str = "merged"):
        super().__init__()
        if kind not in CROSS_MODAL_KINDS:
            raise ValueError(f"kind must be one of {CROSS_MODAL_KINDS}, got {kind!r}")
        self.kind = kind
        self.norm = layer_norm(dim)
        if kind == "shift":
            self.value, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            self.attn = MultiHeadAttention(dim, num_heads)
        self.fc = nn.Linear(dim, dim)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, modalities, frames, patches, dim = x.shape
        if self.kind == "coatt" and modalities < 2:
            raise ValueError("co-attention (s' = S \\ {s}) needs at least 2 modalities")
        if self.kind == "shift":
            values = rearrange(self.value(self.norm(x)), "b s t n d -> b t n s d")
            out = rearrange(self.proj(shift_merge(values)), "b t n s d -> b s t n d")
            return cls, x + self.fc(out)
        groups = rearrange(self.norm(x), "b s t n d -> (b t n) s d")
        if self.kind == "merged":
            out = self.attn(groups)
        else:
            out = self._co_attention(groups)
        out = rearrange(out, "(b t n) s d -> b s t n d", b=batch, t=frames)
        return cls, x + self.fc(out)

    def _co_attention(self, groups: Tensor) -> Tensor:
        """groups (B', S, D): query s against the S-1 other modalities' keys, gathered (no mask)."""
        modalities = groups.shape[1]
        q, k, v = self.attn.heads(groups)  # (B', h, S, C)
        others = torch.tensor([[j for j in range(modalities) if j != i] for i in range(modalities)],
                              device=groups.device)  # (S, S-1)
        k_others = rearrange(k[:, :, others], "b h s o c -> (b s) h o c")
        v_others = rearrange(v[:, :, others], "b h s o c -> (b s) h o c")
        out = F.scaled_dot_product_attention(rearrange(q, "b h s c -> (b s) h 1 c"), k_others, v_others)
        return self.attn.merge_heads(rearrange(out, "(b s) h 1 c -> b h s c", s=modalities))


class WindowConv(nn.Module):
    """MM-ViT IV: x + DWConv(x), a depthwise convolution over each (modality, frame) patch grid.

    kernel = the spatial window (wh, ww), stride 1, "same" padding, so neighbouring windows exchange
    information; one kernel per channel shared across modalities and frames.
    """

    def __init__(self, dim: int, grid: tuple[int, int], kernel: tuple[int, int]):
        super().__init__()
        self.grid = grid
        # "same" padding, the extra row / column of an even kernel at the bottom / right.
        self.padding = (kernel[1] // 2 - (1 - kernel[1] % 2), kernel[1] // 2, kernel[0] // 2 - (1 - kernel[0] % 2),
                        kernel[0] // 2)
        self.conv = nn.Conv2d(dim, dim, kernel, stride=1, groups=dim)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, modalities, frames = x.shape[:3]
        maps = rearrange(x, "b s t (h w) d -> (b s t) d h w", h=self.grid[0])
        out = rearrange(self.conv(F.pad(maps, self.padding)), "(b s t) d h w -> b s t (h w) d", b=batch, s=modalities)
        return cls, x + out
