"""benchmarks/plots.py: which rows become speed-up bars, and the generated example video."""

import numpy as np

from benchmarks import plots
from benchmarks.harness import Table
from vidsel import flops, io  # flops first: meta-device construction before the NaN-filling fixture


def test_speedup_bars_take_vidsel_rows_of_speedup_columns():
    ops_table = Table("ops", "t", ["motion g", "contender", "ms", "speedup"],
                      rows=[[4, "vidsel cpu", 2.0, 3.0], [4, "eager baseline", 6.0, 1.0], [4, "floor: clone", 1.0, 6.0]])
    model_table = Table("models_x", "t", ["model", "GFLOPs", "clips/s", "speedup vs no-agg"],
                        rows=[["base", "392", "0.1", "1.00"], ["reduced", "228", "0.17", "1.70"]])
    no_speedup = Table("io", "t", ["reader", "ms"], rows=[["vidsel", 1.0]])
    assert plots.speedup_bars([ops_table, model_table, no_speedup]) == [
        ("ops: motion g 4 / vidsel cpu", 3.0), ("models_x: reduced", 1.7)]


def test_moving_shapes_video(tmp_path):
    path = plots.moving_shapes_video(str(tmp_path / "shapes.mp4"), frames=8, size=112)
    frames = io.read_frames(path, 8, size=112).permute(0, 2, 3, 1).numpy().astype(int)
    red = (frames[..., 0] > 180) & (frames[..., 1] < 90) & (frames[..., 2] < 90)
    columns = [np.nonzero(red[t].any(axis=0))[0] for t in range(8)]
    lefts = [c.min() for c in columns]
    assert all(later > earlier for earlier, later in zip(lefts, lefts[1:]))  # the square moves right


def test_gflops_panels_name_models_this_build_lacks(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn, notes = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, y, **kw: drawn.append((kw["label"], list(y))))
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, text, **kw: notes.append(text))
    panels = {"small": ((2, 4), (("TESTA", "testa_f16", "-", "k", lambda t: {"num_frames": t, "depth": 1}),
                                 ("absent", "no_such_model", "--", "k", lambda t: {})))}
    path = plots.gflops_vs_frames(str(tmp_path / "g.png"), panels)
    assert drawn == [("TESTA", [flops.count_model("testa_f16", num_frames=t, depth=1).gmacs for t in (2, 4)])]
    assert notes == ["not in this build:\nno_such_model"] and (tmp_path / "g.png").stat().st_size > 0
    assert path.endswith("g.png")
