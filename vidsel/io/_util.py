"""Argument checks, resizing and the multi-file progress loop shared by the readers."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return value


def parse_size(size) -> tuple[int, int] | None:
    """None, an int (square output) or (height, width) -> (height, width) or None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(pair, (tuple, list)) or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
    ):
        raise TypeError(f"size must be None, an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(pair[0]), int(pair[1])


def resize_images(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(T, C, H, W) uint8 or int16 -> (T, C, *size), same dtype: antialiased bilinear, rounded."""
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        resized = resized.clamp_(0, 255)
    return resized.round_().to(images.dtype)


def resize_motion(
    motion: torch.Tensor, native: tuple[int, int], size: tuple[int, int], block_size: int
) -> torch.Tensor:
    """Block motion (T, 2, ceil(H/g), ceil(W/g)) of an H×W video -> (T, 2, size/g) for frames resized to size.

    Vectors are rescaled to the new pixel units; the grid is resampled with an adaptive average (an
    area mean when shrinking, block repetition when growing).
    """
    rows, cols = size[0] // block_size, size[1] // block_size
    scale = torch.tensor([size[1] / native[1], size[0] / native[0]], dtype=motion.dtype).view(1, 2, 1, 1)
    return F.adaptive_avg_pool2d(motion, (rows, cols)) * scale


def map_with_progress(
    reader: Callable, paths: Iterable, *, progress: bool, errors: str, description: str
) -> list:
    """reader(path) for each path under a tqdm bar; errors="skip" warns and puts None for a bad file."""
    if errors not in ("raise", "skip"):
        raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
    paths = list(paths) if not isinstance(paths, Sequence) else paths
    results = []
    for path in tqdm(paths, desc=description, unit="file", disable=not progress):
        try:
            results.append(reader(path))
        except (OSError, ValueError) as error:
            if errors == "raise":
                raise
            warnings.warn(f"skipped: {error}", stacklevel=3)
            results.append(None)
    return results
