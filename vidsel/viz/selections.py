"""Pictures of STTS token selection (§3.3): the frames kept and the anchor box kept in each.

`trace_selections(target, frames)` runs the model once in eval (hard top-k) with forward pre-hooks
on its selectors, recomputes what each one chose from its input (the same rules: top-K frame
scores in temporal order; the anchor of highest mean score, ties to the lower index) and maps it
back to input frames and pixels. Targets: a vidsel STTS model (``vidsel.create_model("mvit_b16-T0.6@0-S0.9@4")``)
or a `vidsel.patch.stts` handle. Picture: kept frames with a green frame and the anchor box in
magenta, dropped frames dimmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vidsel import ops
from vidsel.viz._draw import BOX, DIM, KEPT, draw_box, strip, to_hwc
from vidsel.viz._input import model_input, resize_frames

__all__ = ["SelectionTrace", "trace_selections", "selection_picture", "selections"]

Window = tuple[float, float, float, float]  # top, left, height, width in input pixels


@dataclass
class SelectionTrace:
    """kept: input frames kept (ascending); boxes: input frame -> final anchor window (top, left,
    height, width) in pixels of the model input (empty without spatial selection); size: that input size."""

    kept: list[int]
    size: int
    boxes: dict[int, Window] = field(default_factory=dict)


def _selectors(target):
    """(model to run, its selectors in order, input size)."""
    from vidsel.nn import AnchorSpatialSelector, TemporalSelector
    from vidsel.patch import PatchHandle

    if isinstance(target, PatchHandle):
        if target.method != "stts":
            raise TypeError(f"vidsel.viz.selections draws STTS selections, not a {target.method!r} handle")
        model = target.model
        size = getattr(model, "pos_encoding", None)
        size = size.spatial_size[0] * 4 if size is not None else None
        return model, list(model.stts_selectors), size
    selectors = getattr(target, "selectors", None)
    if selectors is None or not all(isinstance(s, (TemporalSelector, AnchorSpatialSelector)) for s in selectors):
        raise TypeError(f"vidsel.viz.selections: {type(target).__name__} has no STTS selectors; supported: "
                        "vidsel STTS models, vidsel.patch.stts handles")
    return target, list(selectors), target.config.img_size


def _choose(selector, grid: Tensor, frame_map: list[list[int]], windows: list[Window]):
    """Applies one selector's choice (clip 0) to the frame map and the windows."""
    from vidsel.nn import TemporalSelector

    frames, height, width = grid.shape[1:4]
    if isinstance(selector, TemporalSelector):
        scores = selector.frame_scores(grid)[0]
        keep = torch.topk(scores, selector.num_kept(frames)).indices.sort().values.tolist()
        return [frame_map[i] for i in keep], [windows[i] for i in keep]
    side, stride = selector.side(height, width), selector.anchor_stride(height, width)
    means = ops.anchor_scores(selector.token_scores(grid)[0].double(), side, stride)
    columns = (width - side) // stride + 1
    chosen = []
    for f, index in enumerate(means.argmax(dim=-1).tolist()):
        row, col = divmod(index, columns)
        top, left, h, w = windows[f]
        chosen.append((top + row * stride * h / height, left + col * stride * w / width, side * h / height,
                       side * w / width))
    return frame_map, chosen


def trace_selections(target, frames: Tensor) -> SelectionTrace:
    """Runs an STTS model / handle on `frames` ((T, 3, H, W) uint8) and returns what it kept."""
    model, selectors, size = _selectors(target)
    size = size or frames.shape[-1]
    captured = []
    hooks = [s.register_forward_pre_hook(lambda module, args: captured.append((module, args[0].detach())))
             for s in selectors]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(model_input(frames, size, "bcthw"))
            first_frames = captured[0][1].shape[1]
            stride = max(1, frames.shape[0] // first_frames)
            frame_map = [list(range(k * stride, min((k + 1) * stride, frames.shape[0]))) for k in range(first_frames)]
            windows: list[Window] = [(0.0, 0.0, float(size), float(size))] * first_frames
            for selector, grid in captured:
                frame_map, windows = _choose(selector, grid, frame_map, windows)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    spatial = any(type(s).__name__ == "AnchorSpatialSelector" for s in selectors)
    boxes = {i: w for group, w in zip(frame_map, windows) for i in group} if spatial else {}
    return SelectionTrace(sorted(i for group in frame_map for i in group), size, boxes)


def selection_picture(frames: Tensor, trace: SelectionTrace) -> Image.Image:
    """frames (T, 3, H, W) uint8 + trace -> one column per frame: kept (green border, magenta anchor box)
    or dropped (dimmed)."""
    images = to_hwc(resize_frames(frames, trace.size))
    columns = []
    for t, image in enumerate(images):
        image = image.copy()
        if t in trace.kept:
            draw_box(image, 0, 0, image.shape[0], image.shape[1], KEPT, thickness=3)
            if t in trace.boxes:
                top, left, h, w = (int(round(v)) for v in trace.boxes[t])
                draw_box(image, top, left, h, w, BOX, thickness=2)
        else:
            image = (image.astype(np.float32) * DIM).astype(np.uint8)
        columns.append([image])
    return strip(columns)


def selections(target, frames: Tensor) -> Image.Image:
    """`selection_picture` of `trace_selections(target, frames)`."""
    return selection_picture(frames, trace_selections(target, frames))
