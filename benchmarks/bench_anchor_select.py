"""Perturbed anchor selection (STTS §3.3, eq. 7-9), forward + backward, CPU float32.

What: ops.anchor_select(mode="perturbed") on x (8, 8, 14, 14, 768), anchor 10x10, stride 2 (G = 9),
n=500, sigma=0.1, gradients to x and scores, against an eager baseline shaped like the STTS code
(written here): anchor scores by avg_pool2d, the perturbed top-k keeping its (b, n, G) noise and
(b, n, k, G) one-hots for the backward, and the anchor windows materialised with F.unfold
(B*T, D*h*w, G) and contracted with the indicators by einsum.
Why: the fused op never materialises the unfolded windows nor per-sample noise, so it should be
faster and need a fraction of the baseline's memory at STTS's training shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import vidsel.ops as ops
from benchmarks.harness import (
    Table, cold_calls_ms, cold_table, collecting, expose, gradient_step, median_ms, peak_memory_mb,
)

BATCH, FRAMES, SIDE, DIM, ANCHOR, STRIDE, SAMPLES, SIGMA = 8, 8, 14, 768, 10, 2, 500, 0.1


class _PerturbedTopKBaseline(torch.autograd.Function):
    """Perturbed-maximum top-k as eager code writes it (STTS eq. 7-8), saving noise and one-hots."""

    @staticmethod
    def forward(ctx, scores, k, num_samples, sigma):
        noise = torch.randn(scores.shape[0], num_samples, scores.shape[1], dtype=scores.dtype)
        perturbed = scores.unsqueeze(1) + sigma * noise
        index = torch.topk(perturbed, k, dim=-1, sorted=False).indices.sort(dim=-1).values
        one_hot = F.one_hot(index, scores.shape[1]).to(scores.dtype)  # (b, n, k, G)
        ctx.save_for_backward(noise, one_hot)
        ctx.sigma = sigma
        return one_hot.mean(dim=1)

    @staticmethod
    def backward(ctx, grad):
        noise, one_hot = ctx.saved_tensors
        jacobian = torch.einsum("bnkg,bng->bkg", one_hot, noise) / (noise.shape[1] * ctx.sigma)
        return torch.einsum("bkg,bkg->bg", grad, jacobian), None, None, None


def unfold_anchor_baseline(x, scores, anchor, stride, num_samples, sigma):
    """STTS-code-shaped perturbed anchor selection: every anchor window materialised by F.unfold."""
    batch, frames, height, width, dim = x.shape
    maps = scores.reshape(batch * frames, 1, height, width)
    anchor_scores = F.avg_pool2d(maps, anchor, stride).flatten(1)  # (B*T, G)
    indicators = _PerturbedTopKBaseline.apply(anchor_scores, 1, num_samples, sigma)  # (B*T, 1, G)
    channels_first = x.reshape(batch * frames, height, width, dim).permute(0, 3, 1, 2)
    windows = F.unfold(channels_first, anchor, stride=stride)  # (B*T, D*h*w, G)
    selected = torch.einsum("bkg,bcg->bkc", indicators, windows)  # (B*T, 1, D*h*w)
    return selected.view(batch, frames, dim, anchor, anchor).permute(0, 1, 3, 4, 2)


def _anchor_table(seconds: float) -> Table:
    x = torch.randn(BATCH, FRAMES, SIDE, SIDE, DIM, requires_grad=True)
    scores = torch.rand(BATCH, FRAMES, SIDE, SIDE, requires_grad=True)
    grad = torch.randn(BATCH, FRAMES, ANCHOR, ANCHOR, DIM)

    def fused(a, s):
        return ops.anchor_select(a, s, ANCHOR, STRIDE, mode="perturbed", num_samples=SAMPLES, sigma=SIGMA, seed=0,
                                 impl="cpu")

    def baseline(a, s):
        return unfold_anchor_baseline(a, s, ANCHOR, STRIDE, SAMPLES, SIGMA)

    contenders = expose("anchor_select", {
        "vidsel cpu: anchor_select(perturbed)": gradient_step(fused, (x, scores), grad),
        "unfold + einsum eager baseline": gradient_step(baseline, (x, scores), grad),
    })
    times = {name: median_ms(fn, min_run_time=seconds) for name, fn in contenders.items()}
    memory = {name: peak_memory_mb(fn) for name, fn in contenders.items()}
    base_name = "unfold + einsum eager baseline"
    table = Table(
        name="anchor_select",
        title=f"anchor_select perturbed forward + backward, x ({BATCH}, {FRAMES}, {SIDE}, {SIDE}, {DIM}), "
        f"anchor {ANCHOR}x{ANCHOR}, stride {STRIDE}, n={SAMPLES}, float32, {torch.get_num_threads()} threads",
        columns=["contender", "median ms", "speedup", "peak MiB", "memory vs baseline"],
    )
    table.add_comparison_rows(times, memory, base_name)
    fused_name = "vidsel cpu: anchor_select(perturbed)"
    speedup = times[base_name] / times[fused_name]
    table.check("speedup vs unfold baseline", speedup, ">= 3x", speedup >= 3.0)
    ratio = memory[fused_name] / memory[base_name]
    table.check("peak memory / unfold baseline's", ratio, "<= 0.25", ratio <= 0.25)
    table.notes.append(
        "peak MiB: allocator peak during forward + backward (torch profiler), including the returned gradients."
    )
    return table


def cold_contenders() -> dict:
    """The contenders exactly as the table times them, built without timing (cold-call factory)."""
    torch.manual_seed(0)
    with collecting() as cases:
        _anchor_table(1.0)
    return cases["anchor_select"][0]


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    table = _anchor_table(2.0 if profile == "full" else 1.0)
    steady = {row[0]: row[1] for row in table.rows}
    cold = cold_calls_ms(__name__, "cold_contenders", list(steady))
    return [table, cold_table("anchor_select_cold", "anchor_select perturbed forward + backward, cold calls", cold,
                              steady, "unfold + einsum eager baseline")]
