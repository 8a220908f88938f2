"""Plots of `make bench` (matplotlib, PNG, written to benchmarks/results/ and shown in the README).

* ``gflops_vs_frames.png``: GFLOPs per view against the number of frames, each method against what
  it is compared with (`PANELS`: TESTA vs no aggregation and ToMe vs the joint ViT; MIST vs
  Trans.-Patch; Mirasol3B's Transformer vs TTM Combiner), counted by `vidsel.flops` on the meta device.
* ``speedups.png``: every benchmark table's speed-up column as one bar per contender (log scale),
  read from the tables of the run.
* ``viz_testa.png``: `vidsel viz` of TESTA (random weights) on a generated video: a red square
  moving right and a blue disc moving down over a smooth background.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import Table  # noqa: E402

# panel title -> (frame counts, curves); a curve = (label, registered model, line style, colour,
# frames -> config overrides). Reduced models solid, what they are compared with dashed.
PANELS = {
    "TESTA / ToMe, ViT-B/16 at 224²": ((8, 16, 32, 64, 96), (
        ("TimeSformer (TESTA without aggregation)", "testa_f16_noagg", "--", "tab:blue", lambda t: {"num_frames": t}),
        ("TESTA R_T=1, R_S=2", "testa_f16", "-", "tab:blue", lambda t: {"num_frames": t}),
        ("TESTA R_T=1, R_S=12", "testa_f32", "-", "tab:cyan", lambda t: {"num_frames": t}),
        ("joint ViT (ToMe without merging)", "joint_f16", "--", "tab:green", lambda t: {"num_frames": t}),
        ("ToMe r=197", "tome_joint_f16", "-", "tab:green", lambda t: {"num_frames": t}),
    )),
    "MIST vs Trans.-Patch (segments of 4 frames)": ((16, 32, 64, 128), (
        ("MIST-CLIP", "mist_clip", "-", "tab:orange", lambda t: {"num_segments": t // 4}),
        ("Trans.-Patch", "mist_trans_patch", "--", "tab:orange", lambda t: {"num_segments": t // 4}),
    )),
    "Mirasol3B: Transformer vs TTM Combiner (chunks of 8 frames)": ((32, 64, 128), (
        ("Transformer Combiner", "mirasol3b", "--", "tab:purple", lambda t: {"num_frames": t, "num_chunks": t // 8}),
        ("TTM Combiner", "mirasol3b_ttm", "-", "tab:purple", lambda t: {"num_frames": t, "num_chunks": t // 8}),
    )),
}
SPEEDUP_WORDS = ("speedup", "speed-up", " vs ")


def gflops_vs_frames(path: str, panels: dict = PANELS) -> str:
    """One panel per entry of `panels`: GFLOPs per view vs frames of its models (a model this build does
    not register is named in its panel instead of drawn); returns the path."""
    import vidsel
    from vidsel import flops

    registered = set(vidsel.list_models())
    figure, all_axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for axes, (title, (frames, curves)) in zip(all_axes[0], panels.items()):
        missing = [model for _, model, *_ in curves if model not in registered]
        for label, model, style, colour, overrides in curves:
            if model in registered:
                gflops = [flops.count_model(model, **overrides(t)).gmacs for t in frames]
                axes.plot(frames, gflops, marker="o" if style == "-" else "s", linestyle=style, color=colour,
                          label=label)
        if missing:
            axes.text(0.5, 0.5, "not in this build:\n" + "\n".join(missing), ha="center", va="center",
                      transform=axes.transAxes, color="gray")
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("frames (batch 1)")
        axes.set_ylabel("GFLOPs (1 multiply-add = 1 FLOP)")
        axes.set_xscale("log", base=2)
        axes.set_xticks(list(frames), [str(t) for t in frames])
        axes.grid(alpha=0.3)
        if len(missing) < len(curves):
            axes.legend(fontsize=7)
    figure.suptitle("GFLOPs per view vs frames (vidsel.flops, meta device)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _number(value) -> float | None:
    try:
        return float(str(value).rstrip("x×"))
    except ValueError:
        return None


def _describe(header: str, cell) -> str:
    """A row cell as part of a bar label: names as they are, a configuration number with its header
    ("motion g 4"), measurements (times, GFLOPs, MiB) and "-" left out."""
    if _number(cell) is None:
        return "" if str(cell) == "-" else str(cell)
    measured = any(unit in header for unit in ("ms", "GFLOPs", "clips", "MiB", "median", " s"))
    return "" if measured else f"{header} {cell}"


def speedup_bars(tables: list[Table]) -> list[tuple[str, float]]:
    """(label, speed-up) of vidsel's rows (contenders named "vidsel ...", and the model rows of the model
    and patch benchmarks) in every table with a speed-up column (its first); rows at exactly 1 (the
    peer itself) are left out."""
    bars = []
    for table in tables:
        column = next((i for i, c in enumerate(table.columns) if any(w in c.lower() for w in SPEEDUP_WORDS)), None)
        if column is None:
            continue
        for row in table.rows:
            value = _number(row[column])
            label = " / ".join(_describe(header, cell) for header, cell in zip(table.columns, row[:column])
                               if _describe(header, cell))
            ours = "vidsel" in label or table.name.startswith(("models_", "patch"))
            if ours and value is not None and value > 0 and abs(value - 1) > 1e-9:
                bars.append((f"{table.name}: {label}"[:70], value))
    return bars


def speedups(tables: list[Table], path: str) -> str | None:
    """Horizontal bar chart of `speedup_bars(tables)`; returns the path (None when no table has one)."""
    bars = speedup_bars(tables)
    if not bars:
        return None
    figure, axes = plt.subplots(figsize=(8, 0.28 * len(bars) + 1.2))
    labels, values = zip(*bars)
    colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
    axes.barh(range(len(bars)), values, color=colours)
    axes.set_yticks(range(len(bars)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speed-up vs the table's peer (same run; >1 = faster)")
    axes.set_title("vidsel vs peers, CPU (make bench)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def moving_shapes_video(path: str, frames: int = 16, size: int = 224, fps: int = 8) -> str:
    """Encodes (MPEG-4) a smooth background with a red square moving right and a blue disc moving down."""
    import av
    import numpy as np

    ys, xs = np.mgrid[0:size, 0:size]
    background = np.stack([80 + 60 * xs / size, 140 + 50 * ys / size, np.full_like(xs, 170.0)], axis=-1)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for t in range(frames):
            image = background.copy()
            left, top = 20 + 8 * t, 40
            image[top:top + 56, left:left + 56] = (220, 40, 40)
            disc = (xs - 150) ** 2 + (ys - (30 + 7 * t)) ** 2 < 28**2
            image[disc] = (40, 60, 220)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def viz_example(path: str) -> str:
    """`vidsel viz` of TESTA-f16's aggregation (R_T=1, R_S=12, seeded random weights) on 8 frames of
    `moving_shapes_video`."""
    import tempfile

    import torch

    from vidsel.viz import render_video

    with tempfile.TemporaryDirectory() as folder:
        video = moving_shapes_video(os.path.join(folder, "shapes.mp4"))
        torch.manual_seed(0)
        return render_video(video, "testa_f16", path, num_frames=8, img_size=224,
                            overrides=dict(r_frames=1, r_patches=12))


def make_plots(tables: list[Table], out_dir: str) -> list[str]:
    """Writes the plots and the example picture into `out_dir`; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = [gflops_vs_frames(os.path.join(out_dir, "gflops_vs_frames.png")),
               viz_example(os.path.join(out_dir, "viz_testa.png"))]
    bars = speedups(tables, os.path.join(out_dir, "speedups.png"))
    return written + ([bars] if bars else [])
