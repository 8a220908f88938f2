"""STTS: dynamic spatio-temporal token selection for video transformers (Wang et al., ECCV 2022).

The selection modules of STTS §3.2–3.3 on three backbones:

* `ScorerNetwork` — eq. 2–3: FC to C/2 (local features), their mean over the sequence (global
  feature) concatenated to every token, FC to 1, min-max normalisation of the L scores.
* `TemporalSelector` — §3.3 "Temporal selection": frame tokens = spatial average of each frame's
  tokens, scored, the K best frames kept (eq. 9 as `vidsel.ops.frame_select`).
* `AnchorSpatialSelector` — §3.3 "Spatial selection": token scores per frame, averaged over every
  square anchor of side a, the best anchor kept (top-1, `vidsel.ops.anchor_select`).

Both use the perturbed-maximum top-k (eq. 5–8, `vidsel.ops.perturbed_topk` inside the ops) while
training with σ > 0 and the hard top-k (a gather) in eval, as in §3.2; `sigma_at` is the linear
decay of σ to 0 over training that closes the train/test gap.

Backbones (built here with random weights, never downloaded): torchvision's `mvit_v1_b`
(MViT-B 16×4), torchvision's `swin3d_b` (Video Swin-B, temporal selection only, as in the paper)
and a compact divided space-time TimeSformer-8×224 (`vidsel.models._stts_timesformer`).

Config strings follow the paper's B-T_R^L-S_R^L notation (§4.1)::

    mvit_b16-T0.6@0-S0.9@4   temporal selection of round(0.6·T) frames before block 0, then an
                             anchor of side round(sqrt(0.9·H·W)) tokens before block 4
    swin3d_b-T0.6@0          Video Swin-B keeping round(0.6·16) = 10 of its 16 frame tokens
    timesformer_8x224-T0.5@0-S0.7@4

Ratio → count: K = round(T·r) frames (MViT-B16 has T = 8 after its stride-2 patch embedding, so
T0.6 keeps 5); anchor side a = round(sqrt(H·W·r)) (S0.9@4 on 14×14 → 13×13, S0.7@0 on 56×56 → 47×47);
halves round up. Several terms may be given (Table 5's multi-step selection); each ratio applies to
the tokens present where it is inserted, and a temporal selection precedes a spatial one at the same
block. `vidsel.create_model` accepts any string of this grammar, registered or not.

Shapes (batch B, RGB clip): input (B, 3, num_frames, img_size, img_size) -> logits (B, num_classes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from vidsel.models._registry import register_model, register_model_pattern
from vidsel.ops.anchor_select import anchor_select
from vidsel.ops.frame_select import frame_select

__all__ = [
    "SelectionSpec",
    "parse_selections",
    "format_selections",
    "sigma_at",
    "frames_kept",
    "anchor_side",
    "ScorerNetwork",
    "TemporalSelector",
    "AnchorSpatialSelector",
    "MViTSTTSConfig",
    "SwinSTTSConfig",
    "TimeSformerSTTSConfig",
    "STTSMViT",
    "STTSSwin3d",
    "STTSTimeSformer",
    "build_stts",
    "PAPER_GFLOPS",
]


# ---------------------------------------------------------------------------------------------
# Config grammar and the ratio -> count rules
# ---------------------------------------------------------------------------------------------

_TERM = r"-[TS](?:\d+(?:\.\d*)?|\.\d+)@\d+"
BACKBONES = ("mvit_b16", "swin3d_b", "timesformer_8x224")
NAME_PATTERN = rf"(?:{'|'.join(BACKBONES)})(?:{_TERM})*"
"""Regular expression of every STTS model name (`vidsel.create_model` parses it)."""


@dataclass(frozen=True)
class SelectionSpec:
    """One selection module: kind "T" (frames) or "S" (spatial anchor), keep `ratio`, before `block`."""

    kind: str
    ratio: float
    block: int

    def __post_init__(self):
        if self.kind not in ("T", "S"):
            raise ValueError(f"selection kind must be 'T' or 'S', got {self.kind!r}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"selection ratio must be in (0, 1], got {self.ratio} ({self.label})")
        if self.block < 0:
            raise ValueError(f"selection block must be >= 0, got {self.block}")

    @property
    def label(self) -> str:
        return f"{self.kind}{self.ratio:g}@{self.block}"


def parse_selections(text: str | tuple | list) -> tuple[SelectionSpec, ...]:
    """"T0.6@0-S0.9@4" (or a sequence of SelectionSpec) -> specs ordered by block, T before S."""
    if isinstance(text, (tuple, list)):
        specs = list(text)
    else:
        if not isinstance(text, str):
            raise TypeError(f"selections must be a string like 'T0.6@0-S0.9@4', got {type(text).__name__}")
        body = text if text.startswith("-") or not text else "-" + text
        if not re.fullmatch(rf"(?:{_TERM})*", body):
            raise ValueError(f"selections {text!r} do not follow the grammar (-T<ratio>@<block>|-S<ratio>@<block>)*")
        specs = [
            SelectionSpec(kind, float(ratio), int(block))
            for kind, ratio, block in re.findall(r"-([TS])([\d.]+)@(\d+)", body)
        ]
    for spec in specs:
        if not isinstance(spec, SelectionSpec):
            raise TypeError(f"selections must hold SelectionSpec, got {type(spec).__name__}")
    return tuple(sorted(specs, key=lambda s: (s.block, s.kind != "T")))


def format_selections(specs) -> str:
    """Inverse of `parse_selections`: ("T0.6@0", "S0.9@4") -> "-T0.6@0-S0.9@4"."""
    return "".join("-" + s.label for s in specs)


def split_name(name: str) -> tuple[str, tuple[SelectionSpec, ...]]:
    """"mvit_b16-T0.6@0-S0.9@4" -> ("mvit_b16", specs)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not an STTS model name (backbone in {BACKBONES}, then -T/-S terms)")
    backbone = next(b for b in BACKBONES if name.startswith(b))
    return backbone, parse_selections(name[len(backbone):])


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5 + 1e-9))


def frames_kept(num_frames: int, ratio: float) -> int:
    """K = round(T·r), at least 1 and at most T (temporal selection, §3.3)."""
    return min(num_frames, max(1, _round_half_up(num_frames * ratio)))


def anchor_side(height: int, width: int, ratio: float) -> int:
    """a = round(sqrt(H·W·r)), the side of the square anchor, clamped to [1, min(H, W)] (§3.3)."""
    return min(height, width, max(1, _round_half_up(math.sqrt(height * width * ratio))))


def sigma_at(step: int, total: int, sigma0: float = 0.1) -> float:
    """σ of eq. 7 at training `step` of `total`: linear decay from sigma0 to 0 (§3.2, end).

    At σ = 0 the perturbed top-k equals the hard top-k used at inference (and the scorer receives
    no gradient), so decaying σ to zero removes the train/test gap. σ0 = 0.1 in the paper (Table 8).
    """
    if total <= 0:
        raise ValueError(f"total must be a positive number of steps, got {total}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if sigma0 < 0:
        raise ValueError(f"sigma0 must be >= 0, got {sigma0}")
    return float(sigma0) * max(0.0, 1.0 - step / total)


# ---------------------------------------------------------------------------------------------
# Scorer network and the two selectors
# ---------------------------------------------------------------------------------------------


def min_max_normalize(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 3: (s' − min s') / (max s' − min s') over the last dimension; (B, L) -> (B, L) in [0, 1]."""
    low = scores.amin(dim=-1, keepdim=True)
    high = scores.amax(dim=-1, keepdim=True)
    return (scores - low) / (high - low + eps)


class ScorerNetwork(nn.Module):
    """Eq. 2–3: importance score of each of L tokens, input-conditioned and in [0, 1].

    f^l = GELU(FC(LN(q))) ∈ R^{L×C/2}; f^g = mean_i f^l_i; s' = FC([f^l_i, f^g]) ∈ R^L; s = minmax(s').
    The input LayerNorm keeps the scores independent of the token scale where the selector is
    inserted (before block 0 the tokens are raw patch embeddings); it costs 5 FLOPs per element.

    forward: tokens (B, L, C) -> scores (B, L).
    """

    def __init__(self, dim: int):
        super().__init__()
        hidden = max(1, dim // 2)
        self.norm = nn.LayerNorm(dim)
        self.local = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.score = nn.Linear(2 * hidden, 1)

    def raw_scores(self, tokens: Tensor) -> Tensor:
        """s' of eq. 3 (before normalisation): (B, L, C) -> (B, L)."""
        local = self.act(self.local(self.norm(tokens)))
        global_ = local.mean(dim=1, keepdim=True).expand_as(local)
        return self.score(torch.cat([local, global_], dim=-1)).squeeze(-1)

    def forward(self, tokens: Tensor) -> Tensor:
        return min_max_normalize(self.raw_scores(tokens))


class _Selector(nn.Module):
    """Shared state: σ of eq. 7, the number of perturbed samples n, the op backend."""

    def __init__(self, dim: int, ratio: float, *, num_samples: int = 500, sigma: float = 0.1, impl: str = "auto"):
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.dim, self.ratio = dim, float(ratio)
        self.num_samples, self.sigma, self.impl = int(num_samples), float(sigma), impl
        self.scorer = ScorerNetwork(dim)

    def _mode_kwargs(self) -> dict:
        """Perturbed top-k while training with σ > 0, hard top-k otherwise (§3.2)."""
        if self.training and self.sigma > 0:
            return dict(mode="perturbed", num_samples=self.num_samples, sigma=self.sigma, impl=self.impl)
        return dict(mode="hard", impl=self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ratio={self.ratio:g}, sigma={self.sigma:g}, num_samples={self.num_samples}"


class TemporalSelector(_Selector):
    """Keeps K = round(T·r) frames of a token grid (§3.3, eq. 9).

    forward: grid (B, T, H, W, C) -> (B, K, H, W, C); in eval the K best frames in temporal order,
    in training (σ > 0) the perturbed indicator Y_σ (eq. 7) applied to the frames, Y_σᵀ x̄.
    """

    def num_kept(self, frames: int) -> int:
        return frames_kept(frames, self.ratio)

    def frame_scores(self, grid: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T): the scorer on frame tokens (spatial average of each frame)."""
        return self.scorer(grid.flatten(2, 3).mean(dim=2))

    def forward(self, grid: Tensor) -> Tensor:
        batch, frames, height, width, dim = grid.shape
        kept = self.num_kept(frames)
        tokens = grid.reshape(batch, frames, height * width, dim)
        out = frame_select(tokens, self.frame_scores(grid), kept, **self._mode_kwargs())
        return out.reshape(batch, kept, height, width, dim)


class AnchorSpatialSelector(_Selector):
    """Keeps one square anchor of side a = round(sqrt(H·W·r)) per frame (§3.3, anchor-based).

    Token scores per frame (the scorer sees the frame's H·W tokens, its global feature is the
    frame mean), averaged within every anchor of the grid (stride `stride`, see `anchor_stride`),
    top-1 anchor. forward: grid (B, T, H, W, C) -> (B, T, a, a, C).
    """

    def __init__(self, dim: int, ratio: float, *, stride: int | None = None, **kwargs):
        super().__init__(dim, ratio, **kwargs)
        self.stride = stride

    def side(self, height: int, width: int) -> int:
        return anchor_side(height, width, self.ratio)

    def token_scores(self, grid: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, H, W) scores, min-max normalised within each frame."""
        batch, frames, height, width, dim = grid.shape
        scores = self.scorer(grid.reshape(batch * frames, height * width, dim))
        return scores.reshape(batch, frames, height, width)

    def forward(self, grid: Tensor) -> Tensor:
        height, width = grid.shape[2:4]
        side = self.side(height, width)
        stride = self.anchor_stride(height, width)
        return anchor_select(grid, self.token_scores(grid), (side, side), (stride, stride), **self._mode_kwargs())

    def anchor_stride(self, height: int, width: int) -> int:
        """α of §3.3: the configured stride, else max((min(H, W) − a) // 2, 1) — at most 3 anchor
        positions per axis, the default of the STTS implementation (a few anchors keep the perturbed
        top-1 and its windowed sum cheap)."""
        if self.stride is not None:
            return self.stride
        return max((min(height, width) - self.side(height, width)) // 2, 1)


def make_selector(spec: SelectionSpec, dim: int, *, num_samples: int, sigma: float, impl: str,
                  anchor_stride: int | None) -> _Selector:
    kwargs = dict(num_samples=num_samples, sigma=sigma, impl=impl)
    if spec.kind == "T":
        return TemporalSelector(dim, spec.ratio, **kwargs)
    return AnchorSpatialSelector(dim, spec.ratio, stride=anchor_stride, **kwargs)


class _STTSModel(nn.Module):
    """Common API of the three STTS models: σ control, selector lookup, example inputs."""

    config: object
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


# The backbones live in a second file (size); they subclass _STTSModel.
from vidsel.models._stts_backbones import (  # noqa: E402
    MViTSTTSConfig,
    STTSMViT,
    STTSSwin3d,
    STTSTimeSformer,
    SwinSTTSConfig,
    TimeSformerSTTSConfig,
)

_FAMILIES = {
    "mvit_b16": (MViTSTTSConfig, STTSMViT),
    "swin3d_b": (SwinSTTSConfig, STTSSwin3d),
    "timesformer_8x224": (TimeSformerSTTSConfig, STTSTimeSformer),
}


def build_stts(name: str, **overrides) -> nn.Module:
    """Builds any STTS model name of the grammar; `overrides` replace config fields.

    `selections` may be overridden too (a string "T0.6@0" or SelectionSpec's); the name's terms
    are the default.
    """
    backbone, specs = split_name(name)
    config_cls, model_cls = _FAMILIES[backbone]
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {unknown}; fields: {sorted(names)}")
    overrides.setdefault("selections", specs)
    overrides["selections"] = parse_selections(overrides["selections"])
    return model_cls(config_cls(**overrides))


# Paper GFLOPs (STTS Tables 2, 4 and 7, fvcore convention, one view). S0.6@0 and S0.3@4 do not
# reproduce as labelled (see tests/test_flops_stts.py and the README); they are listed for the note.
PAPER_GFLOPS = {
    "mvit_b16": 70.5,
    "mvit_b16-T0.6@0": 41.3,
    "mvit_b16-T0.3@4": 37.5,
    "mvit_b16-T0.8@0-S0.7@0": 36.0,
    "mvit_b16-T0.6@0-S0.9@4": 38.1,
    "mvit_b16-T0.9@0-S0.9@4": 56.4,
    "mvit_b16-T0.8@0-S0.9@4": 47.2,
    "mvit_b16-S0.6@0": 31.2,
    "mvit_b16-S0.3@4": 35.2,
    "swin3d_b": 282.0,
}

_REGISTERED = [
    "mvit_b16",
    "mvit_b16-T0.5@0",
    "mvit_b16-T0.6@0",
    "mvit_b16-T0.3@4",
    "mvit_b16-S0.5@0",
    "mvit_b16-S0.6@0",
    "mvit_b16-S0.3@4",
    "mvit_b16-T0.8@0-S0.7@0",
    "mvit_b16-T0.6@0-S0.9@4",
    "mvit_b16-T0.9@0-S0.9@4",
    "mvit_b16-T0.8@0-S0.9@4",
    "mvit_b16-T0.4@0-S0.6@4",
    "swin3d_b",
    "swin3d_b-T0.5@0",
    "swin3d_b-T0.6@0",
    "swin3d_b-T0.7@0",
    "swin3d_b-T0.8@0",
    "timesformer_8x224-T0.5@0",
    "timesformer_8x224-T0.6@0-S0.9@4",
]


def _register(name: str) -> None:
    register_model(name)(lambda **overrides: build_stts(name, **overrides))


for _name in _REGISTERED:
    _register(_name)

register_model_pattern(NAME_PATTERN)(build_stts)
