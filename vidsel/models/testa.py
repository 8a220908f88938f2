"""TESTA visual encoder (Ren et al., 2023) and the joint space-time ViT + ToMe baseline (§4.7).

TESTA §3.2: every divided space-time block (see `vidsel.models.timesformer`) is followed by
  * a Temporal Aggregation Module after temporal attention: T -> T - min(R_T, ⌊(T-1)/2⌋) by
    merging whole frames (frame metric = attention keys averaged over the frame's patches, §3.2.1;
    frame 0 is never merged, as in the reference code where it sits in the CLS slot);
  * a Spatial Aggregation Module after spatial attention: L -> L - min(R_S, ⌊L/2⌋) by merging
    patches within every frame, the attention keys as metric (§3.2.2).
Both use `vidsel.ops.bipartite_match` + `vidsel.ops.merge` (geometry = "alternate" partition, or
"importance", eq. 1), track token sizes, and can bias attention by log(size) (proportional
attention). After M blocks: (T - M·R_T) x (L - M·R_S) tokens when nothing is clamped (§3.2).

Encoders take a clip (B, 3, T, H, W) and return tokens (B, 1 + T_out·L_out, D): CLS first, then
frame-major patch tokens (the visual encoder only; no head). ``forward(clip, return_info=True)``
also returns the per-block token counts and the final sizes.

Registered configs (paper GFLOPs in parentheses, `vidsel.flops` reproduces them):
  testa_f16 R(1,2) (228), testa_f16_noagg (392), testa_f32 R(1,12) (420), testa_f32_noagg (786),
  testa_f96 R(4,8) (1381.4), testa_f96_noagg (2382.5), timesformer_f8 (TimeSformer 8x224², 196),
  joint_f16 (450), tome_joint_f16 r=197 (252).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from vidsel import ops
from vidsel.models._registry import register_model
from vidsel.models.timesformer import TimeSformer
from vidsel.nn import TokenMerging


@dataclass
class ViTConfig:
    """Backbone fields shared by both encoders. Defaults: BLIP ViT-B/16 at 224²."""

    num_frames: int = 16
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    prop_attn: bool = False  # proportional attention: + log(size) on the attention logits
    impl: str = "auto"  # backend of the vidsel ops


@dataclass
class TestaConfig(ViTConfig):
    """TESTA / TimeSformer divided space-time encoder; no aggregation by default."""

    __test__ = False  # not a pytest class despite the name

    r_frames: int = 0  # R_T: frames merged per block (TAM)
    r_patches: int = 0  # R_S: patches merged per frame per block (SAM)
    partition: str = "alternate"  # "alternate" (geometry-based) | "importance" (eq. 1)


@dataclass
class JointConfig(ViTConfig):
    """Joint space-time ViT-B/16 (all 1 + T·L tokens attend together) with ToMe merging r per block."""

    r: int = 0  # ToMe: tokens merged per block (CLS protected)


def _configure(config_class, base: dict, overrides: dict):
    known = {f.name for f in fields(config_class)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    return replace(config_class(**base), **overrides)


def testa_token_schedule(num_frames: int, num_patches: int, depth: int, r_frames: int, r_patches: int):
    """Token counts (T_i, L_i) entering the spatial attention and the MLP of block i (§3.2 formula).

    Per block: T -> T - min(R_T, ⌊(T-1)/2⌋) (TAM, before spatial attention), then
    L -> L - min(R_S, ⌊L/2⌋) (SAM, before the MLP). Returns the (T, L) after each block.
    """
    frames, patches, schedule = num_frames, num_patches, []
    for _ in range(depth):
        frames -= min(r_frames, (frames - 1) // 2)
        patches -= min(r_patches, patches // 2)
        schedule.append((frames, patches))
    return schedule


def _timesformer_fields(config: ViTConfig) -> dict:
    """The `TimeSformer` arguments of an encoder config."""
    names = ("num_frames", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    return {name: getattr(config, name) for name in names}


class TestaEncoder(TimeSformer):
    """TESTA visual encoder: divided space-time ViT with TAM + SAM in every block (§3.2).

    forward(clip (B, 3, T, H, W), return_info=False) -> tokens (B, 1 + T_out·L_out, D)
    [, info dict: "tokens_per_block" list of (T_i, L_i) after block i, "frame_size" (B, T_out),
    "patch_size" (B, T_out, L_out): original frames / patches each output token stands for].
    With r_frames = r_patches = 0 this is TimeSformer (divided space-time attention, no head).
    """

    __test__ = False

    def __init__(self, config: TestaConfig):
        super().__init__(**_timesformer_fields(config), attention="divided")
        self.config = c = config
        # TAM protects frame 0 (the reference code's CLS slot), so T -> T - min(R_T, ⌊(T-1)/2⌋).
        self.frame_merging = TokenMerging(c.r_frames, partition=c.partition, protected=1, impl=c.impl)
        self.patch_merging = TokenMerging(c.r_patches, partition=c.partition, protected=0, impl=c.impl)

    def forward(self, clip: Tensor, return_info: bool = False):
        c = self.config
        cls, x = self.embed(clip)
        batch, frames, patches, _ = x.shape
        frame_size = torch.ones(batch, frames, dtype=x.dtype, device=x.device)
        patch_size = torch.ones(batch, frames, patches, dtype=x.dtype, device=x.device)
        importance = c.partition == "importance"
        schedule = []
        for block in self.blocks:
            token_size = frame_size[:, :, None] * patch_size if c.prop_attn else None
            merge_frames = self.frame_merging.removed(x.shape[1]) > 0
            x, frame_keys, frame_importance = block.temporal(x, token_size, importance and merge_frames, merge_frames)
            if merge_frames:
                x, frame_size, patch_size = self._merge_frames(x, frame_keys, frame_size, patch_size, frame_importance)

            token_size = frame_size[:, :, None] * patch_size if c.prop_attn else None
            merge_patches = self.patch_merging.removed(x.shape[2]) > 0
            cls, x, patch_keys, patch_importance = block.spatial(
                cls, x, token_size, importance and merge_patches, merge_patches
            )
            if merge_patches:
                x, patch_size = self._merge_patches(x, patch_keys, patch_size, patch_importance)

            cls, x = block.mlp_stage(cls, x)
            schedule.append((x.shape[1], x.shape[2]))
        tokens = self.final_tokens(cls, x)
        if not return_info:
            return tokens
        return tokens, dict(tokens_per_block=schedule, frame_size=frame_size, patch_size=patch_size)

    def _merge_frames(self, x, frame_keys, frame_size, patch_size, frame_importance):
        """TAM: x (B, T, L, D) -> (B, T', L, D), whole frames averaged (weights: frame sizes)."""
        merged, merged_frame_size, matching = self.frame_merging(x, frame_keys, frame_size, frame_importance)
        if matching is None:
            return x, frame_size, patch_size
        # A merged frame's patches average the patch sizes of its frames (frame-size weighted).
        merged_patch_size, _ = ops.merge(patch_size.unsqueeze(-1), matching, frame_size, impl=self.config.impl)
        return merged, merged_frame_size, merged_patch_size.squeeze(-1)

    def _merge_patches(self, x, patch_keys, patch_size, patch_importance):
        """SAM: x (B, T, L, D) -> (B, T, L', D), patches of each frame merged independently."""
        batch, frames, patches, dim = x.shape
        merged, merged_size, matching = self.patch_merging(
            x.reshape(batch * frames, patches, dim), patch_keys, patch_size.reshape(batch * frames, patches),
            patch_importance,
        )
        if matching is None:
            return x, patch_size
        kept = merged.shape[1]
        return merged.reshape(batch, frames, kept, dim), merged_size.reshape(batch, frames, kept)

    def token_schedule(self) -> list[tuple[int, int]]:
        """The (T_i, L_i) after every block predicted by the §3.2 formula for this config."""
        c = self.config
        return testa_token_schedule(c.num_frames, self.patch_embed.num_patches, c.depth, c.r_frames, c.r_patches)


class JointEncoder(TimeSformer):
    """Joint space-time ViT over 1 + T·L tokens, with ToMe merging r tokens after every attention.

    forward(clip (B, 3, T, H, W), return_info=False) -> tokens (B, N_out, D) [, info dict:
    "tokens_per_block" list of N_i after block i, "size" (B, N_out)]. Per block N -> N - min(r, ⌊(N-1)/2⌋)
    (CLS protected).
    """

    def __init__(self, config: JointConfig):
        super().__init__(**_timesformer_fields(config), attention="joint")
        self.config = c = config
        self.token_merging = TokenMerging(c.r, protected=1, impl=c.impl)

    def forward(self, clip: Tensor, return_info: bool = False):
        cls, x = self.embed(clip)
        x = torch.cat([cls, x.flatten(1, 2)], dim=1)
        size = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        schedule = []
        for block in self.blocks:
            merge = self.token_merging.removed(x.shape[1]) > 0
            x, keys = block.attention(x, size if self.config.prop_attn else None, need_keys=merge)
            if merge:
                x, size, _ = self.token_merging(x, keys, size)
            x = block.mlp_stage(x)
            schedule.append(x.shape[1])
        x = self.norm(x)
        return (x, dict(tokens_per_block=schedule, size=size)) if return_info else x


# ------------------------------------------------------------------------------------------------
# Registered configs (TESTA §4.1, Tables 1, 5, 6)
# ------------------------------------------------------------------------------------------------


# Registered configs as data: name -> (encoder family, base config fields, what the paper reports).
CONFIGS = {
    "testa_f16": ("testa", dict(num_frames=16, r_frames=1, r_patches=2),
                  "16 frames, R_T=1, R_S=2 (Table 6: 228 GFLOPs)"),
    "testa_f16_noagg": ("testa", dict(num_frames=16), "16 frames, no aggregation (Table 6: 392 GFLOPs)"),
    "testa_f32": ("testa", dict(num_frames=32, r_frames=1, r_patches=12),
                  "32 frames, R_T=1, R_S=12 (§4.1; Table 1: 420 GFLOPs)"),
    "testa_f32_noagg": ("testa", dict(num_frames=32), "32 frames, no aggregation (Table 1: 786 GFLOPs)"),
    "testa_f96": ("testa", dict(num_frames=96, r_frames=4, r_patches=8),
                  "96 frames, R_T=4, R_S=8 (§4.1; Table 5: 1381.4 GFLOPs)"),
    "testa_f96_noagg": ("testa", dict(num_frames=96), "96 frames, no aggregation (Table 5: 2382.5 GFLOPs)"),
    "timesformer_f8": ("testa", dict(num_frames=8),
                       "TimeSformer (divided space-time) 8 x 224² = TESTA without aggregation (196 GFLOPs)"),
    "joint_f16": ("joint", dict(num_frames=16),
                  'Joint space-time ViT-B/16, 16 frames, no merging (Table 6 "ToMe w/o agg.": 450 GFLOPs)'),
    "tome_joint_f16": ("joint", dict(num_frames=16, r=197),
                       "Joint space-time ViT-B/16 + ToMe, r = 197 per block (§4.7, Table 6: 252 GFLOPs)"),
}


def _register(name: str, family: str, base: dict, doc: str) -> None:
    encoder, config = (TestaEncoder, TestaConfig) if family == "testa" else (JointEncoder, JointConfig)

    def build(**overrides):
        return encoder(_configure(config, base, overrides))

    build.__name__, build.__doc__ = name, doc
    register_model(name)(build)


for _name, (_family, _base, _doc) in CONFIGS.items():
    _register(_name, _family, _base, _doc)
