"""A labelled video folder for training tests: 4 classes of moving textures encoded with PyAV.

Class 0 horizontal stripes, 1 vertical stripes, 2 checkerboard, 3 diagonal stripes; every clip draws its
own two grey levels, period, phase and motion (dx, dy) pixels per frame, so only the pattern tells the class.
"""

from __future__ import annotations

import os

import av
import numpy as np

CLASSES = ("horizontal", "vertical", "checker", "diagonal")


def pattern(kind: int, height: int, width: int, period: int, shift: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of texture `kind`, translated by shift = (dx, dy) pixels."""
    y, x = np.mgrid[0:height, 0:width]
    x, y = x - shift[0], y - shift[1]
    if kind == 0:
        return (y // period) % 2 == 0
    if kind == 1:
        return (x // period) % 2 == 0
    if kind == 2:
        return ((x // period) + (y // period)) % 2 == 0
    return ((x + y) // period) % 2 == 0


def moving_texture(kind: int, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 frames of one clip of class `kind`."""
    period = int(rng.integers(3, 7))
    low = int(rng.integers(0, 96))
    colours = np.array([[low] * 3, [low + int(rng.integers(128, 160))] * 3])  # two grey levels, apart
    if rng.integers(0, 2):
        colours = colours[::-1]
    phase = rng.integers(0, 2 * period, 2)
    velocity = rng.integers(-2, 3, 2)
    frames = []
    for n in range(num_frames):
        mask = pattern(kind, size, size, period, tuple(phase + n * velocity))
        frames.append(np.where(mask[..., None], colours[0], colours[1]).astype(np.uint8))
    return np.stack(frames)


def encode(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Writes frames (N, H, W, 3) uint8 as an MPEG-4 Part 2 file (one encoder thread: reproducible)."""
    container = av.open(path, "w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
    stream.options = {"g": "4", "bf": "0", "threads": "1"}
    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def make_folder(root, per_class: int, *, num_frames: int = 8, size: int = 32, seed: int = 0) -> list[str]:
    """root/<class>/clip_<i>.mp4 for the 4 classes; returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for kind, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            path = os.path.join(root, name, f"clip_{i:03d}.mp4")
            encode(path, moving_texture(kind, rng, num_frames, size))
            paths.append(path)
    return paths
