"""MIST (§4.6, Fig. 5(f)): GFLOPs vs frames, and VideoQA throughput of MIST vs Trans.-Patch on CPU.

GFLOPs (`vidsel.flops`, meta device, batch 1): mist_clip vs mist_trans_patch vs mist_trans_frame at
32, 64, 128 and 256 frames (K = frames / 4 segments of T = 4 frames, N = 50, D = 512), with the ratios.
Throughput: questions/s of eval forwards at batch 4 (float32, inference_mode, ONE thread), mist_clip
vs mist_trans_patch at 32 and 128 frames, both timed round-robin in the same run after a batch-1
warm-up call each. One thread for the reason given in bench_models_testa: on this shared 2-core machine a
parallel region waits for descheduled sibling threads, and the ratio would measure the load.
"""

from __future__ import annotations

import statistics
import time

import torch

import vidsel
from benchmarks.harness import Table, one_thread
from vidsel import flops

FRAMES = (32, 64, 128, 256)
T = 4  # frames per segment (MIST-CLIP)
SPEED_TARGET = 10.0  # mist_clip vs mist_trans_patch throughput at 128 frames


def _gmacs(name: str, frames: int) -> float:
    return flops.count_model(name, num_segments=frames // T).gmacs


def gflops_table() -> Table:
    table = Table(
        name="gflops_mist",
        title="MIST vs Table 5 baselines: GFLOPs per question (1 multiply-add = 1 FLOP, batch 1, CLIP ViT-B/32 "
              "features N=50, D=512, T=4 frames per segment)",
        columns=["frames", "K", "MIST", "Trans.-Patch", "Trans.-Frame", "Trans.-Patch / MIST", "MIST / Trans.-Frame"],
    )
    ratios = {}
    for frames in FRAMES:
        mist, patch, frame = (_gmacs(n, frames) for n in ("mist_clip", "mist_trans_patch", "mist_trans_frame"))
        ratios[frames] = patch / mist
        table.rows.append([frames, frames // T, f"{mist:.3f}", f"{patch:.2f}", f"{frame:.3f}", f"{patch / mist:.1f}",
                           f"{mist / frame:.2f}"])
    table.check("Trans.-Patch / MIST GFLOPs at 128 frames", ratios[128], ">= 50x", ratios[128] >= 50)
    params = flops.count_model("mist_clip").params
    table.notes.append(
        f"ISTA head of mist_clip (everything after the frozen encoder: 2 ISTA layers, position and answer "
        f"projections): {params:,} parameters ({params / 1e6:.2f} M); the paper gives no count. "
        "Counted on the meta device in eval (hard top-k selection: vidsel.topk_gather, 0 FLOPs by its formula; "
        "training adds the vidsel.gumbel_topk draws and one-hot products). The encoder is not counted."
    )
    return table


def _round_robin_ms(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall and process-CPU ms of single calls, one call per contender per round."""
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    median = lambda d: {name: statistics.median(v) * 1e3 for name, v in d.items()}  # noqa: E731
    return median(wall), median(cpu)


def _forward(model, inputs):
    def call():
        with torch.inference_mode():
            model(*inputs)

    return call


def speed_table(profile: str) -> Table:
    # Trans.-Patch at 128 frames is ~500 GFLOPs per batch (minutes on one loaded core): few rounds.
    repeats = {32: 5, 128: 3} if profile == "full" else {32: 3, 128: 1}
    batch = 4
    table = Table(
        name="models_mist",
        title=f"MIST vs Trans.-Patch VideoQA throughput, CPU float32, batch {batch}, eval, 1 thread "
              "(median of round-robin runs)",
        columns=["model", "frames", "GFLOPs / question", "median s / batch", "questions/s", "speedup vs Trans.-Patch",
                 "CPU-time speedup"],
    )
    for frames, rounds in repeats.items():
        names = ("mist_trans_patch", "mist_clip")
        models = {n: vidsel.create_model(n, num_segments=frames // T).eval() for n in names}
        inputs = models["mist_clip"].example_inputs(batch)
        for model in models.values():  # warm-up: one batch-1 call each (allocator, dispatch caches)
            _forward(model, model.example_inputs(1))()
        wall, cpu = _round_robin_ms({n: _forward(m, inputs) for n, m in models.items()}, rounds)
        for name in names:
            table.rows.append([name, frames, f"{_gmacs(name, frames):.2f}", f"{wall[name] / 1e3:.3f}",
                               f"{batch * 1e3 / wall[name]:.3g}", f"{wall[names[0]] / wall[name]:.1f}",
                               f"{cpu[names[0]] / cpu[name]:.1f}"])
        speedup = wall[names[0]] / wall["mist_clip"]
        if frames == 128:
            table.check("mist_clip vs mist_trans_patch throughput at 128 frames", speedup, f">= {SPEED_TARGET:g}x",
                        speedup >= SPEED_TARGET)
        del models
    table.notes.append(
        "Same inputs for both models (patches (4, K, 4, 50, 512), 20 words, 5 answers); eval selection is the "
        "hard top-k (vidsel.topk_gather). The machine is shared: compare the ratios; the CPU-time column is "
        "the same ratio from process CPU time."
    )
    return table


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    with one_thread():
        return [gflops_table(), speed_table(profile)]
