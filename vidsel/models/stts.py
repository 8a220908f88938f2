"""STTS: dynamic spatio-temporal token selection for video transformers (Wang et al., ECCV 2022).

The selection layers of STTS §3.2–3.3 (`vidsel.nn.ScorerNetwork` eq. 2–3,
`vidsel.nn.TemporalSelector` eq. 9, `vidsel.nn.AnchorSpatialSelector`; perturbed top-k eq. 5–8
while training with σ > 0, hard top-k in eval) inserted on the (B, T, H, W, C) token grid before
the configured blocks of three backbones. `sigma_at` (re-exported from `vidsel.nn.stts_selectors`)
is the linear decay of σ to 0 over training that closes the train/test gap.

Backbones (built here with random weights, never downloaded): torchvision's `mvit_v1_b`
(MViT-B 16×4), torchvision's `swin3d_b` (Video Swin-B, temporal selection only, as in the paper)
and the divided space-time TimeSformer-8×224 of `vidsel.models.timesformer` with its head.

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

import re
import warnings
from dataclasses import dataclass, fields

from torch import nn

from vidsel.models._registry import register_model, register_model_pattern
from vidsel.models._stts_backbones import (
    MViTSTTSConfig,
    STTSMViT,
    STTSSwin3d,
    STTSTimeSformer,
    SwinSTTSConfig,
    TimeSformerSTTSConfig,
)
from vidsel.nn import stts_selectors
from vidsel.nn.stts_selectors import anchor_side, frames_kept, sigma_at

__all__ = [
    "SelectionSpec",
    "parse_selections",
    "format_selections",
    "sigma_at",
    "frames_kept",
    "anchor_side",
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
# Config grammar (the ratio -> count rules are vidsel.nn.stts_selectors.frames_kept / anchor_side)
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
# reproduce as labelled (see tests/models/test_flops_stts.py and the README); they are listed for the note.
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


# The selector layers live in vidsel.nn; their old names here stay importable for one release.
_MOVED_TO_NN = ("ScorerNetwork", "TemporalSelector", "AnchorSpatialSelector", "min_max_normalize")


def __getattr__(name: str):
    if name in _MOVED_TO_NN:
        warnings.warn(
            f"vidsel.models.stts.{name} is deprecated and will be removed in the next release; "
            f"use vidsel.nn.stts_selectors.{name}" + (f" (or vidsel.nn.{name})" if name[0].isupper() else ""),
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(stts_selectors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
