"""Audio decoding and the MM-ViT audio segments (§3.2: the waveform is partitioned into T segments
aligned with the T visual samples)."""

from __future__ import annotations

import av
import numpy as np
import torch

from vidsel.io._container import Demuxed, open_demuxed
from vidsel.io.errors import VideoReadError


def decode_audio(demuxed: Demuxed, *, sample_rate: int | None, mono: bool) -> tuple[np.ndarray, int, float] | None:
    """Decodes the demuxed audio packets once, resampled to float32.

    Returns (waveform (C, N) float32, sample_rate, start time in seconds on the container clock) or None
    when the file has no audio stream. Samples are laid end to end from the first decoded frame's
    timestamp (encoder priming, e.g. AAC's 1024 samples, is already dropped by FFmpeg).
    """
    if demuxed.audio is None or not demuxed.audio_packets:
        return None
    stream = demuxed.audio
    rate = sample_rate or stream.codec_context.sample_rate or stream.rate
    layout = "mono" if mono else (stream.codec_context.layout.name if stream.codec_context.layout else "stereo")
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    chunks: list[np.ndarray] = []
    start = first = None
    try:
        for packet in demuxed.audio_packets + [None]:
            for frame in stream.codec_context.decode(packet):
                first = first or _frame_shape(frame)
                _check_same_shape(demuxed.path, first, frame)
                if start is None and frame.pts is not None and frame.time_base is not None:
                    start = float(frame.pts * frame.time_base)
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.FFmpegError as error:
        raise VideoReadError(demuxed.path, f"corrupt audio data ({error.strerror or error})") from error
    if not chunks:
        return None
    waveform = np.concatenate([c.reshape(-1, c.shape[-1]) for c in chunks], axis=1).astype(np.float32, copy=False)
    if start is None:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return waveform, rate, start


def _frame_shape(frame) -> tuple[int, int, str]:
    """(channels, sample rate, sample format) of a decoded audio frame, from its header fields only."""
    return frame.layout.nb_channels, frame.sample_rate, frame.format.name


def _check_same_shape(path: str, first: tuple[int, int, str], frame) -> None:
    """VideoReadError when a decoded frame's channels / rate / format differ from the stream's first frame.

    A damaged packet can make the decoder announce another channel layout mid-stream; such a frame's
    planes need not match its header, so it is refused before anything touches its samples (resampling
    it crashes FFmpeg). Streams that legitimately switch layout (some broadcast captures) are refused too.
    """
    shape = _frame_shape(frame)
    if shape != first:
        seconds = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        where = f" at {seconds:.3f} s" if seconds is not None else ""
        raise VideoReadError(path, f"corrupt audio data: a frame{where} has {shape[0]} channel(s), {shape[1]} Hz, "
                                   f"{shape[2]}, after {first[0]} channel(s), {first[1]} Hz, {first[2]}")


def segment_audio(
    waveform: np.ndarray, sample_rate: int, start: float, bounds: list[tuple[float, float]]
) -> torch.Tensor:
    """Cuts a mono waveform into len(bounds) equal-length segments.

    waveform: (1, N) or (N,) starting at time `start` (seconds); bounds: [(t0, t1)] equal-length
    intervals on the same clock. Returns (T, S) float32 with S = round((t1 - t0) * sample_rate);
    samples before the audio starts or after it ends are zeros.
    """
    samples = waveform.reshape(-1)
    length = max(1, round((bounds[0][1] - bounds[0][0]) * sample_rate))
    out = np.zeros((len(bounds), length), np.float32)
    for t, (t0, _) in enumerate(bounds):
        first = round((t0 - start) * sample_rate)
        lo, hi = max(first, 0), min(first + length, samples.shape[0])
        if hi > lo:
            out[t, lo - first : hi - first] = samples[lo:hi]
    return torch.from_numpy(out)


def read_audio(path, *, sample_rate: int | None = None, mono: bool = True) -> tuple[torch.Tensor, int]:
    """Decodes a file's first audio stream.

    Args: path: any media file FFmpeg reads (video or audio-only); sample_rate: resample to this rate
    (None keeps the stream's); mono: downmix to one channel.
    Returns (waveform (C, N) float32 in [-1, 1], sample_rate). Raises VideoReadError naming the file
    when it has no audio stream; ValueError for a sample_rate that is not a positive int.
    """
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int (Hz) or None, got {sample_rate!r}")
    with open_demuxed(path, audio=True, require_video=False) as demuxed:
        decoded = decode_audio(demuxed, sample_rate=sample_rate, mono=mono)
    if decoded is None:
        raise VideoReadError(demuxed.path, "has no audio stream")
    waveform, rate, _ = decoded
    return torch.from_numpy(np.ascontiguousarray(waveform)), rate
