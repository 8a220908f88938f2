"""Pictures of MIST's selections (§3.2): the segments each ISTA layer keeps and the patches (regions)
it keeps in their frames.

`trace_mist(model, frames, encoder)` encodes the frames with a frame encoder (e.g. `TinyViTEncoder`
of `vidsel.models.mist`), runs MIST once in eval with ``return_info=True`` and reads the selected
indices of one layer; `mist_picture` draws them: frames of the selected segments with an orange
frame and every selected patch outlined, the other frames dimmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vidsel.viz._draw import DIM, draw_box, strip, to_hwc
from vidsel.viz._input import resize_frames

__all__ = ["MISTTrace", "trace_mist", "mist_picture", "mist"]

SEGMENT = (255, 140, 0)
REGION = (0, 255, 255)


@dataclass
class MISTTrace:
    """segments: selected segment indices (ascending); frames_per_segment: T; grid: patches per side;
    regions: input frame -> selected patch cells (row, col) of that frame (the CLS token is not a cell)."""

    segments: list[int]
    frames_per_segment: int
    grid: int
    regions: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


def trace_mist(model, frames: Tensor, encoder, *, words: Tensor | None = None, answers: Tensor | None = None,
               layer: int = -1, seed: int = 0) -> MISTTrace:
    """frames (K·T, 3, H, W) uint8 (resized to ``encoder.img_size`` when it has one) -> what ISTA layer
    `layer` selected. words (1, M, D) / answers (1, A, D) default to seeded random embeddings (the
    selection depends on the question)."""
    config = model.config
    k, t = config.num_segments, config.frames_per_segment
    if frames.shape[0] != k * t:
        raise ValueError(f"MIST takes K·T = {k}·{t} = {k * t} frames, got {frames.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    words = torch.randn(1, config.num_words, config.dim, generator=generator) if words is None else words
    answers = torch.randn(1, config.num_answers, config.dim, generator=generator) if answers is None else answers
    was_training = model.training
    try:
        with torch.no_grad():
            size = getattr(encoder, "img_size", None)
            tokens = encoder.encode_frames((resize_frames(frames, size) if size else frames)[None])  # (1, K·T, N, D)
            patches = tokens.reshape(1, k, t, *tokens.shape[2:])
            _, info = model.eval()(patches, words, answers, return_info=True)
    finally:
        model.train(was_training)
    if "segments" not in info:
        raise TypeError(f"MIST variant {config.variant!r} selects nothing to draw (only the ISTA variants do)")
    segments = info["segments"][0, layer].tolist()  # (k,) in selection order
    regions = info["regions"][0, layer]  # (k·T, j) over the selected segments' frames, in that order
    grid = int(round((patches.shape[3] - 1) ** 0.5))
    cells = {}
    for row, (segment, offset) in enumerate((s, o) for s in segments for o in range(t)):
        chosen = [n - 1 for n in regions[row].tolist() if n > 0]  # index 0 is the frame's CLS token
        cells[segment * t + offset] = [divmod(n, grid) for n in chosen]
    return MISTTrace(sorted(segments), t, grid, cells)


def mist_picture(frames: Tensor, trace: MISTTrace) -> Image.Image:
    """One column per frame: selected segments' frames with an orange border and cyan patch outlines.
    frames (K·T, 3, H, W) uint8 as given to `trace_mist`."""
    images = to_hwc(frames)
    cell_h, cell_w = images.shape[1] // trace.grid, images.shape[2] // trace.grid
    columns = []
    for index, image in enumerate(images):
        image = image.copy()
        if index // trace.frames_per_segment in trace.segments:
            draw_box(image, 0, 0, image.shape[0], image.shape[1], SEGMENT, thickness=3)
            for row, col in trace.regions.get(index, []):
                draw_box(image, row * cell_h, col * cell_w, cell_h, cell_w, REGION, thickness=1)
        else:
            image = (image.astype(np.float32) * DIM).astype(np.uint8)
        columns.append([image])
    return strip(columns)


def mist(model, frames: Tensor, encoder, **kwargs) -> Image.Image:
    """`mist_picture` of `trace_mist(model, frames, encoder, **kwargs)`."""
    return mist_picture(frames, trace_mist(model, frames, encoder, **kwargs))
