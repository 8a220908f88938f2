"""TESTA visual encoder with vs without token aggregation, CPU, batch 1: does merging frames and
patches (TAM + SAM) make the encoder as much faster as its GFLOPs drop, and do our GFLOPs match
the paper's?

TESTA's claim is efficiency at equal quality: R_T=1, R_S=2 cuts 16-frame encoding from 392 to
228 GFLOPs (Table 6), 32 frames from 786 to 420 ("1.7x efficiency", Table 1). Bipartite matching
and merging cost time the FLOP count hides, so the ratio of wall-clock times is what is measured.

quick (`make bench`): 16 frames, R_T=1, R_S=2 vs no aggregation, target ≥ 1.5×.
full (`make bench-full`): also 32 frames, R_T=1, R_S=12 vs no aggregation, target ≥ 1.6×.
Throughput = clips/s from the median wall time of single forwards (float32, inference_mode, ONE
thread), the two contenders of a pair run alternately so load drift hits both alike. One thread
because on this shared 2-core machine every parallel region waits for a descheduled sibling
thread: the many small ops of the merging path (match, merge, key means) then cost ~100x their
single-thread time and the ratio measures the machine's load, not the model.
Also a GFLOPs table (paper vs `vidsel.flops`, counted on the meta device) for the README.
"""

from __future__ import annotations

import statistics
import time

import torch

import vidsel
from benchmarks.harness import Table, one_thread
from vidsel import flops

PAIRS = {  # frames: (reduced model, baseline, speedup target)
    16: ("testa_f16", "testa_f16_noagg", 1.5),
    32: ("testa_f32", "testa_f32_noagg", 1.6),
}

PAPER_GFLOPS = [  # model, paper GFLOPs, source
    ("testa_f16_noagg", 392.0, "TESTA Table 6 (w/o agg.)"),
    ("testa_f16", 228.0, "TESTA Table 6, R_T=1 R_S=2"),
    ("testa_f32_noagg", 786.0, "TESTA Table 1 (w/o agg.)"),
    ("testa_f32", 420.0, "TESTA Table 1, R_T=1 R_S=12"),
    ("testa_f96_noagg", 2382.5, "TESTA Table 5 (no aggregation)"),
    ("testa_f96", 1381.4, "TESTA Table 5, R_T=4 R_S=8"),
    ("joint_f16", 450.0, "TESTA Table 6 (ToMe w/o agg.)"),
    ("tome_joint_f16", 252.0, "TESTA Table 6 (ToMe r=197)"),
    ("timesformer_f8", 196.0, "TimeSformer 8x224²"),
]


def interleaved_medians_ms(fns: dict, repeats: int, warmup: int = 1) -> tuple[dict, dict]:
    """Median wall and process-CPU time (ms) of single calls, calls alternating between the fns."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    median = lambda d: {name: statistics.median(t) * 1e3 for name, t in d.items()}  # noqa: E731
    return median(wall), median(cpu)


def gflops_table() -> Table:
    table = Table(
        name="gflops_testa",
        title="GFLOPs per view (1 multiply-add = 1 FLOP, batch 1, 224²): paper vs vidsel.flops",
        columns=["model", "paper GFLOPs", "ours", "diff %", "params (M)", "source"],
    )
    worst = 0.0
    for name, paper, source in PAPER_GFLOPS:
        report = flops.count_model(name)
        diff = 100 * (report.gmacs / paper - 1)
        worst = max(worst, abs(diff))
        table.rows.append([name, f"{paper:g}", f"{report.gmacs:.1f}", f"{diff:+.2f}", f"{report.params / 1e6:.2f}", source])
    table.check("largest |ours - paper| / paper (%)", worst, "<= 1%", worst <= 1.0)
    table.notes.append(
        "Counted with `python -m vidsel.flops MODEL` (FlopCounterMode on the meta device, converted to "
        "fvcore's convention: LayerNorm 5/element, attention q·kᵀ + attn·v, bipartite similarities, "
        "merges 1/element). tests/models/test_flops_testa.py checks each row against an independent analytic count."
    )
    return table


def speed_table(profile: str) -> Table:
    frame_counts = [16, 32] if profile == "full" else [16]
    repeats = 5 if profile == "full" else 3
    table = Table(
        name="models_testa",
        title=f"TESTA encoder throughput, CPU float32, batch 1, 224², 1 thread (median of {repeats} alternating runs)",
        columns=["model", "frames", "GFLOPs", "median s", "clips/s", "speedup vs no-agg", "CPU-time speedup"],
    )
    for frames in frame_counts:
        reduced, baseline, target = PAIRS[frames]
        models = {name: vidsel.create_model(name).eval() for name in (baseline, reduced)}
        clip = models[baseline].example_inputs()[0]

        def forward(model):
            def call():
                with torch.inference_mode():
                    model(clip)

            return call

        times, cpu = interleaved_medians_ms({name: forward(m) for name, m in models.items()}, repeats)
        for name in (baseline, reduced):
            gmacs = flops.count_model(name).gmacs
            table.rows.append([name, frames, f"{gmacs:.1f}", f"{times[name] / 1e3:.2f}", f"{1e3 / times[name]:.4f}",
                               f"{times[baseline] / times[name]:.2f}", f"{cpu[baseline] / cpu[name]:.2f}"])
        speedup = times[baseline] / times[reduced]
        table.check(f"{reduced} speedup vs no aggregation ({frames} frames)", speedup, f">= {target}x",
                    speedup >= target)
        del models
    table.notes.append(
        "Paper GFLOPs ratio: 392/228 = 1.72x (16 frames), 786/420 = 1.87x (32 frames). "
        "Timing alternates the two contenders every run; the machine is shared, so compare ratios. "
        "CPU-time speedup: the same ratio from process CPU time, insensitive to other sessions' load."
    )
    return table


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    with one_thread():
        return [gflops_table(), speed_table(profile)]
