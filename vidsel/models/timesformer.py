"""TimeSformer (Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?",
ICML 2021): the one video ViT of vidsel, used by the TESTA encoder, the STTS TimeSformer variant
and the TimeSformer / joint space-time baselines.

A clip (B, 3, T, H, W) is cut into L = (H/P)(W/P) patches per frame (one 2-D patch embedding
shared by the frames), a CLS token is prepended, and position (per patch) + time (per frame)
embeddings are added. Two attention schemes of the TimeSformer paper:

* "divided" space-time (`DividedSpaceTimeBlock`): per block, temporal attention over the T frames
  of every patch position (followed by `temporal_fc`), then spatial attention over the L patches of
  every frame plus a per-frame copy of CLS (the copies' outputs are averaged back into one CLS),
  then the MLP over all tokens. 8×224², ViT-B/16: 196 GFLOPs, 121.4 M parameters without the head.
* "joint" space-time (`JointSpaceTimeBlock`): a plain ViT block over all 1 + T·L tokens.

The blocks are split into stages (temporal / spatial / MLP, or attention / MLP) so that TESTA can
merge tokens and STTS can select them between stages; `Attention` also returns what merging
needs (keys, attention received). The classification head is optional (`num_classes=None`: the
model returns its normalised tokens, as a visual encoder does).

Token layout: a CLS token (B, 1, D) kept apart from the patch tokens (B, T, L, D). Shapes in the
docstrings: B clips, T frames, L patches per frame, D channels, H heads, C = D / H head channels.
"""


from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidsel.nn import frames_with_cls


class PatchEmbed(nn.Module):
    """Per-frame 2-D patch embedding: (B, C_in, T, H, W) -> (B, T, L, D), L = (H/P)(W/P)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    # Checkpoint names of the STTS TimeSformer (its state_dict says patch_embed.weight / .bias): attribute
    # aliases so tools that walk state_dict keys as attribute paths (torch.distributed.checkpoint) find them.
    @property
    def weight(self) -> Tensor:
        return self.proj.weight

    @property
    def bias(self) -> Tensor:
        return self.proj.bias

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
    """One TimeSformer "divided space-time" block, split into its three stages.

    temporal(x, size, need_importance, need_keys)      -> x, frame keys, frame importance
    spatial(cls, x, size, need_importance, need_keys)  -> cls, x, patch keys, patch importance
    mlp_stage(cls, x)                                  -> cls, x
    forward(cls, x, size=None)                         -> cls, x (the three stages, no metrics)
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

    @property
    def temporal_norm(self) -> nn.Module:
        """The STTS TimeSformer checkpoint's name of temporal_norm1 (see PatchEmbed.weight)."""
        return self.temporal_norm1

    def temporal(
        self, x: Tensor, size: Tensor | None, need_importance: bool = False, need_keys: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Attention across frames at every patch position.

        x (B, T, L, D); size (B, T, L) tokens each stands for, or None (no proportional attention).
        Returns x (B, T, L, D), frame metric (B, T, C) = keys averaged over patches (TESTA §3.2.1: a
        frame token is the mean of its patch tokens) or None, frame importance (B, T) or None.
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
        per_frame, token_size = frames_with_cls(cls, x, size)
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

    def forward(self, cls: Tensor, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The whole block: cls (B, 1, D), x (B, T, L, D) -> same shapes."""
        x = self.temporal(x, size, need_keys=False)[0]
        cls, x = self.spatial(cls, x, size, need_keys=False)[:2]
        return self.mlp_stage(cls, x)


class JointSpaceTimeBlock(nn.Module):
    """Pre-norm ViT block over all 1 + T*L tokens at once (TimeSformer "joint space-time").

    attention(x (B, N, D), size (B, N) or None, need_keys) -> x (B, N, D), keys (B, N, C) or None;
    mlp_stage(x) -> x; forward(x, size=None) -> x runs both (separate so ToMe can merge between).
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

    def forward(self, x: Tensor, size: Tensor | None = None) -> Tensor:
        return self.mlp_stage(self.attention(x, size, need_keys=False)[0])


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


ATTENTIONS = {"divided": DividedSpaceTimeBlock, "joint": JointSpaceTimeBlock}
WEIGHT_INITS = ("vit", "torch")


class TimeSformer(nn.Module):
    """TimeSformer video ViT: patch + position + time embeddings, `depth` blocks, final LayerNorm,
    and an optional linear head on the CLS token.

    forward(clip (B, in_chans, T, H, W)) -> logits (B, num_classes) with a head, else the normalised
    tokens (B, 1 + T·L, D): CLS first, then frame-major patch tokens.

    Args:
        num_frames, img_size, patch_size, in_chans: the clip the model takes (T, H = W, P, channels).
        embed_dim, depth, num_heads, mlp_ratio: D, number of blocks, heads H, MLP width / D.
        attention: "divided" (`DividedSpaceTimeBlock`) or "joint" (`JointSpaceTimeBlock`).
        num_classes: size of the head on CLS, or None for no head.
        weight_init: "vit" — every Linear / Conv truncated-normal and LayerNorm unit (timm's ViT,
            `init_vit_weights`), embeddings drawn first; "torch" — PyTorch's default layer init,
            embeddings drawn last. Both draw the CLS / position / time embeddings with
            `trunc_normal_(std=0.02)`; the order of the draws fixes which weights a seed gives.
    """

    def __init__(self, *, num_frames: int = 8, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 attention: str = "divided", num_classes: int | None = None, weight_init: str = "vit"):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.attention, self.clip_shape = attention, (in_chans, num_frames, img_size, img_size)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        if weight_init == "vit":
            self._init_embeddings()
        self.blocks = nn.ModuleList(ATTENTIONS[attention](embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = layer_norm(embed_dim)
        self.head = None if num_classes is None else nn.Linear(embed_dim, num_classes)
        if weight_init == "vit":
            self.apply(init_vit_weights)
        else:
            self._init_embeddings()

    def _init_embeddings(self) -> None:
        for param in (self.cls_token, self.pos_embed, self.time_embed):
            nn.init.trunc_normal_(param, std=0.02)

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor]:
        """A random clip (B, in_chans, T, H, W) on the model's device (meta models give meta tensors)."""
        return (torch.randn(batch_size, *self.clip_shape, device=self.cls_token.device),)

    def embed(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        """clip (B, in_chans, T, H, W) -> cls (B, 1, D) and patch tokens (B, T, L, D), each with
        its position embedding, the patches also with their frame's time embedding."""
        if clip.dim() != 5 or tuple(clip.shape[1:]) != self.clip_shape:
            raise ValueError(
                f"clip must have shape (B, {', '.join(map(str, self.clip_shape))}), got {tuple(clip.shape)}"
            )
        x = self.patch_embed(clip) + self.pos_embed[:, None, 1:] + self.time_embed[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], 1, -1)
        return cls, x

    def final_tokens(self, cls: Tensor, x: Tensor) -> Tensor:
        """The final LayerNorm over CLS and the patches: cls (B, 1, D), x (B, T, L, D) -> (B, 1 + T·L, D)."""
        return self.norm(torch.cat([cls, x.flatten(1, 2)], dim=1))

    def forward_features(self, clip: Tensor) -> Tensor:
        """clip (B, in_chans, T, H, W) -> normalised tokens (B, 1 + T·L, D)."""
        cls, x = self.embed(clip)
        if self.attention == "joint":
            tokens = torch.cat([cls, x.flatten(1, 2)], dim=1)
            for block in self.blocks:
                tokens = block(tokens)
            return self.norm(tokens)
        for block in self.blocks:
            cls, x = block(cls, x)
        return self.final_tokens(cls, x)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Normalised tokens (B, N, D) -> logits (B, num_classes) from the CLS token."""
        if self.head is None:
            raise ValueError("this TimeSformer has no head (built with num_classes=None)")
        return self.head(tokens[:, 0])

    def forward(self, clip: Tensor) -> Tensor:
        tokens = self.forward_features(clip)
        return tokens if self.head is None else self.forward_head(tokens)
