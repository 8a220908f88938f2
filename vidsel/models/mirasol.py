"""Mirasol3B (Piergiovanni et al., CVPR 2024): time-aligned audio-video autoregression + a text decoder.

The model follows §3 of the paper:
  * eq. 1: video (B, F, 3, H, W) and audio (B, S) are cut into T time-aligned chunks of K = F / T frames.
  * §3.1: per chunk, 2D patches and sparse 3D tubes starting at the chunk start (no offsets) go through
    a ViT -> v̂_t (f features); the chunk's log-mel spectrogram (one time band per video frame at 25 fps)
    goes through an audio input projection and the SAME ViT -> â_t (s features); u_t = (v̂_t, â_t).
  * §3.2: a Combiner maps u_1..u_t to x_t (m features, eq. 2): the causal Transformer Combiner
    (block-causal at chunk level, eq. 8) or the TTM Combiner (eq. 3-6). While training, 75% of the
    Combiner outputs are masked before the latent model (§3.6).
  * §3.3: the latent causal model, a block-causal Transformer over x_1..x_T -> ĥ_1..ĥ_T (eq. 7, p(h_t|x_t)),
    and an optional video reconstruction head predicting a downsampled chunk t+1 from ĥ_t.
  * §3.4, eq. 9: an autoregressive text decoder with cross-attention to all of ĥ.
  * §3.5: latent loss 1 - cos(ĥ_t, x_{t+1}) of L2-normalised features; text cross-entropy; optional
    reconstruction with the same distance; configurable weights (fine-tuning: text x10, §3.6).

Every self-attention is `vidsel.ops.chunk_causal_attention` (through `ChunkCausalSelfAttention`):
one chunk for the per-chunk ViT and the TTM processor, chunks of n / m tokens for the Combiner and
the latent model, chunks of one token for the text decoder. No (L, L) mask is ever built. The text
decoder's cross-attention to ĥ is unmasked (every text token sees every ĥ), plain SDPA.

Streaming (§3.4, "naturally applicable to streaming videos"): `init_state` / `step` process one chunk
at a time with the Combiner's state (Transformer: KV caches; TTM: the memory) and the latent model's
KV caches, giving the ĥ of `encode`; `generate` decodes text greedily from the ĥ seen so far.

Shapes: B batch, F frames, T chunks, K frames per chunk, n = f + s features per chunk, m Combiner
outputs per chunk, d width, P text length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidsel.models._registry import register_model
from vidsel.nn import ChunkCache, ChunkCausalBlock, ChunkCausalSelfAttention, TransformerCombiner, TTMCombiner
from vidsel.nn import log_mel_features
from vidsel.nn.combiner import Mlp


@dataclass
class MirasolConfig:
    """Model shape. `tubes` lists the video tokenizers as (kt, kh, kw, st, sh, sw): kernel and stride in
    (frames, pixels, pixels); the first is the 2D patch (kt = 1), the others the sparse 3D tubes."""

    num_frames: int = 128  # F of example_inputs; forward takes any F divisible by num_chunks
    num_chunks: int = 16  # T
    img_size: int = 224
    tubes: tuple = ((1, 16, 16, 8, 16, 16), (8, 8, 8, 8, 32, 32), (4, 12, 12, 4, 48, 48))
    audio: bool = True
    sample_rate: int = 16000
    fps: int = 25  # spectrogram time bands per second: one per video frame
    mel_bins: int = 128
    audio_patch: tuple = (4, 16)  # spectrogram patch: (time bands, mel bins)
    dim: int = 768  # ViT, Combiner and latent model width
    vit_depth: int = 12
    vit_heads: int = 12
    combiner: str = "transformer"  # "transformer" | "ttm"
    combiner_depth: int = 8  # R
    combiner_heads: int = 12
    num_outputs: int = 32  # m
    combiner_selection: str = "learned"  # Transformer Combiner: "learned" | "last"
    memory_tokens: int = 128  # TTM memory size
    read_tokens: int = 64  # TTM tokens read per step
    output_mask_ratio: float = 0.75  # random masking of the Combiner outputs while training
    latent_depth: int = 12
    latent_heads: int = 12
    reconstruction: bool = False  # optional video reconstruction head
    recon_size: int = 8  # v_small: chunk mean frame pooled to (3, recon_size, recon_size)
    recon_depth: int = 1
    text_dim: int = 768
    text_depth: int = 12
    text_heads: int = 12
    vocab_size: int = 259  # vidsel.nn.ByteTokenizer
    pad_id: int = 256
    text_len: int = 16  # P of example_inputs
    mlp_ratio: float = 4.0
    latent_weight: float = 1.0
    text_weight: float = 1.0  # the paper's fine-tuning: 10
    recon_weight: float = 1.0
    impl: str = "auto"  # backend of the attention op


@dataclass
class MirasolOutput:
    """forward's result. loss = weighted sum of the terms present; text_loss / logits are None without
    text, recon_loss None without the reconstruction head."""

    loss: Tensor
    latent_loss: Tensor
    text_loss: Tensor | None
    x: Tensor  # (B, T, m, d) Combiner outputs
    h: Tensor  # (B, T, m, d) latent model outputs ĥ
    logits: Tensor | None  # (B, P, vocab)
    recon_loss: Tensor | None = None


@dataclass
class MirasolState:
    """Streaming state: the Combiner's (KV caches or TTM memory), the latent model's KV caches, the
    number t of chunks seen and their ĥ (for `generate`)."""

    combiner: Any
    latent: list
    t: int = 0
    h: list = field(default_factory=list)


MASK_BIAS = -1e4  # attention score bias of a masked feature: exp(-1e4) underflows to 0 in fp32/bf16


def sincos(positions: Tensor, dim: int) -> Tensor:
    """Fixed sinusoidal embedding: positions (N,) float -> (N, dim), dim even."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(1e4) / dim))
    angles = positions.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_grid(axes: list[Tensor], dim: int) -> Tensor:
    """Sinusoidal embedding of a grid: one coordinate vector per axis -> (prod(len), dim); the channels
    are split between the axes (the first axis takes the remainder)."""
    share = 2 * (dim // (2 * len(axes)))
    widths = [dim - share * (len(axes) - 1)] + [share] * (len(axes) - 1)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.cat([sincos(g.reshape(-1), w) for g, w in zip(grids, widths)], dim=-1)


def _check_config(c: MirasolConfig) -> None:
    if c.combiner not in ("transformer", "ttm"):
        raise ValueError(f"combiner must be 'transformer' or 'ttm', got {c.combiner!r}")
    if c.dim % 2 or c.text_dim % 2:
        raise ValueError(f"dim and text_dim must be even (sinusoidal positions), got {c.dim}, {c.text_dim}")
    if not 0.0 <= c.output_mask_ratio < 1.0:
        raise ValueError(f"output_mask_ratio must be in [0, 1), got {c.output_mask_ratio}")
    if c.sample_rate % c.fps:
        raise ValueError(f"sample_rate={c.sample_rate} must be a multiple of fps={c.fps}")
    if not c.tubes or any(len(t) != 6 or min(t) < 1 for t in c.tubes):
        raise ValueError(f"tubes must be (kt, kh, kw, st, sh, sw) tuples of positive ints, got {c.tubes}")
    if c.mel_bins % c.audio_patch[1]:
        raise ValueError(f"audio_patch[1]={c.audio_patch[1]} must divide mel_bins={c.mel_bins}")


class TubeEmbed(nn.Module):
    """§3.1 video tokens of one chunk: 2D patches + sparse 3D tubes, all anchored at the chunk start.

    forward(chunk (B', 3, K, H, W), frames in [0, 1]) -> (B', f, d). Pixels are standardised with the
    Kinetics mean / std (0.45, 0.225); each tokenizer is a strided Conv3d (zero bias); every token gets
    the fixed 3D sinusoidal embedding of its kernel centre (frames, pixels) plus a learned embedding of
    its tokenizer, so K (frames per chunk) can change without new parameters.
    """

    def __init__(self, tubes, dim: int):
        super().__init__()
        self.tubes = [tuple(t) for t in tubes]
        self.convs = nn.ModuleList(nn.Conv3d(3, dim, t[:3], stride=t[3:]) for t in self.tubes)
        self.kind = nn.Parameter(torch.zeros(len(self.tubes), dim))
        nn.init.trunc_normal_(self.kind, std=0.02)
        for conv in self.convs:  # ViT patch-embedding init: a constant bias is a feature every chunk shares
            nn.init.zeros_(conv.bias)

    def forward(self, chunk: Tensor) -> Tensor:
        frames = chunk.shape[2]
        chunk = (chunk - 0.45) / 0.225  # frames in [0, 1] -> roughly zero mean, unit variance
        tokens = []
        for index, (conv, (kt, kh, kw, st, sh, sw)) in enumerate(zip(self.convs, self.tubes)):
            if kt > frames:
                raise ValueError(f"tube {self.tubes[index]} is longer than a chunk of K={frames} frames")
            y = conv(chunk)  # (B', d, t', h', w')
            centres = [torch.arange(size, device=y.device) * stride + (kernel - 1) / 2
                       for size, stride, kernel in zip(y.shape[2:], (st, sh, sw), (kt, kh, kw))]
            pos = sincos_grid(centres, y.shape[1]).to(y.dtype)
            tokens.append(y.flatten(2).transpose(1, 2) + pos + self.kind[index])
        return torch.cat(tokens, dim=1)


class AudioEmbed(nn.Module):
    """§3.1 audio input projection: a chunk's spectrogram (B', K bands, mel_bins) -> (B', s, d) patches of
    (bands, bins) = `patch`, LayerNorm + Linear, fixed 2D sinusoidal positions, learned modality embedding."""

    def __init__(self, patch: tuple[int, int], dim: int):
        super().__init__()
        self.patch = tuple(patch)
        self.norm = nn.LayerNorm(self.patch[0] * self.patch[1])
        self.proj = nn.Linear(self.patch[0] * self.patch[1], dim)
        self.modality = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.modality, std=0.02)

    def forward(self, spec: Tensor) -> Tensor:
        batch, bands, bins = spec.shape
        pt, pf = self.patch
        if bands % pt:
            raise ValueError(f"audio_patch[0]={pt} must divide the K={bands} frames of a chunk")
        patches = spec.reshape(batch, bands // pt, pt, bins // pf, pf).permute(0, 1, 3, 2, 4)
        tokens = self.proj(self.norm(patches.reshape(batch, -1, pt * pf)))
        centres = [torch.arange(bands // pt, device=spec.device) * pt + (pt - 1) / 2,
                   torch.arange(bins // pf, device=spec.device) * pf + (pf - 1) / 2]
        return tokens + sincos_grid(centres, tokens.shape[-1]).to(tokens.dtype) + self.modality


class CrossAttention(nn.Module):
    """Text queries (B, P, d_text) attend to every context feature (B, L, d_ctx) (eq. 9, unmasked)."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, L, Dh) of the context, computed once per clip."""
        batch, length, _ = ctx.shape
        k, v = self.kv(ctx).reshape(batch, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, w: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        batch, length, dim = w.shape
        q = self.q(w).reshape(batch, length, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *kv)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class TextDecoderBlock(nn.Module):
    """Causal self-attention (chunks of one token) -> cross-attention to ĥ -> MLP, pre-norm."""

    def __init__(self, dim: int, context_dim: int, heads: int, mlp_ratio: float, impl: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = ChunkCausalSelfAttention(dim, heads, chunk_size=1, impl=impl)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, w: Tensor, kv: tuple[Tensor, Tensor], cache: ChunkCache | None = None, stream: bool = False):
        """w (B, P, d) -> (B, P, d) (causal over P); with stream=True, w is ONE token (B, 1, d) appended to
        `cache`, and the pair (out, cache) is returned."""
        if stream:
            attended, cache = self.self_attn.step(self.norm1(w), cache)
        else:
            attended = self.self_attn(self.norm1(w))
        w = w + attended
        w = w + self.cross(self.norm2(w), kv)
        w = w + self.mlp(self.norm3(w))
        return (w, cache) if stream else w


class TextDecoder(nn.Module):
    """§3.4 autoregressive text model (eq. 9): token embedding + sinusoidal positions, blocks with
    cross-attention to ĥ, LayerNorm, output tied to the embedding. forward(text (B, P), h (B, L, d_ctx))
    -> logits (B, P, vocab)."""

    def __init__(self, c: MirasolConfig):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.text_dim)
        nn.init.trunc_normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(TextDecoderBlock(c.text_dim, c.dim, c.text_heads, c.mlp_ratio, c.impl)
                                    for _ in range(c.text_depth))
        self.norm = nn.LayerNorm(c.text_dim)

    def _embed(self, text: Tensor, start: int) -> Tensor:
        positions = torch.arange(start, start + text.shape[1], device=text.device)
        return self.embed(text) + sincos(positions, self.embed.embedding_dim).to(self.embed.weight.dtype)

    def contexts(self, h: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [block.cross.context(h) for block in self.blocks]

    def forward(self, text: Tensor, h: Tensor) -> Tensor:
        w = self._embed(text, 0)
        for block, kv in zip(self.blocks, self.contexts(h)):
            w = block(w, kv)
        return self.norm(w) @ self.embed.weight.t()

    def step(self, token: Tensor, position: int, caches: list, kvs: list) -> tuple[Tensor, list]:
        """One token (B, 1) at `position` -> logits (B, vocab) and the extended self-attention caches."""
        w, new_caches = self._embed(token, position), []
        for block, cache, kv in zip(self.blocks, caches, kvs):
            w, cache = block(w, kv, cache, stream=True)
            new_caches.append(cache)
        return (self.norm(w) @ self.embed.weight.t())[:, -1], new_caches


def cosine_distance(pred: Tensor, target: Tensor) -> Tensor:
    """§3.5: 1 - <pred/|pred|, target/|target|>, averaged over all vectors (last dim = features)."""
    return (1.0 - (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(-1)).mean()


def _init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated normal(0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Mirasol(nn.Module):
    """Mirasol3B: audio-video autoregressive model (Combiner + latent causal model) and text decoder.

    forward(video (B, F, 3, H, W), audio (B, S) or None, text (B, P) int64 or None) -> MirasolOutput.
    F must divide into num_chunks chunks; S = F * sample_rate / fps (one spectrogram band per frame).
    encode(video, audio) -> (x, h), both (B, T, m, d), no masking (eval semantics of the latents).
    init_state(B) / step(video_chunk (B, K, 3, H, W), audio_chunk (B, K*S/F) or None, state) -> (ĥ_t, state).
    generate(video, audio, prompt (B, P0), max_new_tokens) -> (B, P0 + max_new_tokens) greedy ids.
    """

    def __init__(self, config: MirasolConfig):
        super().__init__()
        _check_config(config)
        self.config = c = config
        self.video_embed = TubeEmbed(c.tubes, c.dim)
        self.audio_embed = AudioEmbed(c.audio_patch, c.dim) if c.audio else None
        self.vit = nn.ModuleList(ChunkCausalBlock(c.dim, c.vit_heads, c.mlp_ratio, impl=c.impl)
                                 for _ in range(c.vit_depth))
        self.vit_norm = nn.LayerNorm(c.dim)
        if c.combiner == "transformer":
            self.combiner = TransformerCombiner(c.dim, c.combiner_depth, c.combiner_heads, c.num_outputs,
                                                selection=c.combiner_selection, mlp_ratio=c.mlp_ratio, impl=c.impl)
        else:
            self.combiner = TTMCombiner(c.dim, c.combiner_depth, c.combiner_heads, c.num_outputs,
                                        memory_tokens=c.memory_tokens, read_tokens=c.read_tokens,
                                        mlp_ratio=c.mlp_ratio, impl=c.impl)
        self.mask_token = nn.Parameter(torch.zeros(c.dim))
        self.latent = nn.ModuleList(ChunkCausalBlock(c.dim, c.latent_heads, c.mlp_ratio, c.num_outputs, c.impl)
                                    for _ in range(c.latent_depth))
        self.latent_norm = nn.LayerNorm(c.dim)
        if c.reconstruction:
            self.recon_blocks = nn.ModuleList(ChunkCausalBlock(c.dim, c.latent_heads, c.mlp_ratio, c.num_outputs,
                                                               c.impl) for _ in range(c.recon_depth))
            self.recon_norm = nn.LayerNorm(c.dim)
            self.recon_head = nn.Linear(c.dim, 3 * c.recon_size**2)
        self.text = TextDecoder(c)
        self.apply(_init_weights)
        if self.audio_embed is not None:  # fan-in scaled like the video Conv3d: both modalities enter at one scale
            self.audio_embed.proj.reset_parameters()
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ inputs and features (eq. 1, §3.1)

    @property
    def samples_per_frame(self) -> int:
        return self.config.sample_rate // self.config.fps

    def _check_video(self, video: Tensor, name: str, ndim: int) -> None:
        layout = "(B, F, 3, H, W)" if ndim == 5 else "(B, K, 3, H, W)"
        if not isinstance(video, Tensor) or not video.is_floating_point():
            raise TypeError(f"{name} must be a float tensor {layout}")
        if video.dim() != ndim or video.shape[2] != 3:
            raise ValueError(f"{name} must have shape {layout}, got {tuple(video.shape)}")

    def _spectrogram(self, audio: Tensor | None, batch: int, frames: int, name: str) -> Tensor | None:
        """audio (B, frames * samples_per_frame) -> log-mel bands (B, frames, mel_bins), one per video frame."""
        if audio is None:
            return None
        if self.audio_embed is None:
            raise ValueError(f"{name} was given but this model was built with audio=False")
        expected = (batch, frames * self.samples_per_frame)
        if not isinstance(audio, Tensor) or not audio.is_floating_point() or tuple(audio.shape) != expected:
            raise ValueError(f"{name} must be a float waveform of shape {expected} ({self.config.sample_rate} Hz, "
                             f"{self.samples_per_frame} samples per frame), got "
                             f"{tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__}")
        c = self.config
        bands = log_mel_features(audio.reshape(batch * frames, self.samples_per_frame), c.sample_rate, c.mel_bins)
        return bands.reshape(batch, frames, c.mel_bins).to(self.mask_token.dtype)

    def partition(self, video: Tensor, audio: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """eq. 1: video (B, F, 3, H, W) -> chunks (B, T, K, 3, H, W); audio (B, S) -> the time-aligned
        spectrogram chunks (B, T, K, mel_bins) (or None)."""
        self._check_video(video, "video", 5)
        batch, frames = video.shape[:2]
        chunks = self.config.num_chunks
        if frames % chunks:
            raise ValueError(f"video has F={frames} frames, not divisible into num_chunks={chunks} chunks")
        spec = self._spectrogram(audio, batch, frames, "audio")
        video_chunks = video.reshape(batch, chunks, frames // chunks, *video.shape[2:])
        return video_chunks, None if spec is None else spec.reshape(batch, chunks, frames // chunks, -1)

    def _vit(self, tokens: Tensor) -> Tensor:
        for block in self.vit:
            tokens = block(tokens, [tokens.shape[1]])  # one chunk: full attention within the snippet
        return self.vit_norm(tokens)

    def features(self, video_chunks: Tensor, spec: Tensor | None, start: int = 0) -> Tensor:
        """§3.1 + §3.2 inputs: chunks (B, T', K, 3, H, W) and spectrogram chunks (B, T', K, bins) ->
        u (B, T', n, d) = (v̂_t, â_t) per chunk, plus a sinusoidal embedding of the chunk index
        (start, start + 1, ...). The shared ViT sees each chunk alone."""
        batch, chunks = video_chunks.shape[:2]
        parts = [self._vit(self.video_embed(video_chunks.flatten(0, 1).transpose(1, 2)))]
        if spec is not None:
            parts.append(self._vit(self.audio_embed(spec.flatten(0, 1))))
        u = torch.cat(parts, dim=1)
        u = u.reshape(batch, chunks, *u.shape[1:])
        return u + self._chunk_positions(start, chunks, u)

    def _chunk_positions(self, start: int, chunks: int, like: Tensor) -> Tensor:
        """(T', 1, d) sinusoidal embedding of chunk indices start..start+T'-1."""
        positions = torch.arange(start, start + chunks, device=like.device)
        return sincos(positions, like.shape[-1]).to(like.dtype)[:, None]

    # ------------------------------------------------------------------ latent causal model (§3.3)

    def mask_outputs(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """§3.6 random masking of the Combiner outputs while training, a dropout of whole features:
        each is hidden with probability output_mask_ratio. A hidden feature is replaced by a learned mask
        token and removed from every attention of the latent model (key bias -1e4), so the visible ones
        are what ĥ is computed from. Returns (x_in (B, T, m, d), key_bias (B, T*m) or None in eval)."""
        ratio = self.config.output_mask_ratio
        if not self.training or ratio == 0.0:
            return x, None
        hidden = torch.rand(x.shape[:-1], device=x.device) < ratio
        x_in = torch.where(hidden[..., None], self.mask_token.to(x.dtype), x)
        return x_in, (hidden.flatten(1).to(x.dtype) * MASK_BIAS)

    def latent_model(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """x (B, T, m, d) -> ĥ (B, T, m, d), block-causal over the T chunks of m features (eq. 8)."""
        batch, chunks, m, dim = x.shape
        y = (x + self._chunk_positions(0, chunks, x)).reshape(batch, chunks * m, dim)
        for block in self.latent:
            y = block(y, [m] * chunks, key_bias)
        return self.latent_norm(y).reshape(batch, chunks, m, dim)

    def encode(self, video: Tensor, audio: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """video (B, F, 3, H, W), audio (B, S) or None -> (x, ĥ), each (B, T, m, d). No output masking."""
        video_chunks, spec = self.partition(video, audio)
        x = self.combiner(self.features(video_chunks, spec))
        return x, self.latent_model(x)

    # ------------------------------------------------------------------ losses (§3.5) and forward

    def reconstruct(self, h: Tensor) -> Tensor:
        """Reconstruction head (§3.3): ĥ (B, T, m, d) -> predicted v_small of the NEXT chunk (B, T, 3·r²)."""
        batch, chunks, m, dim = h.shape
        y = h.reshape(batch, chunks * m, dim)
        for block in self.recon_blocks:
            y = block(y, [m] * chunks)
        return self.recon_head(self.recon_norm(y).reshape(batch, chunks, m, dim).mean(2))

    def small_video(self, video_chunks: Tensor) -> Tensor:
        """v_small: each chunk's mean frame average-pooled to (3, r, r), flattened -> (B, T, 3·r²)."""
        batch, chunks = video_chunks.shape[:2]
        frames = video_chunks.mean(2).flatten(0, 1)
        return F.adaptive_avg_pool2d(frames, self.config.recon_size).reshape(batch, chunks, -1)

    def text_loss(self, logits: Tensor, text: Tensor) -> Tensor:
        """Next-token cross-entropy over the non-pad targets text[:, 1:] (0 when there are none)."""
        targets = text[:, 1:]
        total = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=self.config.pad_id,
                                reduction="sum")
        return total / (targets != self.config.pad_id).sum().clamp_min(1)

    def _check_text(self, text: Tensor, name: str) -> None:
        if not isinstance(text, Tensor) or text.dtype != torch.int64 or text.dim() != 2:
            raise TypeError(f"{name} must be an int64 tensor (B, P) of token ids")
        if text.device.type != "meta" and text.numel() and (text.min() < 0 or text.max() >= self.config.vocab_size):
            raise ValueError(f"{name} ids must be in [0, vocab_size={self.config.vocab_size})")

    def forward(self, video: Tensor, audio: Tensor | None = None, text: Tensor | None = None) -> MirasolOutput:
        c = self.config
        video_chunks, spec = self.partition(video, audio)
        x = self.combiner(self.features(video_chunks, spec))
        h = self.latent_model(*self.mask_outputs(x))
        zero = x.new_zeros(())
        latent_loss = cosine_distance(h[:, :-1], x[:, 1:]) if x.shape[1] > 1 else zero  # ĥ_t -> x_{t+1}
        loss = c.latent_weight * latent_loss
        recon_loss = None
        if c.reconstruction:
            target = self.small_video(video_chunks)
            recon_loss = cosine_distance(self.reconstruct(h)[:, :-1], target[:, 1:]) if x.shape[1] > 1 else zero
            loss = loss + c.recon_weight * recon_loss
        logits = text_loss = None
        if text is not None:
            self._check_text(text, "text")
            if text.shape[0] != video.shape[0]:
                raise ValueError(f"text has batch {text.shape[0]} but video has {video.shape[0]}")
            logits = self.text(text, h.flatten(1, 2))
            text_loss = self.text_loss(logits, text)
            loss = loss + c.text_weight * text_loss
        return MirasolOutput(loss, latent_loss, text_loss, x, h, logits, recon_loss)

    # ------------------------------------------------------------------ streaming and generation

    def init_state(self, batch_size: int) -> MirasolState:
        """Empty streaming state for `batch_size` clips."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return MirasolState(self.combiner.init_state(batch_size), [None] * len(self.latent))

    def step(self, video_chunk: Tensor, audio_chunk: Tensor | None, state: MirasolState) -> tuple[Tensor, MirasolState]:
        """One chunk: video_chunk (B, K, 3, H, W), audio_chunk (B, K * samples_per_frame) or None ->
        ĥ_t (B, m, d) and the new state (the input state is not modified). Equals encode's ĥ_t."""
        if not isinstance(state, MirasolState):
            raise TypeError("state must come from init_state / step")
        self._check_video(video_chunk, "video_chunk", 5)
        batch, frames = video_chunk.shape[:2]
        spec = self._spectrogram(audio_chunk, batch, frames, "audio_chunk")
        u = self.features(video_chunk[:, None], None if spec is None else spec[:, None], state.t)[:, 0]
        x_t, combiner_state = self.combiner.step(u, state.combiner)
        y, caches = x_t + self._chunk_positions(state.t, 1, x_t)[0], []
        for block, cache in zip(self.latent, state.latent):
            y, cache = block.step(y, cache)
            caches.append(cache)
        h_t = self.latent_norm(y)
        return h_t, MirasolState(combiner_state, caches, state.t + 1, [*state.h, h_t])

    @torch.no_grad()
    def generate(self, video: Tensor | None, audio: Tensor | None, prompt: Tensor, max_new_tokens: int,
                 *, state: MirasolState | None = None) -> Tensor:
        """Greedy decoding (eq. 9) conditioned on ĥ: of the clip (video, audio), or, with video=None, on the
        ĥ_1..ĥ_t a streaming `state` has seen so far. prompt (B, P0 >= 1) -> (B, P0 + max_new_tokens)."""
        self._check_text(prompt, "prompt")
        if prompt.shape[1] < 1:
            raise ValueError("prompt must hold at least one token (e.g. ByteTokenizer.BOS)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if video is not None:
            h = self.encode(video, audio)[1]
        elif state is not None and state.h:
            h = torch.stack(state.h, dim=1)
        else:
            raise ValueError("generate needs a video, or a streaming state that has seen at least one chunk")
        if h.shape[0] != prompt.shape[0]:
            raise ValueError(f"prompt has batch {prompt.shape[0]} but the latents have {h.shape[0]}")
        kvs, caches = self.text.contexts(h.flatten(1, 2)), [None] * len(self.text.blocks)
        for position in range(prompt.shape[1]):  # causal prefill, one token at a time
            logits, caches = self.text.step(prompt[:, position:position + 1], position, caches, kvs)
        tokens = [prompt]
        for index in range(max_new_tokens):
            tokens.append(logits.argmax(-1, keepdim=True))
            if index + 1 < max_new_tokens:
                logits, caches = self.text.step(tokens[-1], prompt.shape[1] + index, caches, kvs)
        return torch.cat(tokens, dim=1)

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor, Tensor | None, Tensor]:
        """(video (B, F, 3, H, W) in [0, 1), audio (B, S) or None, text (B, P)) on the model's device."""
        c = self.config
        device = self.mask_token.device
        video = torch.rand(batch_size, c.num_frames, 3, c.img_size, c.img_size, device=device)
        audio = 0.1 * torch.randn(batch_size, c.num_frames * self.samples_per_frame, device=device) if c.audio else None
        text = torch.randint(0, min(256, c.vocab_size), (batch_size, c.text_len), device=device)
        return video, audio, text


# ------------------------------------------------------------------------------------------------
# Registered configs. The paper gives the shape (128 frames = 16 chunks x 8, m = 32, R = 8, ~3B
# parameters with a little over half in the audio-video part) but not the widths; see CONFIGS["mirasol3b"].
# ------------------------------------------------------------------------------------------------

_TINY = dict(
    img_size=32, tubes=((1, 8, 8, 4, 8, 8), (8, 16, 16, 8, 16, 16)), mel_bins=32, audio_patch=(4, 8),
    dim=64, vit_depth=2, vit_heads=4, combiner_depth=2, combiner_heads=4, num_outputs=8, memory_tokens=16,
    read_tokens=16, latent_depth=2, latent_heads=4, text_dim=64, text_depth=2, text_heads=4,
)
_SMALL = dict(
    img_size=64, tubes=((1, 16, 16, 4, 16, 16), (8, 16, 16, 8, 32, 32), (4, 8, 8, 4, 32, 32)), mel_bins=64,
    audio_patch=(4, 16), dim=256, vit_depth=6, vit_heads=8, combiner_depth=4, combiner_heads=8, num_outputs=16,
    memory_tokens=32, read_tokens=32, latent_depth=4, latent_heads=8, text_dim=256, text_depth=4, text_heads=8,
)
_3B = dict(  # ViT-g-like encoder (1408 wide, 40 deep), R = 8, latent 20 deep, text 2048 x 20, 32k vocab
    img_size=224, tubes=((1, 16, 16, 8, 16, 16), (8, 8, 8, 8, 32, 32), (4, 12, 12, 4, 48, 48)), mel_bins=128,
    audio_patch=(4, 16), dim=1408, vit_depth=40, vit_heads=16, combiner_depth=8, combiner_heads=16,
    num_outputs=32, memory_tokens=256, read_tokens=64, latent_depth=20, latent_heads=16, text_dim=2048,
    text_depth=20, text_heads=16, vocab_size=32000, pad_id=0,
)

CONFIGS = {
    "mirasol_tiny": (_TINY, "CPU-trainable: 32x32 frames, width 64, 128 frames = 16 chunks x 8"),
    "mirasol_small": (_SMALL, "64x64 frames, width 256, 128 frames = 16 chunks x 8"),
    "mirasol3b": (_3B, "the paper's shape (§3.6): 224², 16 chunks x 8 frames, m = 32, R = 8, ~3.0B parameters"),
}


def _configure(base: dict, overrides: dict) -> MirasolConfig:
    known = {f.name for f in fields(MirasolConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown MirasolConfig fields {sorted(unknown)}; known: {sorted(known)}")
    return replace(MirasolConfig(**base), **overrides)


def _register(name: str, base: dict, doc: str) -> None:
    def build(**overrides):
        return Mirasol(_configure(base, overrides))

    build.__name__, build.__doc__ = name, doc
    register_model(name)(build)


for _name, (_base, _doc) in CONFIGS.items():
    _register(_name, _base, _doc + ", Transformer Combiner")
    _register(f"{_name}_ttm", dict(_base, combiner="ttm"), _doc + ", TTM Combiner")
