"""The three STTS backbones: torchvision MViT-B 16×4, torchvision Video Swin-B, TimeSformer-8×224.

Each wraps the unmodified backbone modules and runs its blocks itself, calling the STTS selector
layers (`vidsel.nn.TemporalSelector`, `vidsel.nn.AnchorSpatialSelector`) on the (B, T, H, W, C)
token grid before the configured blocks. Public names are re-exported by `vidsel.models.stts`
(which parses the model names); build through `vidsel.create_model`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.video.mvit import MSBlockConfig, MViT
from torchvision.models.video.swin_transformer import SwinTransformer3d

from vidsel.models.timesformer import TimeSformer
from vidsel.nn import AnchorSpatialSelector, TemporalSelector
from vidsel.nn.stts_selectors import anchor_side, frames_kept

Grid = tuple[int, int, int]


def _apply_plan(specs, block: int, grid: Grid) -> Grid:
    """Token grid after the selections inserted before `block` (`frames_kept`, `anchor_side`)."""
    frames, height, width = grid
    for spec in specs:
        if spec.block != block:
            continue
        if spec.kind == "T":
            frames = frames_kept(frames, spec.ratio)
        else:
            height = width = anchor_side(height, width, spec.ratio)
    return frames, height, width


def _split_cls(x: Tensor, thw: Grid) -> tuple[Tensor, Tensor]:
    """(B, 1 + T·H·W, C) -> class token (B, 1, C), grid (B, T, H, W, C)."""
    return x[:, :1], x[:, 1:].reshape(x.shape[0], *thw, x.shape[-1])


def _join_cls(cls: Tensor, grid: Tensor) -> tuple[Tensor, Grid]:
    return torch.cat([cls, grid.flatten(1, 3)], dim=1), tuple(grid.shape[1:4])


def make_selector(spec, dim: int, *, num_samples: int, sigma: float, impl: str,
                  anchor_stride: int | None) -> TemporalSelector | AnchorSpatialSelector:
    """The selector layer of one SelectionSpec ("T": frames, "S": anchor) on `dim` channels."""
    kwargs = dict(num_samples=num_samples, sigma=sigma, impl=impl)
    if spec.kind == "T":
        return TemporalSelector(dim, spec.ratio, **kwargs)
    return AnchorSpatialSelector(dim, spec.ratio, stride=anchor_stride, **kwargs)


class _STTSModel(nn.Module):
    """Common API of the three STTS models: σ control, selector lookup, example inputs."""

    config: object
    specs: tuple
    selectors: nn.ModuleList

    def set_sigma(self, sigma: float) -> None:
        """Sets σ of every selector (call with `sigma_at(step, total, sigma0)` each training step)."""
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        for selector in self.selectors:
            selector.sigma = float(sigma)

    def selector_parameters(self):
        """Parameters of the scorer networks (the paper trains them at 100× the backbone lr)."""
        return [p for s in self.selectors for p in s.parameters()]

    def backbone_parameters(self):
        ids = {id(p) for p in self.selector_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def _selectors_before(self, block: int):
        return [s for s, spec in zip(self.selectors, self.specs) if spec.block == block]

    def _apply_selectors(self, block: int, grid: Tensor) -> Tensor:
        for selector in self._selectors_before(block):
            grid = selector(grid)
        return grid

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor]:
        """One random clip batch (B, 3, num_frames, img_size, img_size) on the model's device."""
        device = next(self.parameters()).device
        cfg = self.config
        return (torch.randn(batch_size, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device),)

    def _check_specs(self, depth: int) -> None:
        for spec in self.specs:
            if spec.block >= depth:
                raise ValueError(f"selection {spec.label}: block {spec.block} does not exist (depth {depth})")

    def _build_selectors(self, dims: list[int]) -> nn.ModuleList:
        cfg = self.config
        return nn.ModuleList(
            make_selector(spec, dims[spec.block], num_samples=cfg.num_samples, sigma=cfg.sigma,
                          impl=cfg.impl, anchor_stride=cfg.anchor_stride)
            for spec in self.specs
        )


# ---------------------------------------------------------------------------------------------
# MViT-B 16×4 (torchvision mvit_v1_b)
# ---------------------------------------------------------------------------------------------


@dataclass
class MViTSTTSConfig:
    """MViT-B16 (Fan et al. 2021; torchvision `mvit_v1_b`) with STTS selections.

    Defaults are MViT-B 16×4: 16 frames at 224², embed 96, stage depths (1, 2, 11, 2) — 16 blocks,
    channels ×2 / heads ×2 / resolution /2 per stage, key-value pooling stride 8, 4, 2, 1 per stage.
    Reduce embed_dim / stage_depths / num_frames / img_size for small test models.
    """

    selections: tuple = ()
    num_frames: int = 16
    img_size: int = 224
    embed_dim: int = 96
    stage_depths: tuple = (1, 2, 11, 2)
    num_classes: int = 400
    dropout: float = 0.5
    stochastic_depth_prob: float = 0.2
    sigma: float = 0.1
    num_samples: int = 500
    anchor_stride: int | None = None
    impl: str = "auto"


def mvit_block_settings(embed_dim: int, stage_depths) -> list[MSBlockConfig]:
    """torchvision's mvit_v1_b table generalised: with (96, (1, 2, 11, 2)) it equals mvit_v1_b."""
    settings = []
    num_stages = len(stage_depths)
    for stage, depth in enumerate(stage_depths):
        dim, heads = embed_dim * 2**stage, 2**stage
        kv_stride = max(1, 8 // 2**stage)
        for index in range(depth):
            first, last = index == 0, index == depth - 1
            pooled_q = first and stage > 0
            out_dim = dim * 2 if last and stage < num_stages - 1 else dim
            settings.append(
                MSBlockConfig(
                    num_heads=heads,
                    input_channels=dim,
                    output_channels=out_dim,
                    kernel_q=[3, 3, 3] if pooled_q else [],
                    kernel_kv=[3, 3, 3],
                    stride_q=[1, 2, 2] if pooled_q else [],
                    stride_kv=[1, kv_stride, kv_stride],
                )
            )
    return settings


class STTSMViT(_STTSModel):
    """MViT-B16 with temporal / anchor selections before the configured blocks.

    forward: video (B, 3, T, H, W) -> logits (B, num_classes). The class token is never selected;
    the token grid before block 0 is (T/2, H/4, W/4) = (8, 56, 56) at 16×224².
    """

    def __init__(self, config: MViTSTTSConfig):
        super().__init__()
        self.config, self.specs = config, tuple(config.selections)
        settings = mvit_block_settings(config.embed_dim, config.stage_depths)
        self.backbone = MViT(
            spatial_size=(config.img_size, config.img_size),
            temporal_size=config.num_frames,
            block_setting=settings,
            residual_pool=False,
            residual_with_cls_embed=False,
            rel_pos_embed=False,
            proj_after_attn=False,
            dropout=config.dropout,
            stochastic_depth_prob=config.stochastic_depth_prob,
            num_classes=config.num_classes,
        )
        self._settings = settings
        self._check_specs(len(settings))
        self.selectors = self._build_selectors([s.input_channels for s in settings])

    def token_grid_plan(self) -> list[Grid]:
        """(T, H, W) of the tokens entering every block (after its selections), by the formulas."""
        cfg = self.config
        grid = ((cfg.num_frames - 1) // 2 + 1, (cfg.img_size - 1) // 4 + 1, (cfg.img_size - 1) // 4 + 1)
        plan = []
        for block, setting in enumerate(self._settings):
            grid = _apply_plan(self.specs, block, grid)
            plan.append(grid)
            if setting.stride_q:  # query pooling (kernel 3, padding 1, stride 2) inside the block
                grid = (grid[0], (grid[1] - 1) // 2 + 1, (grid[2] - 1) // 2 + 1)
        return plan

    def forward(self, video: Tensor) -> Tensor:
        backbone = self.backbone
        x = backbone.conv_proj(video)
        thw = tuple(x.shape[2:])
        x = backbone.pos_encoding(x.flatten(2).transpose(1, 2))
        for index, block in enumerate(backbone.blocks):
            if self._selectors_before(index):
                cls, grid = _split_cls(x, thw)
                x, thw = _join_cls(cls, self._apply_selectors(index, grid))
            x, thw = block(x, thw)
        x = backbone.norm(x)
        return backbone.head(x[:, 0])


# ---------------------------------------------------------------------------------------------
# Video Swin-B (torchvision swin3d_b), temporal selection only
# ---------------------------------------------------------------------------------------------


@dataclass
class SwinSTTSConfig:
    """Video Swin-B (Liu et al. 2022; torchvision `swin3d_b`) with STTS temporal selection.

    Defaults: 32 frames at 224², patch (2, 4, 4), embed 128, depths (2, 2, 18, 2), heads
    (4, 8, 16, 32), window (8, 7, 7). Only temporal terms are accepted: the paper applies no
    spatial selection to Swin (§4.2, shifted windows).
    """

    selections: tuple = ()
    num_frames: int = 32
    img_size: int = 224
    embed_dim: int = 128
    depths: tuple = (2, 2, 18, 2)
    num_heads: tuple = (4, 8, 16, 32)
    window_size: tuple = (8, 7, 7)
    num_classes: int = 400
    stochastic_depth_prob: float = 0.1
    sigma: float = 0.1
    num_samples: int = 500
    anchor_stride: int | None = None
    impl: str = "auto"


class STTSSwin3d(_STTSModel):
    """Video Swin-B with temporal selection before the configured blocks (counted over all stages).

    forward: video (B, 3, T, H, W) -> logits (B, num_classes); tokens before block 0 are
    (T/2, H/4, W/4) = (16, 56, 56) at 32×224².
    """

    def __init__(self, config: SwinSTTSConfig):
        super().__init__()
        self.config, self.specs = config, tuple(config.selections)
        spatial = [s.label for s in self.specs if s.kind == "S"]
        if spatial:
            raise ValueError(f"swin3d_b takes temporal selections only (STTS §4.2), got {spatial}")
        self.backbone = SwinTransformer3d(
            patch_size=[2, 4, 4],
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=list(config.window_size),
            stochastic_depth_prob=config.stochastic_depth_prob,
            num_classes=config.num_classes,
        )
        dims = [config.embed_dim * 2**stage for stage, depth in enumerate(config.depths) for _ in range(depth)]
        self._check_specs(len(dims))
        self.selectors = self._build_selectors(dims)

    def token_grid_plan(self) -> list[Grid]:
        cfg = self.config
        grid = (-(-cfg.num_frames // 2), -(-cfg.img_size // 4), -(-cfg.img_size // 4))
        plan, block = [], 0
        for stage, depth in enumerate(cfg.depths):
            if stage > 0:
                grid = (grid[0], -(-grid[1] // 2), -(-grid[2] // 2))
            for _ in range(depth):
                grid = _apply_plan(self.specs, block, grid)
                plan.append(grid)
                block += 1
        return plan

    def forward(self, video: Tensor) -> Tensor:
        backbone = self.backbone
        x = backbone.pos_drop(backbone.patch_embed(video))
        index = 0
        for layer in backbone.features:
            if not isinstance(layer, nn.Sequential):  # patch merging between stages
                x = layer(x)
                continue
            for block in layer:
                x = block(self._apply_selectors(index, x))
                index += 1
        x = backbone.norm(x).mean(dim=(1, 2, 3))
        return backbone.head(x)


# ---------------------------------------------------------------------------------------------
# TimeSformer-8×224 (divided space-time attention)
# ---------------------------------------------------------------------------------------------


@dataclass
class TimeSformerSTTSConfig:
    """TimeSformer (Bertasius et al. 2021), divided space-time ViT-B/16, 8×224², with STTS."""

    selections: tuple = ()
    num_frames: int = 8
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_classes: int = 400
    sigma: float = 0.1
    num_samples: int = 500
    anchor_stride: int | None = None
    impl: str = "auto"


# STTS TimeSformer checkpoints name two tensors their own way: the patch embedding's Conv2d is
# `patch_embed` itself and the temporal LayerNorm is `temporal_norm`, where
# `vidsel.models.timesformer` has `patch_embed.proj` and `temporal_norm1`. The model translates on
# save and load, so its state_dict keys are the checkpoint's.
_TO_CHECKPOINT = ((r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
                  (r"(blocks\.\d+\.)temporal_norm1\.(weight|bias)", r"\1temporal_norm.\2"))
_FROM_CHECKPOINT = ((r"patch_embed\.(weight|bias)", r"patch_embed.proj.\1"),
                    (r"(blocks\.\d+\.)temporal_norm\.(weight|bias)", r"\1temporal_norm1.\2"))


def _rename_keys(state_dict: dict, prefix: str, rules) -> None:
    """Renames, in place and in order, the keys under `prefix` that fully match a rule."""
    compiled = [(re.compile(re.escape(prefix) + pattern), prefix + repl) for pattern, repl in rules]
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                key = pattern.sub(repl, key)
                break
        state_dict[key] = value


def _save_checkpoint_names(module, state_dict, prefix, local_metadata) -> None:
    _rename_keys(state_dict, prefix, _TO_CHECKPOINT)


def _load_checkpoint_names(module, state_dict, prefix, *args) -> None:
    _rename_keys(state_dict, prefix, _FROM_CHECKPOINT)


class STTSTimeSformer(_STTSModel):
    """TimeSformer (divided space-time, `vidsel.models.timesformer`, with head) with selections
    before the configured blocks.

    forward: video (B, 3, T, H, W) -> logits (B, num_classes); tokens before block 0 are
    (T, H/16, W/16) = (8, 14, 14) plus the class token, which is never selected.
    """

    def __init__(self, config: TimeSformerSTTSConfig):
        super().__init__()
        self.config, self.specs = config, tuple(config.selections)
        self.backbone = TimeSformer(
            num_frames=config.num_frames,
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            num_classes=config.num_classes,
            weight_init="torch",
        )
        self.backbone.register_state_dict_post_hook(_save_checkpoint_names)
        self.backbone.register_load_state_dict_pre_hook(_load_checkpoint_names)
        self._check_specs(config.depth)
        self.selectors = self._build_selectors([config.embed_dim] * config.depth)

    def token_grid_plan(self) -> list[Grid]:
        cfg = self.config
        side = cfg.img_size // cfg.patch_size
        grid, plan = (cfg.num_frames, side, side), []
        for block in range(cfg.depth):
            grid = _apply_plan(self.specs, block, grid)
            plan.append(grid)
        return plan

    def forward(self, video: Tensor) -> Tensor:
        backbone = self.backbone
        cls, x = backbone.embed(video)  # (B, 1, D), (B, T, h·w, D)
        side = self.config.img_size // self.config.patch_size
        thw = (x.shape[1], side, side)
        for index, block in enumerate(backbone.blocks):
            if self._selectors_before(index):
                grid = self._apply_selectors(index, x.reshape(x.shape[0], *thw, x.shape[-1]))
                thw, x = tuple(grid.shape[1:4]), grid.flatten(2, 3)
            cls, x = block(cls, x)
        return backbone.forward_head(backbone.final_tokens(cls, x))
