"""`CompressedPatchEmbed`: MM-ViT's tokenizer of compressed clips as a drop-in module (MM-ViT §3.2, eq. 1–4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vidsel.ops.compressed_patch_embed import CompressedEmbedParams, compressed_patch_embed

AUDIO_FEATURE_DIM = 128


def log_mel_features(waveform: Tensor, sample_rate: int, bins: int = AUDIO_FEATURE_DIM) -> Tensor:
    """Φ(A_t) stand-in: a 128-bin log-mel summary of every audio segment (no pretrained VGGish here).

    waveform (T, S) float segments at `sample_rate` Hz -> (T, bins): power spectrogram (25 ms Hann
    window, 10 ms hop), triangular mel filterbank from 0 Hz to Nyquist (HTK mel scale), log(x + 1e-6),
    averaged over the segment's frames. Deterministic, differentiable, no learned weights.
    """
    if waveform.dim() != 2:
        raise ValueError(f"waveform must have shape (T, S), got {tuple(waveform.shape)}")
    window = max(16, int(round(0.025 * sample_rate)))
    n_fft = 1 << (window - 1).bit_length()
    hop = max(1, int(round(0.010 * sample_rate)))
    signal = waveform.float()
    if signal.shape[1] < n_fft:
        signal = torch.nn.functional.pad(signal, (0, n_fft - signal.shape[1]))
    spec = torch.stft(signal, n_fft, hop_length=hop, win_length=window,
                      window=torch.hann_window(window, device=signal.device), center=False, return_complex=True)
    power = spec.abs().pow(2)  # (T, n_fft/2 + 1, frames)
    mel = _mel_filterbank(bins, n_fft, sample_rate, signal.device) @ power
    return torch.log(mel + 1e-6).mean(-1)


def _mel_filterbank(bins: int, n_fft: int, sample_rate: int, device) -> Tensor:
    """(bins, n_fft/2 + 1) triangular filters evenly spaced on the HTK mel scale."""
    to_mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
    mels = torch.linspace(0.0, to_mel(sample_rate / 2), bins + 2, device=device)
    edges = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, device=device)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (center - lower).clamp_min(1e-9)
    falling = (upper - freqs) / (upper - center).clamp_min(1e-9)
    return torch.minimum(rising, falling).clamp_min(0.0)


class CompressedPatchEmbed(nn.Module):
    """Tokens of a compressed clip: I-frames, motion vectors, residuals and audio (MM-ViT eq. 1–4).

    Args:
        dim: token dimension D.
        patch: patch side P (N = (size/P)^2 tokens per frame and modality).
        num_frames: T, the number of sampled segments (the positional tables are (T, N, D)).
        size: frame size in pixels, H = W = size or (H, W) (multiples of patch).
        motion_block: codec block size g of the motion input (4 for H.264, 16 for MPEG-4 macroblocks), or
            None to accept any g dividing size (inferred from the motion tensor's shape).
        audio: hold the audio projection E_A (F = audio_dim -> D) and PE_A; False for silent data.
        impl: backend passed to vidsel.ops.compressed_patch_embed.

    forward(iframe (B, T, 3, H, W), motion (B, T, 2, H/g, W/g), residual (B, T, 3, H, W),
    audio_feat (B, T, 128) or None, expand_audio=True) -> (B, 4, T, N, D) (3 modalities without audio),
    or with expand_audio=False the pair (visual (B, 3, T, N, D), audio (B, T, D) or None).
    """

    def __init__(self, dim: int = 768, patch: int = 16, num_frames: int = 8, size: int | tuple[int, int] = 224,
                 motion_block: int | None = None, audio: bool = True, audio_dim: int = AUDIO_FEATURE_DIM,
                 impl: str = "auto"):
        super().__init__()
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height % patch or width % patch:
            raise ValueError(f"size={size} must be a multiple of patch={patch}")
        if motion_block is not None and (motion_block < 1 or height % motion_block or width % motion_block):
            raise ValueError(f"motion_block={motion_block} must divide size={size}")
        self.dim, self.patch, self.num_frames, self.size = dim, patch, num_frames, size
        self.motion_block, self.impl = motion_block, impl
        tokens = (height // patch) * (width // patch)
        for name, channels in (("iframe", 3), ("motion", 2), ("residual", 3)):
            self.register_parameter(f"{name}_weight", nn.Parameter(torch.empty(dim, channels, patch, patch)))
            self.register_parameter(f"{name}_bias", nn.Parameter(torch.empty(dim)))
            self.register_parameter(f"{name}_pos", nn.Parameter(torch.empty(num_frames, tokens, dim)))
        if audio:
            self.audio_weight = nn.Parameter(torch.empty(dim, audio_dim))
            self.audio_bias = nn.Parameter(torch.empty(dim))
            self.audio_pos = nn.Parameter(torch.empty(num_frames, dim))
        else:
            self.audio_weight = self.audio_bias = self.audio_pos = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections as nn.Conv2d / nn.Linear initialise them; positional tables ~ N(0, 0.02²) (ViT)."""
        for name in ("iframe", "motion", "residual", "audio"):
            weight, bias, pos = (getattr(self, f"{name}_{part}") for part in ("weight", "bias", "pos"))
            if weight is None:
                continue
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(weight[0].numel())
            nn.init.uniform_(bias, -bound, bound)
            nn.init.trunc_normal_(pos, std=0.02)

    def params(self) -> CompressedEmbedParams:
        """The module's tensors in the layout vidsel.ops.compressed_patch_embed takes."""
        return CompressedEmbedParams(*(getattr(self, f"{name}_{part}") for name in
                                       ("iframe", "motion", "residual", "audio") for part in ("weight", "bias", "pos")))

    def forward(self, iframe: Tensor, motion: Tensor, residual: Tensor, audio_feat: Tensor | None = None,
                *, expand_audio: bool = True):
        if self.motion_block is not None and iframe.dim() == 5 and motion.dim() == 5 and \
                motion.shape[-2] * self.motion_block != iframe.shape[-2]:
            raise ValueError(f"motion must have block size {self.motion_block}: shape (B, T, 2, "
                             f"{iframe.shape[-2] // self.motion_block}, ...), got {tuple(motion.shape)}")
        if audio_feat is not None and self.audio_weight is None:
            raise ValueError("this CompressedPatchEmbed was built with audio=False but audio_feat was given")
        return compressed_patch_embed(iframe, motion, residual, audio_feat, self.params(), patch=self.patch,
                                      expand_audio=expand_audio, impl=self.impl)

    def clip_inputs(self, clip) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """A vidsel.io.CompressedClip as a batch of one: (iframe, motion, residual, audio_feat).

        I-frames uint8 -> [0, 1]; residuals (P-frame − prediction, in [-255, 255]) -> [-1, 1]; motion
        stays in pixels. Audio: log_mel_features of each (T, S) waveform segment (None without audio, or
        when this module has no audio projection). Everything takes the module's dtype and device.
        """
        weight = self.iframe_weight
        as_input = lambda t, scale: (t.to(device=weight.device, dtype=weight.dtype) / scale).unsqueeze(0)  # noqa: E731
        iframe, residual = as_input(clip.iframes, 255.0), as_input(clip.residual, 255.0)
        motion = as_input(clip.motion, 1.0)
        audio_feat = None
        if clip.audio is not None and self.audio_weight is not None:
            features = log_mel_features(clip.audio.to(weight.device), int(clip.sample_rate), self.audio_weight.shape[1])
            audio_feat = features.to(weight.dtype).unsqueeze(0)
        return iframe, motion, residual, audio_feat

    def from_clip(self, clip, *, expand_audio: bool = True):
        """Embeds one vidsel.io.CompressedClip (see clip_inputs for the transforms): (1, 4, T, N, D) etc."""
        return self(*self.clip_inputs(clip), expand_audio=expand_audio)
