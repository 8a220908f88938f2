"""Real test videos encoded with PyAV: a textured image translating by a known (dx, dy) pixels per frame,
with an optional audio track. Used by tests/io/test_*.py and benchmarks/bench_video_io.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np


@dataclass
class EncodedVideo:
    """What was encoded: the source frames (N, H, W, 3) uint8 and the ground truth."""

    path: str
    frames: np.ndarray
    motion: tuple[int, int]
    fps: int
    sample_rate: int | None
    duration: float


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 random texture: 4×4-pixel cells, so a block matches only at its true position."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(16, 240, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[:height, :width]


def translating_frames(num_frames: int, height: int, width: int, motion: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8: frame n shows the texture moved by n·(dx, dy), content entering at the edges."""
    dx, dy = motion
    pad_x, pad_y = abs(dx) * num_frames, abs(dy) * num_frames
    canvas = texture(height + 2 * pad_y, width + 2 * pad_x, seed)
    tops, lefts = [pad_y - n * dy for n in range(num_frames)], [pad_x - n * dx for n in range(num_frames)]
    return np.stack([canvas[top : top + height, left : left + width] for top, left in zip(tops, lefts)])


def tone(frequency: float = 440.0) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: 0.5 * np.sin(2 * np.pi * frequency * t)


def make_video(
    path,
    *,
    codec: str = "mpeg4",
    size: tuple[int, int] = (64, 96),
    num_frames: int = 24,
    fps: int = 12,
    motion: tuple[int, int] = (2, -2),
    gop: int = 12,
    bframes: int = 0,
    options: dict[str, str] | None = None,
    audio: Callable[[np.ndarray], np.ndarray] | None = tone(),
    sample_rate: int = 16000,
    audio_codec: str = "aac",
    audio_delay: float = 0.0,
    container_options: dict[str, str] | None = None,
    seed: int = 0,
) -> EncodedVideo:
    """Encodes `num_frames` translating frames (+ audio(t) for t in seconds, if given) to `path`.

    codec: "mpeg4" (high quality, fixed quantiser), "libx264" (options e.g. {"crf": "0"} for lossless,
    {"refs": "1"}) or any PyAV encoder; gop: keyframe interval (1 = all-intra); bframes: B-frames between
    anchors. audio_delay: seconds of stream time before the first audio sample (audio(t) is evaluated
    from t = 0 of the audio, i.e. at audio_delay on the video clock).
    """
    path = str(path)
    height, width = size
    frames = translating_frames(num_frames, height, width, motion, seed)
    container = av.open(path, "w", options=container_options or {})
    video = container.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    # One encoder thread: libx264's choices depend on its thread count, which would follow the machine.
    video.options = {"g": str(gop), "bf": str(bframes), "threads": "1", **(options or {})}
    if codec == "mpeg4":
        video.codec_context.flags |= av.codec.context.Flags.qscale
        video.codec_context.global_quality = 2 * 118  # FF_QP2LAMBDA · q: near-lossless quantiser
    audio_stream = None
    if audio is not None:
        audio_stream = container.add_stream(audio_codec, rate=sample_rate)
        audio_stream.layout = "mono"
    for image in frames:
        for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    duration = num_frames / fps
    if audio_stream is not None:
        total = round(duration * sample_rate)
        waveform = audio(np.arange(total) / sample_rate).astype(np.float32)
        chunk = 1024
        for start in range(0, total, chunk):
            piece = waveform[None, start : start + chunk]
            if audio_codec == "pcm_s16le":
                frame = av.AudioFrame.from_ndarray((piece * 32767).astype(np.int16), format="s16", layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start + round(audio_delay * sample_rate)
            for packet in audio_stream.encode(frame):
                container.mux(packet)
        for packet in audio_stream.encode():
            container.mux(packet)
    container.close()
    return EncodedVideo(path, frames, motion, fps, sample_rate if audio is not None else None, duration)
