"""STTS (Wang et al., ECCV 2022) on a torchvision video model you already have: `mvit_v1_b`
(`MViT`) or `swin3d_b` (`SwinTransformer3d`), with their loaded weights.

``stts(model, "T0.6@0-S0.9@4")`` inserts the scorer network + selectors of `vidsel.models.stts`
(same grammar, same ratio -> count rules: K = round(T·r) frames, anchor side a = round(sqrt(H·W·r)))
before the given blocks, as forward pre-hooks on those blocks:
  * temporal selection (§3.3, eq. 9): frame tokens scored, the K best frames kept;
  * anchor-based spatial selection (§3.3): the best a×a anchor of every frame kept (MViT only:
    the paper applies no spatial selection to Swin's shifted windows, §4.2).
Perturbed top-k (eq. 5–8) while training with σ > 0, hard top-k in eval. The class token of MViT
is never selected. The selectors' parameters live in ``model.stts_selectors`` (train them with
the backbone, at 100× its learning rate in the paper); ``handle.remove()`` deletes them and the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vidsel.models.stts import parse_selections
from vidsel.nn import AnchorSpatialSelector, TemporalSelector
from vidsel.patch._common import PatchHandle, find_backbone, refuse_repatch, unsupported

SUPPORTED = ("torchvision MViT (mvit_v1_b)", "torchvision SwinTransformer3d (swin3d_b)")


@dataclass
class STTSState:
    """Record of the last eager forward: grid_per_block = (T, H, W) of the tokens entering every block."""

    grid_per_block: list[tuple[int, int, int]] = field(default_factory=list)


def _backbone_blocks(model: nn.Module):
    """(backbone, its blocks in order, whether it has a class token), or None."""
    from torchvision.models.video.mvit import MViT
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    backbone = find_backbone(model, [MViT, SwinTransformer3d])
    if backbone is None:
        return None
    if isinstance(backbone, MViT):
        return backbone, list(backbone.blocks), True
    blocks = [block for stage in backbone.features if isinstance(stage, nn.Sequential) for block in stage]
    return backbone, blocks, False


def _select_grid(selectors, grid: Tensor) -> Tensor:
    for selector in selectors:
        grid = selector(grid)
    return grid


def _mvit_hook(selectors):
    """Pre-hook of an MViT block: args (x (B, 1 + T·H·W, C), thw) -> selected x, new thw."""

    def hook(module, args):
        x, thw = args
        cls, grid = x[:, :1], x[:, 1:].reshape(x.shape[0], *thw, x.shape[-1])
        grid = _select_grid(selectors, grid)
        return torch.cat([cls, grid.flatten(1, 3)], dim=1), tuple(grid.shape[1:4])

    return hook


def _swin_hook(selectors):
    """Pre-hook of a Swin block: args (x (B, T, H, W, C),) -> selected x."""

    def hook(module, args):
        return (_select_grid(selectors, args[0]),)

    return hook


def _record_hook(state: STTSState, is_mvit: bool):
    def hook(module, args):
        if not torch.compiler.is_compiling():
            state.grid_per_block.append(tuple(args[1]) if is_mvit else tuple(args[0].shape[1:4]))

    return hook


def _reset_hook(state: STTSState):
    def hook(module, args):
        if not torch.compiler.is_compiling():
            state.grid_per_block = []

    return hook


def stts(model: nn.Module, selections, *, sigma: float = 0.1, num_samples: int = 500,
         anchor_stride: int | None = None, impl: str = "auto") -> PatchHandle:
    """Inserts STTS temporal / anchor selectors into a torchvision MViT or Video Swin, in place.

    Args:
        model: torchvision `MViT` (e.g. `mvit_v1_b()`), `SwinTransformer3d` (e.g. `swin3d_b()`),
            or a model containing one.
        selections: "T<ratio>@<block>-S<ratio>@<block>..." (blocks counted over all stages), or
            a sequence of `vidsel.models.stts.SelectionSpec`.
        sigma, num_samples: perturbed top-k noise σ (eq. 7) and its sample count, used in training.
        anchor_stride: stride α between anchors (default: at most 3 anchors per axis).
        impl: backend of the vidsel ops.

    Returns:
        PatchHandle: ``.patched`` blocks that got selectors, ``.state`` (`STTSState`), ``.remove()``.
    """
    found = _backbone_blocks(model) if isinstance(model, nn.Module) else None
    if found is None:
        raise unsupported("stts", model, SUPPORTED)
    backbone, blocks, is_mvit = found
    refuse_repatch(backbone)
    specs = parse_selections(selections)
    if not specs:
        raise ValueError("selections must name at least one selection, e.g. 'T0.6@0-S0.9@4'")
    for spec in specs:
        if spec.block >= len(blocks):
            raise ValueError(f"selection {spec.label}: block {spec.block} does not exist ({len(blocks)} blocks)")
        if spec.kind == "S" and not is_mvit:
            raise ValueError(f"{type(backbone).__name__} takes temporal selections only (STTS §4.2), got {spec.label}")
    kwargs = dict(num_samples=num_samples, sigma=sigma, impl=impl)
    selectors = nn.ModuleList(
        TemporalSelector(blocks[s.block].norm1.normalized_shape[0], s.ratio, **kwargs) if s.kind == "T"
        else AnchorSpatialSelector(blocks[s.block].norm1.normalized_shape[0], s.ratio, stride=anchor_stride, **kwargs)
        for s in specs
    )
    reference = next(backbone.parameters())
    selectors = selectors.to(device=reference.device, dtype=reference.dtype).train(backbone.training)
    backbone.add_module("stts_selectors", selectors)
    state = STTSState()
    handles = [blocks[0].register_forward_pre_hook(_reset_hook(state))]
    changed = sorted({s.block for s in specs})
    for index in changed:
        chosen = [selector for selector, spec in zip(selectors, specs) if spec.block == index]
        handles.append(blocks[index].register_forward_pre_hook((_mvit_hook if is_mvit else _swin_hook)(chosen)))
    handles += [block.register_forward_pre_hook(_record_hook(state, is_mvit)) for block in blocks]

    def undo():
        for handle in handles:
            handle.remove()
        del backbone.stts_selectors

    handle = PatchHandle(backbone, "stts", state, [undo], patched=len(changed))
    handle.specs = specs
    return handle
