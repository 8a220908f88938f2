"""vidsel.io reader throughput on a 10 s 224² test video, vs plain PyAV decoding.

The video (a translating texture with a 16 kHz AAC tone) is encoded at bench time with PyAV, once as
MPEG-4 Part 2 (GOP 12, I/P only: MM-ViT's setting) and once as H.264 (libx264 defaults: B-frames,
3 references). Contenders, each reading the whole file from disk per call:
- PyAV decode → RGB: decode every frame and convert it to an RGB array (plain RGB decoding).
- PyAV decode only: decode every frame, no conversion (the floor for anything that decodes every frame).
- vidsel read_frames(T=8): 8 uniformly sampled RGB frames.
- vidsel read_compressed(T=8): I-frames, motion vectors (FFmpeg export_mvs), residuals, audio segments.
frames/s counts the frames in the file; clips/s = 1 / seconds per call.
Why: reading compressed clips (MM-ViT's input) must not be the bottleneck of training; plain PyAV
decoding is the peer and decoding alone the floor. Reported without a target.
"""

from __future__ import annotations

import os
import tempfile

import av

import vidsel.io as vio
from benchmarks.harness import Table, median_ms_repeats
from tests.video_factory import make_video

SIZE, SECONDS, FPS, SEGMENTS = 224, 10, 25, 8


def pyav_decode(path: str, to_rgb: bool) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        for frame in container.decode(stream):
            if to_rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def encode(directory: str, codec: str) -> str:
    options = {"g": "12"} if codec == "mpeg4" else {}
    video = make_video(
        os.path.join(directory, f"bench_{codec}.mp4"), codec=codec, size=(SIZE, SIZE), num_frames=SECONDS * FPS,
        fps=FPS, motion=(2, -2), gop=12 if codec == "mpeg4" else 250, bframes=0 if codec == "mpeg4" else 3,
        options=options,
    )
    return video.path


def run(profile: str) -> list[Table]:
    repeats = 3 if profile == "quick" else 7
    table = Table(
        name="video_io",
        title=f"Video reading, {SECONDS} s {SIZE}² @ {FPS} fps ({SECONDS * FPS} frames), T={SEGMENTS}, CPU",
        columns=["codec", "reader", "ms / clip", "frames/s", "clips/s", "× PyAV RGB decode"],
    )
    with tempfile.TemporaryDirectory() as directory:
        for codec, label in (("mpeg4", "MPEG-4 Part 2 (I/P)"), ("libx264", "H.264 (I/P/B)")):
            path = encode(directory, codec)
            frames = pyav_decode(path, to_rgb=False)
            contenders = {
                "PyAV decode → RGB (every frame)": lambda: pyav_decode(path, to_rgb=True),
                "PyAV decode only": lambda: pyav_decode(path, to_rgb=False),
                f"vidsel read_frames(T={SEGMENTS})": lambda: vio.read_frames(path, SEGMENTS),
                f"vidsel read_compressed(T={SEGMENTS})": lambda: vio.read_compressed(path, SEGMENTS),
                f"vidsel read_compressed(T={SEGMENTS}, audio=False)": lambda: vio.read_compressed(
                    path, SEGMENTS, audio=False
                ),
            }
            timings = {name: median_ms_repeats(fn, repeats=repeats) for name, fn in contenders.items()}
            baseline = timings["PyAV decode → RGB (every frame)"]
            for name, ms in timings.items():
                table.rows.append([label, name, ms, frames / ms * 1e3, 1e3 / ms, baseline / ms])
    table.notes.append(
        "Reported without a target. Every contender decodes every frame of the file "
        "once per call; read_compressed also exports motion vectors, decodes and resamples the audio and "
        "computes T residuals (for H.264 against 4 candidate references each)."
    )
    return [table]
