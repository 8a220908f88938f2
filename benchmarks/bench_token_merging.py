"""Bipartite match + size-weighted merge (TESTA §3.2.2, ToMe), forward, CPU float32.

What: B=8, N=1568 (8 frames x 196 patches), metric C=64, x D=768 with a size vector, r=392, forward.
Contenders: vidsel cpu backend; a ToMe-style eager PyTorch baseline (materialised scores, argsort,
gathers, scatter_reduce, cat, x*size and divide passes, written here); torch.compile of that baseline;
floors: bmm(a, b^T).max(-1) of the same similarity, and x.clone() (one pass over the data).
Why: TESTA merges tokens in every block; the merge is only worth it when matching + merging cost
little next to the attention it saves, so it is measured against the eager code and these floors.
Contenders are timed round-robin (one call of each per round, medians) after 3 untimed warm-up rounds.
"""

from __future__ import annotations

import torch

import vidsel.ops as ops
from benchmarks.harness import (
    Table, cold_calls_ms, cold_table, expose, gemm_paths_note, interleaved_median_ms, peak_memory_mb,
    result_mb,
)

BATCH, TOKENS, METRIC_DIM, DIM, R = 8, 1568, 64, 768, 392


def tome_style_baseline(metric, x, size, r):
    """Eager bipartite soft matching + weighted-average merge the way peers write it."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    set_a, set_b = metric[:, ::2], metric[:, 1::2]
    scores = set_a @ set_b.transpose(-1, -2)  # materialised (N/2) x (N/2)
    best, best_b = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]
    unmerged_a, merging_a = order[:, r:], order[:, :r]
    merging_b = best_b[..., None].gather(1, merging_a)

    def combine(t):
        t_a, t_b = t[:, ::2], t[:, 1::2]
        width = t.shape[-1]
        kept_a = t_a.gather(1, unmerged_a.expand(-1, -1, width))
        moved = t_a.gather(1, merging_a.expand(-1, -1, width))
        t_b = t_b.scatter_reduce(1, merging_b.expand(-1, -1, width), moved, reduce="sum")
        return torch.cat([kept_a, t_b], dim=1)

    x = combine(x * size)
    size = combine(size)
    return x / size, size


def vidsel_match_merge(metric, x, size, r):
    return ops.merge(x, ops.bipartite_match(metric, r, impl="cpu"), size, impl="cpu")


COLD = ("vidsel cpu: match + merge", "ToMe-style eager baseline", "vidsel cpu: match only",
        "floor: bmm(a, b^T).max(-1)")


def cold_contenders() -> dict:
    """The cold-call contenders (inputs built untimed in a fresh process)."""
    torch.manual_seed(0)
    metric = torch.randn(BATCH, TOKENS, METRIC_DIM)
    x = torch.randn(BATCH, TOKENS, DIM)
    size = torch.randint(1, 4, (BATCH, TOKENS, 1)).float()
    normed = metric / metric.norm(dim=-1, keepdim=True)
    a, b = normed[:, ::2].contiguous(), normed[:, 1::2].contiguous()
    return {
        COLD[0]: lambda: vidsel_match_merge(metric, x, size, R),
        COLD[1]: lambda: tome_style_baseline(metric, x, size, R),
        COLD[2]: lambda: ops.bipartite_match(metric, R, impl="cpu"),
        COLD[3]: lambda: torch.bmm(a, b.transpose(1, 2)).max(-1),
    }


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    metric = torch.randn(BATCH, TOKENS, METRIC_DIM)
    x = torch.randn(BATCH, TOKENS, DIM)
    size = torch.randint(1, 4, (BATCH, TOKENS, 1)).float()
    matching = ops.bipartite_match(metric, R, impl="cpu")
    normed = metric / metric.norm(dim=-1, keepdim=True)
    a, b = normed[:, ::2].contiguous(), normed[:, 1::2].contiguous()
    compiled_baseline = torch.compile(tome_style_baseline)
    compiled_baseline(metric, x, size, R)  # compile outside the timing

    contenders = expose("token_merging", {
        "vidsel cpu: match + merge": lambda: vidsel_match_merge(metric, x, size, R),
        "ToMe-style eager baseline": lambda: tome_style_baseline(metric, x, size, R),
        "torch.compile(baseline)": lambda: compiled_baseline(metric, x, size, R),
        "vidsel cpu: match only": lambda: ops.bipartite_match(metric, R, impl="cpu"),
        "floor: bmm(a, b^T).max(-1)": lambda: torch.bmm(a, b.transpose(1, 2)).max(-1),
        "vidsel cpu: merge only": lambda: ops.merge(x, matching, size, impl="cpu"),
        "floor: x.clone()": lambda: x.clone(),
    })
    rounds = 31 if profile == "full" else 15
    times = interleaved_median_ms(contenders, rounds, warmup_rounds=3)
    memory = {name: peak_memory_mb(fn) for name, fn in contenders.items()}
    extra = {name: max(memory[name] - result_mb(fn()), 0.0) for name, fn in contenders.items()}

    eager = times["ToMe-style eager baseline"]
    table = Table(
        name="token_merging",
        title=f"match + merge, B={BATCH}, N={TOKENS}, C={METRIC_DIM}, D={DIM}, r={R}, float32, "
        f"{torch.get_num_threads()} threads",
        columns=["contender", "median ms", "speedup vs eager", "peak MiB", "temporaries MiB"],
    )
    for name in contenders:
        table.rows.append([name, times[name], eager / times[name], memory[name], extra[name]])
    fused = times["vidsel cpu: match + merge"]
    table.check("speedup vs eager baseline", eager / fused, ">= 2.5x", eager / fused >= 2.5)
    compiled = times["torch.compile(baseline)"]
    table.check("speedup vs compiled baseline", compiled / fused, ">= 1.4x", compiled / fused >= 1.4)
    match_ratio = times["vidsel cpu: match only"] / times["floor: bmm(a, b^T).max(-1)"]
    table.check("match time / bmm+max floor", match_ratio, "<= 1.2", match_ratio <= 1.2)
    merge_ratio = times["vidsel cpu: merge only"] / times["floor: x.clone()"]
    table.check("merge time / clone floor", merge_ratio, "<= 1.3", merge_ratio <= 1.3)
    mem_ratio = extra["vidsel cpu: match + merge"] / extra["ToMe-style eager baseline"]
    table.check("peak extra memory (temporaries) / eager baseline's", mem_ratio, "<= 0.2", mem_ratio <= 0.2)
    table.notes.append(
        "peak MiB: allocator peak during the call (profiler); temporaries MiB: that peak minus the returned "
        "tensors, i.e. the extra memory a contender needs beyond its result."
    )
    table.notes.append(gemm_paths_note(
        ("similarity",),
        "matmul / bmm through the BLAS sgemm, torch.compile's graph through inductor (its matmuls on the BLAS)",
    ))
    cold = cold_calls_ms(__name__, "cold_contenders", list(COLD))
    cold_tab = cold_table("token_merging_cold", f"match + merge, cold calls (same shapes, {torch.get_num_threads()} "
                          "threads)", cold, times, COLD[1])
    return [table, cold_tab]
