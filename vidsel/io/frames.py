"""Uniform RGB frame sampling (for the models that read pixels, not the compressed domain)."""

from __future__ import annotations

import numpy as np
import torch

from vidsel.io._container import decode_video, open_demuxed
from vidsel.io._util import check_count, map_with_progress, parse_size, resize_images
from vidsel.io.errors import VideoReadError


def segment_centers(num_frames: int, num_segments: int) -> list[int]:
    """Display index of the middle frame of each of `num_segments` equal slices (TSN-style sampling).

    Indices repeat when the video has fewer frames than segments.
    """
    return [min(num_frames - 1, int((t + 0.5) * num_frames / num_segments)) for t in range(num_segments)]


def to_rgb(frame) -> np.ndarray:
    """A decoded av.VideoFrame -> (H, W, 3) uint8 RGB (FFmpeg's swscale conversion, as PyAV does)."""
    return frame.to_ndarray(format="rgb24")


def stack_channels_first(images: list[np.ndarray]) -> torch.Tensor:
    """[(H, W, C)] -> (T, C, H, W) tensor, with NumPy's single-threaded copy (see vidsel.io.motion)."""
    height, width, channels = images[0].shape
    out = np.empty((len(images), channels, height, width), images[0].dtype)
    for t, image in enumerate(images):
        out[t] = image.transpose(2, 0, 1)
    return torch.from_numpy(out)


def read_frames(path, num_frames: int, *, size=None) -> torch.Tensor:
    """Reads `num_frames` RGB frames sampled uniformly over the video (the middle frame of each of
    `num_frames` equal slices), decoding the file once.

    Args: path: video file; num_frames: T; size: None (native), an int (square) or (height, width);
    resized with antialiased bilinear interpolation. When the resolution changes mid-stream, every frame
    is resized to `size` (native: the first sampled frame's).
    Returns (T, 3, H, W) uint8. Raises FileNotFoundError, VideoReadError (names the file) for files that
    are not readable videos.
    """
    check_count("num_frames", num_frames)
    size = parse_size(size)
    with open_demuxed(path, audio=False) as demuxed:
        wanted = segment_centers(demuxed.num_frames, num_frames)
        decoded: dict[int, np.ndarray] = {}
        targets = set(wanted)
        for index, frame in decode_video(demuxed):
            if index in targets:
                decoded[index] = to_rgb(frame)
                if len(decoded) == len(targets):
                    break
        if not decoded:
            raise VideoReadError(demuxed.path, "no video frame could be decoded")
    # Frames the decoder dropped (damaged streams) are replaced by the nearest decoded one.
    available = sorted(decoded)
    images = [decoded[min(available, key=lambda i: abs(i - w))] for w in wanted]
    if len({image.shape for image in images}) > 1:
        return _resized_one_by_one(images, size)
    return resize_images(stack_channels_first(images), size)


def _resized_one_by_one(images: list[np.ndarray], size: tuple[int, int] | None) -> torch.Tensor:
    """Frames of a stream whose resolution changes mid-way: each resized to `size` (native: the first
    sampled frame's size), then stacked (T, 3, H, W) uint8."""
    target = size or tuple(images[0].shape[:2])
    return torch.cat([resize_images(stack_channels_first([image]), target) for image in images])


def read_frames_many(paths, num_frames: int, *, size=None, progress: bool = True, errors: str = "raise") -> list:
    """read_frames over many files with a tqdm progress bar; errors="skip" warns and yields None."""
    return map_with_progress(
        lambda p: read_frames(p, num_frames, size=size), paths, progress=progress, errors=errors,
        description="read_frames",
    )
