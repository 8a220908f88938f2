"""Saving pictures, and the whole ``vidsel viz`` pipeline: read a video, build a model, run, draw, save."""

from __future__ import annotations

import os

import torch
from PIL import Image

from vidsel.viz._draw import GAP

__all__ = ["render_video", "save"]


def save(image: Image.Image, path, frames: int | None = None) -> str:
    """Saves a picture as PNG, or as an animated GIF of its `frames` equal-width columns (one per video frame)."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".png":
        image.save(path)
    elif extension == ".gif":
        if not frames or frames < 1:
            raise ValueError("saving a GIF needs frames = the number of columns (video frames) in the picture")
        width = (image.width - GAP * (frames - 1)) // frames
        if width < 1:
            raise ValueError(f"a {image.width}-pixel picture has no {frames} columns")
        columns = [image.crop((t * (width + GAP), 0, t * (width + GAP) + width, image.height)) for t in range(frames)]
        columns[0].save(path, save_all=True, append_images=columns[1:], duration=500, loop=0)
    else:
        raise ValueError(f"output must end in .png or .gif, got {path!r}")
    return path


def _build(name: str, num_frames: int, img_size: int, weights, overrides: dict):
    import vidsel

    model = vidsel.create_model(name, num_frames=num_frames, img_size=img_size, **overrides).eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def _draw(model, frames):
    from vidsel.models.testa import JointEncoder, TestaEncoder
    from vidsel.viz.merges import merges
    from vidsel.viz.selections import selections

    if isinstance(model, (TestaEncoder, JointEncoder)):
        return merges(model, frames)
    if hasattr(model, "selectors"):
        return selections(model, frames)
    raise TypeError(f"{type(model).__name__} neither merges nor selects tokens; use a TESTA, ToMe or STTS model")


def render_video(video, model: str, output, *, num_frames: int = 8, img_size: int = 224, weights=None,
                 overrides: dict | None = None, progress: bool = False) -> str:
    """Draws what registered vidsel model `model` (random weights unless `weights`, a state_dict file)
    merges or selects on `num_frames` frames of `video`, or (model="motion") its motion vectors;
    saves to `output` (.png, or .gif with one frame per video frame) and returns the path."""
    from tqdm import tqdm

    from vidsel.io import read_compressed, read_frames
    from vidsel.viz.motion import motion

    if not os.path.exists(os.fspath(video)):
        raise FileNotFoundError(f"{video}: no such video file")
    steps = ["read video", "draw", "save"] if model == "motion" else ["build model", "read video", "run + draw", "save"]
    bar = tqdm(total=len(steps), desc="vidsel viz", unit="step", disable=not progress, leave=False)
    try:
        if model == "motion":
            bar.set_postfix_str(steps[0])
            clip = read_compressed(video, num_frames, size=img_size, audio=False)
            bar.update()
            picture = motion(clip)
        else:
            bar.set_postfix_str(steps[0])
            net = _build(model, num_frames, img_size, weights, overrides or {})
            bar.update()
            bar.set_postfix_str(steps[1])
            frames = read_frames(video, num_frames, size=img_size)
            bar.update()
            bar.set_postfix_str(steps[2])
            picture = _draw(net, frames)
        bar.update()
        bar.set_postfix_str("save")
        path = save(picture, output, frames=num_frames)
        bar.update()
    finally:
        bar.close()
    return path
