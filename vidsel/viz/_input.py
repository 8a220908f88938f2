"""Frames from `vidsel.io.read_frames` ((T, 3, H, W) uint8) -> model inputs."""

from __future__ import annotations

import torch
from torch import Tensor

# ImageNet statistics: what ViT / TimeSformer / VideoMAE / MViT checkpoints are trained with.
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def resize_frames(frames: Tensor, size: int) -> Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, size, size) uint8 (antialiased bilinear; unchanged when already there)."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, 3, H, W) uint8 (vidsel.io.read_frames), got {tuple(frames.shape)} "
                         f"{frames.dtype}")
    if tuple(frames.shape[-2:]) == (size, size):
        return frames
    resized = torch.nn.functional.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def model_input(frames: Tensor, size: int, layout: str) -> Tensor:
    """Normalised float batch of one clip: layout "bcthw" (vidsel, torchvision), "btchw" (Hugging Face
    video models) or "bchw" (image models: the first frame)."""
    x = (resize_frames(frames, size).float() / 255 - MEAN[:, None, None]) / STD[:, None, None]  # (T, 3, S, S)
    if layout == "bcthw":
        return x.transpose(0, 1)[None]
    if layout == "btchw":
        return x[None]
    if layout == "bchw":
        return x[:1]
    raise ValueError(f"layout must be 'bcthw', 'btchw' or 'bchw', got {layout!r}")
