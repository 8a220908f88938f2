"""Pictures of token merging (TESTA §3.2, ToMe): which input patches every output token covers.

`trace_merges(target, frames)` runs the model once and returns a `MergeTrace`; `merge_picture`
draws it; `merges` does both. Targets:
  * a `vidsel.patch.testa(..., trace_source=True)` / `vidsel.patch.tome(..., trace_source=True)` handle;
  * a vidsel `TestaEncoder` / `JointEncoder` (e.g. ``vidsel.create_model("testa_f16")``): the
    matchings of its TokenMerging layers are captured with forward hooks.
Picture: one column per input frame — the frame on top, below it every patch painted in the colour
of the output token it ended in (dark lines between groups); above the frames a colour bar marks
the frames TESTA merged into one (same colour = same output frame; no bar = not merged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from vidsel import ops
from vidsel.viz._draw import group_colour, group_map, strip, to_hwc
from vidsel.viz._input import model_input, resize_frames

__all__ = ["MergeTrace", "trace_merges", "merge_picture", "merges"]


@dataclass
class MergeTrace:
    """groups (T, Hp, Wp) long: output token covering each input patch of each input frame;
    frame_groups (T,) long or None: output frame each input frame ended in (TESTA's TAM)."""

    groups: Tensor
    frame_groups: Tensor | None = None


def _owner(source: Tensor) -> Tensor:
    """(N_out, N_in) bool, one True per column -> (N_in,) index of the output token covering each input."""
    return source.to(torch.float32).argmax(dim=0)


def _testa_trace(source: Tensor, frame_source: Tensor | None, frames: int, side: tuple[int, int]) -> MergeTrace:
    """source (T', L', T·L) of clip 0 -> groups (T, Hp, Wp); output token id = t'·L' + l'."""
    groups = _owner(source.reshape(-1, source.shape[-1])).reshape(frames, *side)
    frame_groups = None if frame_source is None else _owner(frame_source)
    return MergeTrace(groups, frame_groups)


def _from_handle(handle, frames: Tensor) -> MergeTrace:
    model, state = handle.model, handle.state
    if handle.method == "testa":
        config = model.config
        x = model_input(frames, config.image_size, "btchw")
        with torch.no_grad():
            model(x)
        if state.source is None:
            raise ValueError("the TESTA handle does not trace sources: patch with vidsel.patch.testa(..., trace_source=True)")
        side = (config.image_size // config.patch_size,) * 2
        return _testa_trace(state.source[0], state.frame_source[0], frames.shape[0], side)
    if handle.method != "tome":
        raise TypeError(f"vidsel.viz.merges draws TESTA / ToMe merges, not a {handle.method!r} handle")
    kind, size, patch, tubelet = _tome_geometry(model)
    x = model_input(frames if kind == "video" else frames[:1], size, "btchw" if kind == "video" else "bchw")
    with torch.no_grad():
        model(x)
    if state.source is None:
        raise ValueError("the ToMe handle does not trace sources: patch with vidsel.patch.tome(..., trace_source=True)")
    owner = _owner(state.source[0][:, state.protected:])
    side = size // patch
    if kind == "image":
        return MergeTrace(owner.reshape(1, side, side))
    per_tube = owner.reshape(-1, side, side)  # (T / tubelet, Hp, Wp)
    return MergeTrace(per_tube.repeat_interleave(tubelet, dim=0)[: frames.shape[0]])


def _tome_geometry(model):
    """("image" | "video", input size, patch size, tubelet size) of a ToMe-patched backbone."""
    if hasattr(model, "patch_embed"):  # timm VisionTransformer
        return "image", model.patch_embed.img_size[0], model.patch_embed.patch_size[0], 1
    config = model.config
    if hasattr(config, "tubelet_size"):  # VideoMAE
        return "video", config.image_size, config.patch_size, config.tubelet_size
    return "image", config.image_size, config.patch_size, 1


def _from_vidsel_encoder(encoder, frames: Tensor) -> MergeTrace:
    from vidsel.models.testa import JointEncoder, TestaEncoder

    config = encoder.config
    x = model_input(frames, config.img_size, "bcthw")
    layers = ({"frame": encoder.frame_merging, "patch": encoder.patch_merging} if isinstance(encoder, TestaEncoder)
              else {"token": encoder.token_merging})
    events = []
    hooks = [layer.register_forward_hook(lambda module, args, out, kind=kind: events.append((kind, out[2])))
             for kind, layer in layers.items()]
    try:
        with torch.no_grad():
            encoder(x)
    finally:
        for hook in hooks:
            hook.remove()
    frames_in, patches = config.num_frames, encoder.patch_embed.num_patches
    side = (int(round(patches**0.5)),) * 2
    if isinstance(encoder, JointEncoder):
        source = None
        for _, matching in events:
            if matching is not None:
                source = ops.merge_source(matching, source)
        if source is None:
            return MergeTrace(torch.arange(frames_in * patches).reshape(frames_in, *side))
        return MergeTrace(_owner(source[0][:, 1:]).reshape(frames_in, *side))  # column 0 is CLS
    n = frames_in * patches
    source = torch.eye(n, dtype=torch.bool).reshape(1, frames_in, patches, n)
    frame_source = torch.eye(frames_in, dtype=torch.bool)[None]
    for kind, matching in events:
        if matching is None:
            continue
        _, t, l, _ = source.shape
        if kind == "frame":
            source = ops.merge_source(matching, source.reshape(1, t, l * n)).reshape(1, -1, l, n)
            frame_source = ops.merge_source(matching, frame_source)
        else:
            source = ops.merge_source(matching, source.reshape(t, l, n)).reshape(1, t, -1, n)
    return _testa_trace(source[0], frame_source[0], frames_in, side)


def trace_merges(target, frames: Tensor) -> MergeTrace:
    """Runs `target` on `frames` ((T, 3, H, W) uint8, e.g. from `vidsel.io.read_frames`) and returns
    which output token covers every input patch. See the module docstring for the targets."""
    from vidsel.models.testa import JointEncoder, TestaEncoder
    from vidsel.patch import PatchHandle

    if isinstance(target, PatchHandle):
        return _from_handle(target, frames)
    if isinstance(target, (TestaEncoder, JointEncoder)):
        was_training = target.training
        try:
            return _from_vidsel_encoder(target.eval(), frames)
        finally:
            target.train(was_training)
    raise TypeError(
        f"vidsel.viz.merges: cannot trace merges of {type(target).__name__}; supported: a vidsel.patch.testa / "
        "tome handle (trace_source=True), vidsel TestaEncoder / JointEncoder"
    )


def merge_picture(frames: Tensor, trace: MergeTrace) -> Image.Image:
    """frames (T, 3, H, W) uint8 at the model's input size + trace -> picture (see module docstring)."""
    images = to_hwc(frames)
    groups = trace.groups.cpu().numpy()
    if groups.shape[0] != images.shape[0]:
        raise ValueError(f"trace has {groups.shape[0]} frames, frames has {images.shape[0]}")
    cell_h, cell_w = images.shape[1] // groups.shape[1], images.shape[2] // groups.shape[2]
    columns = [[images[t], group_map(groups[t], cell_h, cell_w)] for t in range(len(images))]
    bars = None
    if trace.frame_groups is not None:
        frame_groups = trace.frame_groups.tolist()
        merged = {g for g in frame_groups if frame_groups.count(g) > 1}
        bars = [group_colour(g) if g in merged else None for g in frame_groups]
    return strip(columns, bars)


def merges(target, frames: Tensor) -> Image.Image:
    """`merge_picture` of `trace_merges(target, frames)` (frames resized to the model's input size)."""
    trace = trace_merges(target, frames)
    size = trace.groups.shape[1] * _patch_pixels(target)
    return merge_picture(resize_frames(frames[: trace.groups.shape[0]], size), trace)


def _patch_pixels(target) -> int:
    from vidsel.patch import PatchHandle

    if isinstance(target, PatchHandle):
        model = target.model
        if hasattr(model, "patch_embed"):
            return model.patch_embed.patch_size[0]
        return model.config.patch_size
    return target.config.patch_size

