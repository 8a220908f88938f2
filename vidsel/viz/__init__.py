"""Pictures of what a method did on a real video, drawn over the frames read by `vidsel.io`.

- ``merges(model_or_handle, frames) -> PIL.Image``: TESTA / ToMe merge groups (each output token's
  source patches in one colour, merged frames marked by a shared colour bar).
- ``selections(model_or_handle, frames) -> PIL.Image``: STTS kept frames and anchor boxes.
- ``mist(model, frames, encoder) -> PIL.Image``: MIST's selected segments and regions (one ISTA layer).
- ``motion(compressed_clip_or_path) -> PIL.Image``: MM-ViT's motion-vector field as arrows.
- ``save(image, path, frames=None)``: PNG, or GIF with one frame per video frame.
- ``render_video(video, model_name, out)``: read, build, run, draw, save (the ``vidsel viz`` command).

frames are (T, 3, H, W) uint8 as `vidsel.io.read_frames` returns them; each function also has a
``trace_*`` half returning the indices it draws (see merges.py / selections.py).
"""

from vidsel.viz.merges import MergeTrace, merge_picture, merges, trace_merges
from vidsel.viz.mist import MISTTrace, mist, mist_picture, trace_mist
from vidsel.viz.motion import motion
from vidsel.viz.render import render_video, save
from vidsel.viz.selections import SelectionTrace, selection_picture, selections, trace_selections

__all__ = [
    "MISTTrace",
    "MergeTrace",
    "SelectionTrace",
    "merge_picture",
    "merges",
    "mist",
    "mist_picture",
    "motion",
    "render_video",
    "save",
    "selection_picture",
    "selections",
    "trace_merges",
    "trace_mist",
    "trace_selections",
]
