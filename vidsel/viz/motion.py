"""Pictures of MM-ViT's motion-vector modality (§3.1): the codec's motion field as arrows.

``motion(clip_or_path)`` draws, for every sampled segment, the I-frame of its GOP with one arrow per
g×g block (subsampled to one every ≥ 8 pixels) from the block centre along its forward motion
(`vidsel.io.read_compressed`: content at p in the reference is at p + motion in the P-frame).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from vidsel.viz._draw import draw_arrows, strip, to_hwc

__all__ = ["arrow_field", "motion"]


def arrow_field(motion: torch.Tensor, block_size: int, spacing: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(2, Hb, Wb) motion of one segment -> arrow starts (N, 2) (x, y) at block centres, one every
    `spacing` pixels or more, and their vectors (N, 2) in pixels."""
    step = max(1, math.ceil(spacing / block_size))
    field = motion[:, ::step, ::step].numpy()
    rows, cols = np.meshgrid(np.arange(field.shape[1]), np.arange(field.shape[2]), indexing="ij")
    centre = lambda index: (index * step + 0.5) * block_size  # noqa: E731
    starts = np.stack([centre(cols), centre(rows)], axis=-1).reshape(-1, 2)
    return starts, field.transpose(1, 2, 0).reshape(-1, 2)


def motion(clip, *, num_segments: int = 8, size=None, spacing: int = 8, scale: float = 1.0) -> Image.Image:
    """clip: a `vidsel.io.CompressedClip` or a video path (read with `read_compressed(path, num_segments,
    size=size, audio=False)`). Returns one column per segment: its I-frame with the motion arrows
    (lengths × `scale`)."""
    from vidsel.io import CompressedClip, read_compressed

    if not isinstance(clip, CompressedClip):
        clip = read_compressed(clip, num_segments, size=size, audio=False)
    frames = to_hwc(clip.iframes)
    columns = []
    for t in range(frames.shape[0]):
        starts, vectors = arrow_field(clip.motion[t], clip.block_size, spacing)
        columns.append([draw_arrows(frames[t], starts, vectors * scale)])
    return strip(columns)
