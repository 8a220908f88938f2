"""Drawing primitives of vidsel.viz: group colours, frame strips, boxes, arrows (NumPy + Pillow)."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

GAP = 4  # pixels between frames
BAR = 10  # height of the frame-group bar above each frame
BACKGROUND = (255, 255, 255)
KEPT = (0, 200, 0)
BOX = (255, 0, 255)
ARROW = (255, 255, 0)
DIM = 0.3  # brightness of frames a selection dropped


def group_colour(index: int) -> tuple[int, int, int]:
    """A distinct colour per group: golden-ratio hue steps, three saturation/value levels."""
    hue = (index * 0.618033988749895) % 1.0
    saturation, value = ((0.85, 0.95), (0.55, 0.85), (0.95, 0.65))[(index // 7) % 3]
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def to_hwc(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) uint8 tensor -> (T, H, W, 3) uint8 array."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, 3, H, W) uint8 (vidsel.io.read_frames), got "
                         f"{tuple(frames.shape)} {frames.dtype}")
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def group_map(groups: np.ndarray, cell_h: int, cell_w: int) -> np.ndarray:
    """(Hp, Wp) group ids -> (Hp·cell_h, Wp·cell_w, 3) uint8: each patch filled with its group's colour,
    a 1-pixel dark line where neighbouring patches belong to different groups."""
    ids = np.unique(groups)
    lut = np.zeros((ids.max() + 1, 3), np.uint8)
    for i in ids:
        lut[i] = group_colour(int(i))
    image = lut[np.repeat(np.repeat(groups, cell_h, axis=0), cell_w, axis=1)]
    rows, cols = groups.shape
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and groups[r, c] != groups[r, c + 1]:
                image[r * cell_h:(r + 1) * cell_h, (c + 1) * cell_w - 1] = 40
            if r + 1 < rows and groups[r, c] != groups[r + 1, c]:
                image[(r + 1) * cell_h - 1, c * cell_w:(c + 1) * cell_w] = 40
    return image


def strip(columns: list[list[np.ndarray]], bars: list[tuple[int, int, int] | None] | None = None) -> Image.Image:
    """Frames side by side: columns[t] = images stacked top to bottom (same width), an optional colour bar
    of BAR pixels above each column, GAP pixels between everything, white background."""
    heights = [sum(im.shape[0] for im in column) + GAP * (len(column) - 1) for column in columns]
    widths = [column[0].shape[1] for column in columns]
    top = BAR + GAP if bars else 0
    canvas = np.full((top + max(heights), sum(widths) + GAP * (len(columns) - 1), 3), BACKGROUND, np.uint8)
    left = 0
    for t, column in enumerate(columns):
        if bars and bars[t] is not None:
            canvas[:BAR, left:left + widths[t]] = bars[t]
        y = top
        for image in column:
            canvas[y:y + image.shape[0], left:left + image.shape[1]] = image
            y += image.shape[0] + GAP
        left += widths[t] + GAP
    return Image.fromarray(canvas)


def column_left(widths: list[int], t: int) -> int:
    """x of column t's left edge in a `strip`."""
    return sum(widths[:t]) + GAP * t


def draw_box(image: np.ndarray, top: int, left: int, height: int, width: int, colour, thickness: int = 2) -> None:
    """Rectangle outline in place (clipped to the image)."""
    bottom, right = min(top + height, image.shape[0]), min(left + width, image.shape[1])
    t = thickness
    image[top:top + t, left:right] = colour
    image[bottom - t:bottom, left:right] = colour
    image[top:bottom, left:left + t] = colour
    image[top:bottom, right - t:right] = colour


def draw_arrows(image: np.ndarray, starts: np.ndarray, vectors: np.ndarray, colour=ARROW) -> np.ndarray:
    """Arrows from every start (N, 2) (x, y) along vectors (N, 2) with a small head; returns a new array."""
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    for (x, y), (dx, dy) in zip(starts.tolist(), vectors.tolist()):
        length = (dx * dx + dy * dy) ** 0.5
        if length < 0.5:
            pen.point((x, y), fill=colour)
            continue
        end = (x + dx, y + dy)
        pen.line([(x, y), end], fill=colour, width=1)
        ux, uy = dx / length, dy / length
        head = min(3.0, length / 2)
        for side in (1, -1):
            pen.line([end, (end[0] - head * (ux - side * uy * 0.6), end[1] - head * (uy + side * ux * 0.6))],
                     fill=colour, width=1)
    return np.asarray(picture).copy()
