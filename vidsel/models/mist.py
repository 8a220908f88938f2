"""MIST: Multi-modal Iterative Spatial-temporal Transformer for long-form VideoQA (Gao et al., CVPR 2023).

Inputs (§3.1) are features of a frozen vision-language encoder (CLIP ViT-B/32 in MIST-CLIP): the video
is split into K segments of T frames, every frame into N patch tokens (CLS first), each D wide::

    patches (B, K, T, N, D)   words (B, M, D), w_1 = [CLS]   answers (B, A, D) candidate features

A temporal position embedding P_t = φ_t(frame index) over the K·T frames is added to every token of
its frame. Frame feature f_t^k = first token (CLS pooling), segment s_k = mean over its T frames,
question q = w_1 (§3.2, "for image-language Transformers, like CLIP").

Each of the L Iterative Spatial-Temporal Attention layers (ISTA, §3.2, Fig. 4):
  1. segment selection, eq. 2–3 (`vidsel.nn.SegmentSelector`): X_t = Top_k segments' patches;
  2. region selection, eq. 4–5 (`vidsel.nn.RegionSelector`): X_st = Top_j patches of each of the
     Top_k·T selected frames;
  3. spatial-temporal self-attention, eq. 6: MultiHead([φ_s(S); φ_x(X_st); φ_w(X_w)] + type embeddings);
     the updated segment and word features feed the next layer (q = its first word token).
Answer (§3.3): X_o = MeanPool of the output tokens of all L layers (padded words left out), and
eq. 7 logits = X_o · X_Aᵀ (one linear layer on each side), trained with softmax cross-entropy
(`MIST.loss`).

Baselines of Table 5 (same inputs, same answer head): "meanpool" (mean of all frame features),
"trans_frame" (Transformer over frame features + words), "trans_patch" (over all K·T·N patch tokens +
words), "divided_sta" (TimeSformer divided space-time attention over the patches). Ablations of
Table 6: w/o SS (region selection on all frames), w/o RS (all N patches of the selected segments),
w/o STA (mean pool of the segment, region and word tokens instead of attention).

Registered: mist_clip (K=8, T=4, N=50, D=512, Top_k=2, Top_j=12, L=2, 8 heads, §4.2), mist_meanpool,
mist_trans_frame, mist_trans_patch, mist_divided_sta, mist_wo_ss, mist_wo_rs, mist_wo_sta. Any config
field can be overridden, e.g. ``create_model("mist_clip", num_segments=32)`` for 128 frames,
``selector="gumbel_no_replacement"`` or ``selector="attention", num_layers=1`` (Appendix A, Table 8).

Assumptions where the paper leaves a choice open (the README repeats them):
  * one pre-norm Transformer layer (multi-head attention + 4x MLP) is "the self-attention layer" of an
    ISTA and of each Trans.-Frame / Trans.-Patch / divided-STA layer; the baselines have L layers too;
  * "mean pool the token features of all ISTA layers" is read literally: X_o = mean over the layers of
    the mean over each layer's output tokens (the official code sums the question-[CLS] outputs instead);
    Trans.-Frame / Trans.-Patch pool their output tokens the same way; MeanPool and divided STA
    (uni-modal video encoders) fuse φ_v(video) + φ_w(w_1);
  * w/o STA: X_o^(l) = mean of the tokens [φ_s(S); φ_x(X_st); φ_w(X_w)], segment and word features
    unchanged;
  * X_o and the answer candidates pass through one linear layer each before eq. 7;
  * eval keeps Top_k / Top_j *distinct* items (deterministic hard top-k), while training draws with
    replacement (the paper's default) and often draws the one relevant item several times; pass
    selector / region_selector = "gumbel_no_replacement" for training draws that match eval.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vidsel.models._registry import register_model
from vidsel.nn.mist_selectors import SELECTORS, RegionSelector, SegmentSelector

__all__ = [
    "MISTConfig",
    "MIST",
    "ISTALayer",
    "FrameEncoder",
    "TinyViTEncoder",
    "encode_inputs",
    "CONFIGS",
    "VARIANTS",
]

VARIANTS = ("ista", "meanpool", "trans_frame", "trans_patch", "divided_sta")


@dataclass
class MISTConfig:
    """MIST-CLIP defaults (§4.2): 32 frames as K=8 segments of T=4, ViT-B/32 tokens (N=50, D=512)."""

    num_segments: int = 8  # K
    frames_per_segment: int = 4  # T
    num_patches: int = 50  # N: CLS + 7x7 patches of ViT-B/32 at 224²
    dim: int = 512  # D
    topk: int = 2  # Top_k segments
    topj: int = 12  # Top_j patches per selected frame
    num_layers: int = 2  # L ISTA layers (or baseline layers)
    num_heads: int = 8
    mlp_ratio: float = 4.0
    selector: str = "gumbel"  # segment selector: "gumbel" | "gumbel_no_replacement" | "attention"
    region_selector: str = "gumbel"  # the same choices, for Top_j regions
    tau: float = 1.0  # Gumbel-softmax temperature
    variant: str = "ista"  # "ista" | "meanpool" | "trans_frame" | "trans_patch" | "divided_sta"
    segment_selection: bool = True  # False: MIST w/o SS
    region_selection: bool = True  # False: MIST w/o RS
    self_attention: bool = True  # False: MIST w/o STA
    num_words: int = 20  # M of example_inputs (any M is accepted by forward)
    num_answers: int = 5  # A of example_inputs (5 choices as in NExT-QA)
    impl: str = "auto"  # backend of the vidsel ops

    def __post_init__(self):
        for name in ("num_segments", "frames_per_segment", "num_patches", "dim", "topk", "topj", "num_layers",
                     "num_heads", "num_words", "num_answers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("selector", "region_selector"):
            if getattr(self, name) not in SELECTORS:
                raise ValueError(f"{name} must be one of {SELECTORS}, got {getattr(self, name)!r}")
        if self.segment_selection and self.topk > self.num_segments:
            raise ValueError(f"topk={self.topk} must be <= num_segments={self.num_segments}")
        if self.region_selection and self.topj > self.num_patches:
            raise ValueError(f"topj={self.topj} must be <= num_patches={self.num_patches}")

    @property
    def num_frames(self) -> int:
        """K·T sampled frames."""
        return self.num_segments * self.frames_per_segment


# ------------------------------------------------------------------------------------------------
# Transformer pieces (pre-norm; torch SDPA, counted by vidsel.flops)
# ------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention residual: x (B, L, D), keep (B, L) bool or None -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(self.norm(x)), "b l (three h c) -> three b h l c", three=3, h=self.num_heads)
        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.proj(rearrange(out, "b h l c -> b l (h c)"))


class Mlp(nn.Module):
    """Pre-norm MLP residual: x + Linear(GELU(Linear(LN(x))))."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Block(nn.Module):
    """One Transformer layer: self-attention then MLP, x (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.mlp(self.attn(x, keep))


class DividedBlock(nn.Module):
    """TimeSformer divided space-time layer on x (B, F, N, D): attention across the F frames at every
    patch position, then across the N patches of every frame, then the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.temporal = SelfAttention(dim, num_heads)
        self.spatial = SelfAttention(dim, num_heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        frames, patches = x.shape[1:3]
        x = rearrange(self.temporal(rearrange(x, "b f n d -> (b n) f d")), "(b n) f d -> b f n d", n=patches)
        x = rearrange(self.spatial(rearrange(x, "b f n d -> (b f) n d")), "(b f) n d -> b f n d", f=frames)
        return self.mlp(x)


def _with_words(num_video_tokens: int, word_keep: Tensor | None) -> Tensor | None:
    """Key mask (B, V + M) for [video tokens; words]: video tokens always kept."""
    if word_keep is None:
        return None
    video = word_keep.new_ones(word_keep.shape[0], num_video_tokens)
    return torch.cat([video, word_keep], dim=1)


def _token_mean(tokens: Tensor, keep: Tensor | None) -> Tensor:
    """Mean over the tokens (B, L, D) -> (B, D), padded words (keep False) left out."""
    if keep is None:
        return tokens.mean(dim=1)
    weights = keep.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)


# ------------------------------------------------------------------------------------------------
# ISTA (§3.2) and the MIST head
# ------------------------------------------------------------------------------------------------


class ISTALayer(nn.Module):
    """One Iterative Spatial-Temporal Attention layer (§3.2, Fig. 4).

    forward(patches (B, K, T, N, D), segments (B, K, D), words (B, M, D), word_keep (B, M) or None) ->
        segments (B, K, D), words (B, M, D) updated for the next layer, X_o^(l) (B, D) the mean of the
        output tokens, segment index (B, k') and region index (B, k'·T, j'), where k' = Top_k (K w/o
        SS) and j' = Top_j (N w/o RS).
    """

    def __init__(self, c: MISTConfig):
        super().__init__()
        self.config = c
        d = c.dim
        self.segment_selector = self.region_selector = None
        if c.segment_selection:
            self.segment_selector = SegmentSelector(d, c.topk, selector=c.selector, tau=c.tau, impl=c.impl)
        if c.region_selection:
            self.region_selector = RegionSelector(d, c.topj, selector=c.region_selector, tau=c.tau, impl=c.impl)
        self.phi_s, self.phi_x, self.phi_w = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.type_embed = nn.Parameter(torch.zeros(3, d))  # φ_h(h), h = segment, region, word
        self.attention = Block(d, c.num_heads, c.mlp_ratio) if c.self_attention else None

    def forward(self, patches: Tensor, segments: Tensor, words: Tensor, word_keep: Tensor | None):
        batch, num_segments, frames_per_segment, num_patches, _ = patches.shape
        question = words[:, 0]
        if self.segment_selector is not None:
            x_t, segment_index = self.segment_selector(patches, segments, question)  # eq. 2–3
        else:
            x_t = patches
            segment_index = torch.arange(num_segments, device=patches.device).expand(batch, num_segments)
        frames = rearrange(x_t, "b k t n d -> b (k t) n d")
        if self.region_selector is not None:
            x_st, region_index = self.region_selector(frames, question)  # eq. 4–5
        else:
            x_st = frames
            region_index = torch.arange(num_patches, device=patches.device).expand(*frames.shape[:2], num_patches)
        regions = rearrange(x_st, "b f j d -> b (f j) d")
        seg_tokens = self.phi_s(segments) + self.type_embed[0]
        region_tokens = self.phi_x(regions) + self.type_embed[1]
        word_tokens = self.phi_w(words) + self.type_embed[2]
        tokens = torch.cat([seg_tokens, region_tokens, word_tokens], dim=1)
        keep = _with_words(num_segments + regions.shape[1], word_keep)
        if self.attention is None:  # MIST w/o STA: the tokens are mean pooled instead of eq. 6
            return segments, words, _token_mean(tokens, keep), segment_index, region_index
        out = self.attention(tokens, keep)  # eq. 6
        return out[:, :num_segments], out[:, -words.shape[1]:], _token_mean(out, keep), segment_index, region_index


class ISTAHead(nn.Module):
    """L ISTA layers; X_o = mean of the layers' outputs (§3.3). Info: selected indices per layer."""

    def __init__(self, c: MISTConfig):
        super().__init__()
        self.layers = nn.ModuleList(ISTALayer(c) for _ in range(c.num_layers))

    def forward(self, patches: Tensor, frame_feats: Tensor, words: Tensor, word_keep: Tensor | None):
        segments = frame_feats.mean(dim=2)  # s_k = mean over its T frame features
        outputs, segment_indices, region_indices = [], [], []
        for layer in self.layers:
            segments, words, pooled, segment_index, region_index = layer(patches, segments, words, word_keep)
            outputs.append(pooled)
            segment_indices.append(segment_index)
            region_indices.append(region_index)
        info = dict(segments=torch.stack(segment_indices, dim=1), regions=torch.stack(region_indices, dim=1))
        return torch.stack(outputs, dim=0).mean(dim=0), info


# ------------------------------------------------------------------------------------------------
# Baselines of Table 5 (§4.4)
# ------------------------------------------------------------------------------------------------


class PooledFusionHead(nn.Module):
    """MeanPool (mean of all frame features) or divided STA (L divided space-time layers over the
    patches, then the mean of the frames' CLS outputs): X_o = φ_v(video) + φ_w(w_1)."""

    def __init__(self, c: MISTConfig, divided: bool):
        super().__init__()
        depth = c.num_layers if divided else 0
        self.blocks = nn.ModuleList(DividedBlock(c.dim, c.num_heads, c.mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(c.dim) if divided else nn.Identity()
        self.phi_v, self.phi_w = nn.Linear(c.dim, c.dim), nn.Linear(c.dim, c.dim)

    def forward(self, patches: Tensor, frame_feats: Tensor, words: Tensor, word_keep: Tensor | None):
        if len(self.blocks):
            x = rearrange(patches, "b k t n d -> b (k t) n d")
            for block in self.blocks:
                x = block(x)
            frame_feats = x[:, :, 0]
        video = self.norm(frame_feats.flatten(1, -2).mean(dim=1))
        return self.phi_v(video) + self.phi_w(words[:, 0]), {}


class TokenTransformerHead(nn.Module):
    """Trans.-Frame (K·T frame tokens) or Trans.-Patch (all K·T·N patch tokens): L Transformer layers
    over [φ_v(video tokens) + type; φ_w(words) + type]; X_o = mean of the output tokens."""

    def __init__(self, c: MISTConfig, patches: bool):
        super().__init__()
        self.patches = patches
        self.phi_v, self.phi_w = nn.Linear(c.dim, c.dim), nn.Linear(c.dim, c.dim)
        self.type_embed = nn.Parameter(torch.zeros(2, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.num_heads, c.mlp_ratio) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.dim)

    def forward(self, patches: Tensor, frame_feats: Tensor, words: Tensor, word_keep: Tensor | None):
        pattern = "b k t n d -> b (k t n) d" if self.patches else "b k t d -> b (k t) d"
        video = rearrange(patches if self.patches else frame_feats, pattern)
        x = torch.cat([self.phi_v(video) + self.type_embed[0], self.phi_w(words) + self.type_embed[1]], dim=1)
        keep = _with_words(video.shape[1], word_keep)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(_token_mean(x, keep)), {}


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


class MIST(nn.Module):
    """MIST VideoQA head on frozen-encoder features (or one of its Table 5 / 6 variants).

    forward(patches (B, K, T, N, D), words (B, M, D), answers (B, A, D), *, word_mask=None,
    return_info=False) -> logits (B, A) (eq. 7). word_mask (B, M) bool marks real words (w_1 must be
    real). With return_info=True also a dict; for ISTA variants "segments" (B, L, k) and "regions"
    (B, L, k·T, j) are the selected segment / patch indices of every layer (eval: highest score
    first), empty for the Table 5 baselines.
    """

    def __init__(self, config: MISTConfig):
        super().__init__()
        self.config = c = config
        self.frame_pos = nn.Parameter(torch.zeros(c.num_frames, c.dim))  # P_t = φ_t(frame index)
        if c.variant == "ista":
            self.head = ISTAHead(c)
        elif c.variant in ("meanpool", "divided_sta"):
            self.head = PooledFusionHead(c, divided=c.variant == "divided_sta")
        else:
            self.head = TokenTransformerHead(c, patches=c.variant == "trans_patch")
        self.vq_proj = nn.Linear(c.dim, c.dim)
        self.answer_proj = nn.Linear(c.dim, c.dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.frame_pos, std=0.02)

    def forward(
        self, patches: Tensor, words: Tensor, answers: Tensor, *, word_mask: Tensor | None = None,
        return_info: bool = False,
    ):
        self._check_inputs(patches, words, answers, word_mask)
        c = self.config
        pos = rearrange(self.frame_pos, "(k t) d -> k t 1 d", k=c.num_segments)
        patches = patches + pos.to(patches.dtype)
        frame_feats = patches[:, :, :, 0]  # first-token pooling: f_t^k (B, K, T, D)
        fused, info = self.head(patches, frame_feats, words, word_mask)
        logits = torch.einsum("bd,bad->ba", self.vq_proj(fused), self.answer_proj(answers))  # eq. 7
        return (logits, info) if return_info else logits

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        """Softmax cross-entropy between the answer scores (B, A) and the answer index (B,) (§3.3)."""
        return F.cross_entropy(logits, target)

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """Random (patches (B, K, T, N, D), words (B, M, D), answers (B, A, D)) on the model's device."""
        c = self.config
        device = self.frame_pos.device
        return (
            torch.randn(batch_size, c.num_segments, c.frames_per_segment, c.num_patches, c.dim, device=device),
            torch.randn(batch_size, c.num_words, c.dim, device=device),
            torch.randn(batch_size, c.num_answers, c.dim, device=device),
        )

    def _check_inputs(self, patches, words, answers, word_mask) -> None:
        c = self.config
        for name, value in (("patches", patches), ("words", words), ("answers", answers)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                got = getattr(value, "dtype", type(value).__name__)
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
        expected = (c.num_segments, c.frames_per_segment, c.num_patches, c.dim)
        if patches.dim() != 5 or tuple(patches.shape[1:]) != expected:
            raise ValueError(f"patches must have shape (B, K, T, N, D) = (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(patches.shape)}")
        batch = patches.shape[0]
        for name, value, layout in (("words", words, "M"), ("answers", answers, "A")):
            if value.dim() != 3 or value.shape[0] != batch or value.shape[2] != c.dim:
                raise ValueError(f"{name} must have shape (B, {layout}, D) = ({batch}, {layout}, {c.dim}), "
                                 f"got {tuple(value.shape)}")
        if word_mask is not None:
            if not isinstance(word_mask, Tensor) or word_mask.dtype != torch.bool:
                got = getattr(word_mask, "dtype", type(word_mask).__name__)
                raise TypeError(f"word_mask must be a bool tensor (B, M), got {got}")
            if tuple(word_mask.shape) != tuple(words.shape[:2]):
                raise ValueError(
                    f"word_mask must have shape (B, M) = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}"
                )


def _init_weights(module: nn.Module) -> None:
    """BERT-style: normal(0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (ISTALayer, TokenTransformerHead)):
        nn.init.trunc_normal_(module.type_embed, std=0.02)


# ------------------------------------------------------------------------------------------------
# Features in: the frozen encoder (§3.1)
# ------------------------------------------------------------------------------------------------


@runtime_checkable
class FrameEncoder(Protocol):
    """What MIST needs from its frozen vision-language encoder (§3.1).

    encode_frames(frames (B, F, 3, H, W), uint8 or float in [0, 1]) -> patch tokens (B, F, N, D), CLS first.
    encode_text(tokens (..., M) int64) -> word features (..., M, D), [CLS] first.

    A real CLIP plugs in as any module with these two methods: e.g. wrap open_clip / HF CLIP's vision
    tower and return its last hidden states (B·F, 50, 768) through `ln_post` and the visual projection
    (-> (B, F, 50, 512) for ViT-B/32), and the text tower's per-token outputs projected to 512. Run it
    under torch.no_grad() (the encoder is frozen); MIST only ever sees the (…, N, D) tokens.
    `TinyViTEncoder` is a small randomly initialised stand-in (no weights can be downloaded here).
    """

    def encode_frames(self, frames: Tensor) -> Tensor: ...

    def encode_text(self, tokens: Tensor) -> Tensor: ...


class TinyViTEncoder(nn.Module):
    """A small random ViT + text Transformer implementing `FrameEncoder`, for tests and examples.

    Frames: (B, F, 3, H, W) -> (B, F, 1 + (H/P)(W/P), D): ViT patch embedding (conv P×P), CLS, learned
    position embedding, `depth` Transformer layers, final LayerNorm. Text: (..., M) token ids ->
    (..., M, D): token + position embedding, `depth` layers, LayerNorm. H = W = img_size.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 8, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 vocab_size: int = 1000, max_words: int = 32):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        self.img_size, self.vocab_size, self.max_words = img_size, vocab_size, max_words
        self.num_patches = 1 + (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        self.vision = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.vision_norm = nn.LayerNorm(dim)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.word_pos = nn.Parameter(torch.randn(1, max_words, dim) * 0.02)
        self.text = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.text_norm = nn.LayerNorm(dim)

    def encode_frames(self, frames: Tensor) -> Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3 or tuple(frames.shape[3:]) != (self.img_size,) * 2:
            size = self.img_size
            raise ValueError(f"frames must have shape (B, F, 3, {size}, {size}), got {tuple(frames.shape)}")
        pixels = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        batch = frames.shape[0]
        x = self.patch_embed((rearrange(pixels, "b f c h w -> (b f) c h w") - 0.5) / 0.25)
        x = rearrange(x, "bf d h w -> bf (h w) d")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.vision:
            x = block(x)
        return rearrange(self.vision_norm(x), "(b f) n d -> b f n d", b=batch)

    def encode_text(self, tokens: Tensor) -> Tensor:
        if tokens.dtype != torch.int64 or tokens.dim() < 1 or tokens.shape[-1] > self.max_words:
            raise ValueError(f"tokens must be an int64 tensor (..., M) with M <= {self.max_words}, "
                             f"got {tokens.dtype} {tuple(tokens.shape)}")
        lead, words = tokens.shape[:-1], tokens.shape[-1]
        x = self.token_embed(tokens.reshape(-1, words)) + self.word_pos[:, :words]
        for block in self.text:
            x = block(x)
        return self.text_norm(x).reshape(*lead, words, -1)


def encode_inputs(
    encoder: FrameEncoder, frames: Tensor, question: Tensor, answers: Tensor, num_segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Frozen-encoder features in MIST's layout (§3.1), without gradients.

    frames (B, K·T, 3, H, W) (e.g. `vidsel.io.read_frames(path, K·T)[None]`), question (B, M) and
    answers (B, A, M_a) token ids -> patches (B, K, T, N, D), words (B, M, D), answers (B, A, D)
    (each candidate's [CLS] word feature).
    """
    if frames.dim() != 5 or frames.shape[1] % num_segments:
        raise ValueError(f"frames must have shape (B, K·T, 3, H, W) with K·T divisible by num_segments="
                         f"{num_segments}, got {tuple(frames.shape)}")
    with torch.no_grad():
        patches = rearrange(encoder.encode_frames(frames), "b (k t) n d -> b k t n d", k=num_segments)
        words = encoder.encode_text(question)
        answer_feats = encoder.encode_text(answers)[..., 0, :]
    return patches, words, answer_feats


# ------------------------------------------------------------------------------------------------
# Registered configs (§4.2, Tables 5, 6)
# ------------------------------------------------------------------------------------------------

CONFIGS = {
    "mist_clip": (dict(), "MIST-CLIP: K=8, T=4, N=50, D=512, Top_k=2, Top_j=12, L=2, 8 heads (§4.2)"),
    "mist_meanpool": (dict(variant="meanpool"), "Table 5 MeanPool: average of the frame features"),
    "mist_trans_frame": (dict(variant="trans_frame"), "Table 5 Trans.-Frame: Transformer over frame features"),
    "mist_trans_patch": (dict(variant="trans_patch"), "Table 5 Trans.-Patch: Transformer over all patch tokens"),
    "mist_divided_sta": (dict(variant="divided_sta"), "Table 5 Divided STA: TimeSformer space-time attention"),
    "mist_wo_ss": (dict(segment_selection=False), "Table 6 MIST w/o SS: region selection on all frames"),
    "mist_wo_rs": (dict(region_selection=False), "Table 6 MIST w/o RS: all patches of the selected segments"),
    "mist_wo_sta": (dict(self_attention=False), "Table 6 MIST w/o STA: mean pooling instead of attention"),
}


def _register(name: str, base: dict, doc: str) -> None:
    def build(**overrides) -> MIST:
        known = {f.name for f in fields(MISTConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown MISTConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return MIST(replace(MISTConfig(**base), **overrides))

    build.__name__, build.__doc__ = name, doc
    register_model(name)(build)


for _name, (_base, _doc) in CONFIGS.items():
    _register(_name, _base, _doc)
