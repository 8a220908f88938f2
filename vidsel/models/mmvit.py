"""MM-ViT: the multi-modal video transformer on the compressed video itself (Chen et al., §3).

Input (§3.2): T sampled segments of a compressed clip, V = {I, M, R, A}: I-frames (B, T, 3, H, W),
motion vectors (B, T, 2, H/g, W/g) at the codec's block size g, residuals (B, T, 3, H, W) and 128-d audio
features per segment (B, T, 128) (VGGish-compatible; `vidsel.nn.log_mel_features` of the waveform when
no features are given). `vidsel.nn.CompressedPatchEmbed` tokenizes them (eq. 1–4, audio replicated over
the N patch positions): x (B, S, T, N, D), S = the selected modalities, plus a CLS token z_CLS(0,0).

Variants (§3.3, Figure 2), L blocks each, then LN(CLS) -> linear head:
  I    joint space-time-modality attention (eq. 5–8): one MSA over all 1 + S·T·N tokens, MLP.
  II   factorised space-time attention (eq. 9–11): MSA_time over the S·T tokens of a patch position,
       MSA_space over the S·N tokens of a frame, MLP.
  III  factorised space-time cross-modal attention (eq. 12–15): MSA_time over one modality's T frames,
       MCA over the S modality tokens at each (p, t), MSA_space over one modality's N patches, MLP.
       MCA kinds: merged attention (eq. 16, s' = S), co-attention (s' = S \\ {s}), shift-merge (eq. 17–20).
  IV   III on non-overlapping local windows (M = N/4 patches, F = T/2 frames) with a depthwise
       convolution (kernel = the spatial window, stride 1) after the temporal and spatial attention.
Attention order (`order`, Table 2's letters): T temporal, M cross-modal, S spatial. III / IV take any
of the six orders (default "TMS", T⇒M⇒S, the best of Table 2); II takes "TS" or "ST"; I has none.
Modalities (`modalities`, Table 3): any non-empty subset of "IMRA" (I-frame, motion, residual, audio).

Readings of the block where the paper is silent (each checked against Table 1's parameter counts,
see README "MM-ViT"): projections are shared across modalities; MSA_time and MCA are each followed by a
D×D linear layer (TimeSformer's temporal_fc); shift-merge keeps a value and an output projection; IV's
convolution is one depthwise 7×7 convolution (+ bias) per block, as a residual branch placed after the
later of the temporal and spatial attention.

Registered: mmvit_i, mmvit_ii, mmvit_iii_merged, mmvit_iii_coatt, mmvit_iii_shift, mmvit_iv (merged),
ViT-B/16 dims (D = 768, 12 layers, 12 heads), T = 8, 224², 101 classes (UCF-101).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from vidsel.models._registry import register_model
from vidsel.nn.compressed_patch_embed import AUDIO_FEATURE_DIM, CompressedPatchEmbed, log_mel_features
from vidsel.nn.mmvit_attention import (
    CROSS_MODAL_KINDS,
    CrossModalAttention,
    JointAttention,
    Mlp,
    SpatialAttention,
    TemporalAttention,
    WindowConv,
    layer_norm,
)

MODALITIES = "IMRA"  # I-frame, motion vectors, residual, audio: the token order of CompressedPatchEmbed
VARIANTS = ("i", "ii", "iii", "iv")
ORDERS = {
    "i": ("",),
    "ii": ("TS", "ST"),
    "iii": tuple("".join(p) for p in itertools.permutations("TMS")),
    "iv": tuple("".join(p) for p in itertools.permutations("TMS")),
}


@dataclass
class MMViTConfig:
    """One MM-ViT. `order` letters: T temporal, M cross-modal, S spatial (Table 2); `modalities`
    letters: I-frame, Motion, Residual, Audio (Table 3)."""

    variant: str = "iii"  # "i" | "ii" | "iii" | "iv" (§3.3)
    cross_modal: str = "merged"  # MCA kind of III / IV: "merged" | "coatt" | "shift"
    order: str | None = None  # see ORDERS; None: "" for I, "TS" for II, "TMS" (T⇒M⇒S) for III / IV
    modalities: str = "IMRA"
    num_frames: int = 8  # T segments
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 101
    audio_dim: int = AUDIO_FEATURE_DIM
    motion_block: int = 16  # g of example_inputs (MPEG-4 macroblocks); forward accepts any g dividing 224
    window_frames: int | None = None  # F of IV (None: T/2)
    window_patches: int | None = None  # spatial window side of IV in patches (None: grid/2, M = N/4)
    impl: str = "auto"  # backend of vidsel.ops.compressed_patch_embed

    def __post_init__(self):
        if isinstance(self.modalities, (list, tuple)):
            self.modalities = "".join(self.modalities)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.order is None:
            self.order = ORDERS[self.variant][0]  # "TMS" first for III / IV
        if self.order not in ORDERS[self.variant]:
            raise ValueError(f"order={self.order!r} is not an attention order of MM-ViT {self.variant.upper()}; "
                             f"expected one of {ORDERS[self.variant]}")
        if self.cross_modal not in CROSS_MODAL_KINDS:
            raise ValueError(f"cross_modal must be one of {CROSS_MODAL_KINDS}, got {self.cross_modal!r}")
        chosen = str(self.modalities).upper()
        if not chosen or any(m not in MODALITIES for m in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES!r} (I-frame, motion, "
                             f"residual, audio), got {self.modalities!r}")
        self.modalities = "".join(m for m in MODALITIES if m in chosen)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}")
        if self.variant in ("iii", "iv") and self.cross_modal == "coatt" and len(self.modalities) < 2:
            raise ValueError(f"co-attention (s' = S \\ {{s}}) needs at least 2 modalities, got {self.modalities!r}")
        if self.variant in ("iii", "iv") and self.cross_modal == "shift" and self.embed_dim % len(self.modalities):
            raise ValueError(f"shift-merge splits D={self.embed_dim} into one portion per modality: D must be "
                             f"divisible by {len(self.modalities)}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    def windows(self) -> tuple[int | None, tuple[int, int] | None]:
        """IV's local windows: (F frames, (wh, ww) patches); (None, None) for the other variants."""
        if self.variant != "iv":
            return None, None
        frames = self.window_frames or max(1, self.num_frames // 2)
        side = self.window_patches or max(1, self.grid[0] // 2)
        if self.num_frames % frames or self.grid[0] % side:
            raise ValueError(f"IV windows must tile the clip: T={self.num_frames} by F={frames} frames, the "
                             f"{self.grid} patch grid by {side}x{side} windows")
        return frames, (side, side)


class MMViTBlock(nn.Module):
    """One layer: the attention stages in `order` (eq. 9–10 / 12–14), IV's convolution, then the MLP."""

    def __init__(self, c: MMViTConfig):
        super().__init__()
        dim, heads = c.embed_dim, c.num_heads
        frames, window = c.windows()
        stages: dict[str, nn.Module] = {}
        if c.variant == "i":
            stages["J"] = JointAttention(dim, heads)
        else:
            across = c.variant == "ii"
            stages["T"] = TemporalAttention(dim, heads, across_modalities=across, window=frames)
            stages["S"] = SpatialAttention(dim, heads, c.grid, across_modalities=across, window=window)
            if c.variant in ("iii", "iv"):
                stages["M"] = CrossModalAttention(dim, heads, c.cross_modal)
        self.order = list(c.order or "J")
        if c.variant == "iv":
            stages["C"] = WindowConv(dim, c.grid, window)
            later = max(self.order.index("T"), self.order.index("S"))
            self.order.insert(later + 1, "C")
        self.stages = nn.ModuleDict(stages)
        self.mlp = Mlp(dim, c.mlp_ratio)

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """cls (B, 1, D), x (B, S, T, N, D) -> same shapes."""
        for name in self.order:
            cls, x = self.stages[name](cls, x)
        return self.mlp(cls, x)


class MMViT(nn.Module):
    """MM-ViT I–IV (§3.3) on compressed clips.

    forward(iframe (B, T, 3, H, W), motion (B, T, 2, H/g, W/g), residual (B, T, 3, H, W),
            audio_feat (B, T, 128) or None, *, audio_waveform (B, T, samples), sample_rate) -> logits (B, classes).
    Inputs of modalities the config does not select may be None (they are ignored). Audio: `audio_feat`,
    else log_mel_features(audio_waveform, sample_rate). I-frames / residuals as `CompressedPatchEmbed.
    clip_inputs` scales them ([0, 1] / [-1, 1]), motion in pixels.
    forward_clips(clips, audio_feat=None): the same for a list of vidsel.io.CompressedClip.
    """

    def __init__(self, config: MMViTConfig):
        super().__init__()
        self.config = c = config
        c.windows()  # validates IV's windows before anything is built
        self.embed = CompressedPatchEmbed(dim=c.embed_dim, patch=c.patch_size, num_frames=c.num_frames,
                                          size=c.img_size, audio="A" in c.modalities, audio_dim=c.audio_dim,
                                          impl=c.impl)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.blocks = nn.ModuleList(MMViTBlock(c) for _ in range(c.depth))
        self.norm = layer_norm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.num_classes)
        self._init_weights()
        # Indices of the selected modalities in the embedding's (I, M, R[, A]) output.
        self.register_buffer("_selected", torch.tensor([MODALITIES.index(m) for m in c.modalities]),
                             persistent=False)

    def _init_weights(self) -> None:
        """ViT init: trunc-normal(0.02) linear weights and CLS, zero biases; the embedding keeps its own."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Random (iframe, motion at g = config.motion_block, residual, audio_feat) on the model's device."""
        c, device = self.config, self.cls_token.device
        size, cells = c.img_size, c.img_size // c.motion_block
        return (torch.rand(batch_size, c.num_frames, 3, size, size, device=device),
                torch.randn(batch_size, c.num_frames, 2, cells, cells, device=device),
                torch.rand(batch_size, c.num_frames, 3, size, size, device=device) * 2 - 1,
                torch.randn(batch_size, c.num_frames, c.audio_dim, device=device))

    def forward(self, iframe: Tensor | None = None, motion: Tensor | None = None, residual: Tensor | None = None,
                audio_feat: Tensor | None = None, *, audio_waveform: Tensor | None = None,
                sample_rate: int | None = None) -> Tensor:
        x = self.tokens(iframe, motion, residual, audio_feat, audio_waveform=audio_waveform, sample_rate=sample_rate)
        # A copy, not a view: under no_grad a view of a parameter requires grad without a grad_fn.
        cls = self.cls_token.repeat(x.shape[0], 1, 1)
        for block in self.blocks:
            cls, x = block(cls, x)
        return self.head(self.norm(cls[:, 0]))

    def forward_clips(self, clips, audio_feat: Tensor | None = None) -> Tensor:
        """logits (B, classes) of B vidsel.io.CompressedClip of the config's T and size (one batch)."""
        return self(*self.clip_inputs(clips, audio_feat))

    def clip_inputs(self, clips, audio_feat: Tensor | None = None) -> tuple:
        """A list of CompressedClip -> (iframe, motion, residual, audio_feat) batched, as forward takes them.

        Audio: `audio_feat` (B, T, 128) when given, else log_mel_features of each clip's waveform.
        """
        from vidsel.io import CompressedClip

        if not isinstance(clips, (list, tuple)) or not clips or not all(isinstance(c, CompressedClip) for c in clips):
            raise TypeError("clips must be a non-empty list of vidsel.io.CompressedClip")
        c = self.config
        for clip in clips:
            if tuple(clip.iframes.shape) != (c.num_frames, 3, c.img_size, c.img_size):
                raise ValueError(f"{clip.path}: clip has I-frames {tuple(clip.iframes.shape)}, the model takes "
                                 f"(T={c.num_frames}, 3, {c.img_size}, {c.img_size}) (read_compressed(path, "
                                 f"{c.num_frames}, size={c.img_size}))")
            if "A" in c.modalities and audio_feat is None and clip.audio is None:
                raise ValueError(f"{clip.path}: the model uses audio but the clip has none; pass audio_feat or "
                                 "build the model without 'A' in modalities")
        if len({tuple(clip.motion.shape) for clip in clips}) > 1:
            raise ValueError("clips must share one motion block size (codec) to be batched")
        per_clip = [self.embed.clip_inputs(clip) for clip in clips]
        iframe, motion, residual = (torch.cat([p[i] for p in per_clip]) for i in range(3))
        if audio_feat is None and "A" in c.modalities:
            audio_feat = torch.cat([p[3] for p in per_clip])
        return iframe, motion, residual, audio_feat

    def tokens(self, iframe, motion, residual, audio_feat, *, audio_waveform=None, sample_rate=None) -> Tensor:
        """Embedded selected modalities (B, S, T, N, D), eq. 1–4 (audio replicated over the N positions)."""
        c = self.config
        given = dict(I=iframe, M=motion, R=residual)
        for m, name in (("I", "iframe"), ("M", "motion"), ("R", "residual")):
            if m in c.modalities and given[m] is None:
                raise ValueError(f"modalities={c.modalities!r} uses {name} but {name} is None")
        audio_feat = self._audio_features(audio_feat, audio_waveform, sample_rate) if "A" in c.modalities else None
        reference = next((t for t in (iframe, residual, motion, audio_feat) if t is not None), None)
        if reference is None:
            raise ValueError("no input given")
        batch = reference.shape[0]
        self._check_visual(iframe, "iframe", 3, batch)
        self._check_visual(residual, "residual", 3, batch)
        iframe, motion, residual = self._fill_unused(iframe, motion, residual, batch, reference)
        tokens = self.embed(iframe, motion, residual, audio_feat)  # (B, 3 or 4, T, N, D)
        if len(c.modalities) == tokens.shape[1]:
            return tokens
        return tokens.index_select(1, self._selected)

    def _audio_features(self, audio_feat, waveform, sample_rate) -> Tensor:
        c = self.config
        if audio_feat is None:
            if waveform is None or sample_rate is None:
                raise ValueError(f"modalities={c.modalities!r} uses audio: pass audio_feat (B, T, {c.audio_dim}) "
                                 "or audio_waveform (B, T, samples) with sample_rate")
            if waveform.dim() != 3 or waveform.shape[1] != c.num_frames:
                raise ValueError(f"audio_waveform must have shape (B, T={c.num_frames}, samples), "
                                 f"got {tuple(waveform.shape)}")
            dtype = self.cls_token.dtype
            audio_feat = torch.stack([log_mel_features(w, sample_rate, c.audio_dim) for w in waveform]).to(dtype)
        if audio_feat.dim() != 3 or tuple(audio_feat.shape[1:]) != (c.num_frames, c.audio_dim):
            raise ValueError(f"audio_feat must have shape (B, T={c.num_frames}, {c.audio_dim}), "
                             f"got {tuple(audio_feat.shape)}")
        return audio_feat

    def _check_visual(self, tensor, name: str, channels: int, batch: int) -> None:
        c = self.config
        expected = (batch, c.num_frames, channels, c.img_size, c.img_size)
        if tensor is not None and tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must have shape (B, T, {channels}, H, W) = {expected}, got {tuple(tensor.shape)}")

    def _fill_unused(self, iframe, motion, residual, batch: int, reference: Tensor):
        """Zeros for visual inputs of unselected modalities (CompressedPatchEmbed embeds all three; their
        tokens are dropped): costs their projections, ≤ 2.5 GFLOPs at 224² (~1% of a one-modality model)."""
        c = self.config
        like = dict(device=reference.device, dtype=self.cls_token.dtype)
        frames, size, cells = c.num_frames, c.img_size, c.img_size // c.motion_block
        iframe = iframe if iframe is not None else torch.zeros(batch, frames, 3, size, size, **like)
        residual = residual if residual is not None else torch.zeros(batch, frames, 3, size, size, **like)
        motion = motion if motion is not None else torch.zeros(batch, frames, 2, cells, cells, **like)
        return iframe, motion, residual


# ------------------------------------------------------------------------------------------------
# Registered configs (Table 1; paper Params / TFLOPs for UCF-101 with all four modalities)
# ------------------------------------------------------------------------------------------------

CONFIGS = {
    "mmvit_i": (dict(variant="i", order=""), "MM-ViT I, joint space-time-modality (Table 1: 87.23 M, 1.26 T)"),
    "mmvit_ii": (dict(variant="ii", order="TS"), "MM-ViT II, factorised space-time (Table 1: 122.69 M, 0.85 T)"),
    "mmvit_iii_merged": (dict(variant="iii", cross_modal="merged"),
                         "MM-ViT III, merged attention, T⇒M⇒S (Table 1: 158.14 M, 0.82 T)"),
    "mmvit_iii_coatt": (dict(variant="iii", cross_modal="coatt"),
                        "MM-ViT III, co-attention, T⇒M⇒S (Table 1: 158.14 M, 0.82 T)"),
    "mmvit_iii_shift": (dict(variant="iii", cross_modal="shift"),
                        "MM-ViT III, shift-merge attention, T⇒M⇒S (Table 1: 143.98 M, 0.78 T)"),
    "mmvit_iv": (dict(variant="iv", cross_modal="merged"),
                 "MM-ViT IV, local windows + convolution, merged attention (Table 1: 158.60 M, 0.72 T)"),
}


def build_mmvit(name: str, **overrides) -> MMViT:
    """Registered config `name` with config fields replaced by `overrides` (ValueError for unknown fields)."""
    base, _ = CONFIGS[name]
    known = {f.name for f in fields(MMViTConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown MMViTConfig fields {sorted(unknown)}; known: {sorted(known)}")
    return MMViT(replace(MMViTConfig(**base), **overrides))


def _register(name: str, doc: str) -> None:
    def build(**overrides):
        return build_mmvit(name, **overrides)

    build.__name__, build.__doc__ = name, doc
    register_model(name)(build)


for _name, (_base, _doc) in CONFIGS.items():
    _register(_name, _doc)
