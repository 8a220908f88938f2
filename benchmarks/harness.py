"""Benchmark helpers: timing, peak memory, tables.

A benchmark module `benchmarks/bench_<name>.py` defines `run(profile: str) -> list[Table]`
(profile is "quick" for `make bench`, "full" for `make bench-full`). Time every contender in the
same run and report ratios against a peer, never absolute targets alone: CPU timings here are noisy.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.utils.benchmark as torch_benchmark


@dataclass
class Table:
    """One README table. `name` keys the README markers <!-- bench:name --> ... <!-- /bench:name -->."""

    name: str
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)

    def check(self, what: str, measured: float, target: str, passed: bool) -> None:
        """Records a target check (shown under the table and in the JSON record)."""
        self.checks.append(dict(what=what, measured=round(measured, 3), target=target, passed=bool(passed)))

    def add_comparison_rows(self, times: dict, memory: dict, baseline: str) -> None:
        """One row per contender: name, ms, speedup vs `baseline`, peak MiB, memory vs `baseline`."""
        for name in times:
            self.rows.append([name, times[name], times[baseline] / times[name], memory[name],
                              memory[name] / memory[baseline]])

    def to_markdown(self) -> str:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return str(v)

        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        if self.checks:
            lines.append("")
            for c in self.checks:
                mark = "met" if c["passed"] else "**missed**"
                lines.append(f"- {c['what']}: {c['measured']} (target {c['target']}) — {mark}")
        lines += [""] + [f"_{n}_" for n in self.notes] if self.notes else []
        return "\n".join(lines)


def gradient_step(forward, inputs, grad):
    """A callable running forward(*inputs) and the gradients of its (first) output w.r.t. inputs."""

    def step():
        out = forward(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out, inputs, grad)

    return step


# While `collecting()` runs, benchmarks only build their contenders: `expose` records them for
# pytest-benchmark (benchmarks/test_benchmarks.py) and the timing functions below return at once.
_collected: dict | None = None
COLLECTING_PEAK_MB = 1024.0  # placeholder peak while collecting: above any result, so derived ratios stay finite


def expose(case: str, contenders: dict, context: Callable | None = None) -> dict:
    """Publishes `contenders` (name -> zero-argument callable, exactly what the benchmark times) under
    `case` for `pytest benchmarks/ --benchmark-only`; `context` (e.g. torch.no_grad) wraps each call
    there as the benchmark wraps its timing. Returns `contenders` unchanged."""
    if _collected is not None:
        _collected[case] = (dict(contenders), context)
    return contenders


@contextlib.contextmanager
def collecting():
    """Within: a benchmark's run() builds and exposes its contenders without timing them (timing and
    memory functions return placeholders). Yields {case: (contenders, context)}."""
    global _collected
    previous, _collected = _collected, {}
    try:
        yield _collected
    finally:
        _collected = previous


def median_ms(fn, *, min_run_time: float = 1.0, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds (torch.utils.benchmark adaptive autorange)."""
    if _collected is not None:
        return 1.0
    for _ in range(warmup):
        fn()
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved_median_ms(fns: dict, rounds: int, warmup_rounds: int = 1) -> dict:
    """Median ms of each contender, timed round-robin (one call each per round) so that the load of a
    shared machine drifts over all contenders alike instead of favouring whoever ran in a quiet spell.
    Untimed warm-up rounds come first, round-robin too."""
    if _collected is not None:
        return {name: 1.0 for name in fns}
    for _ in range(warmup_rounds):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def median_ms_repeats(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median of `repeats` single calls: for slow calls (models) where autorange would take long."""
    if _collected is not None:
        return 1.0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def result_mb(value) -> float:
    """Size of the tensors a call returns (nested tuples/lists), in MiB."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() / 2**20
    if isinstance(value, (tuple, list)):
        return sum(result_mb(v) for v in value)
    return 0.0


def peak_memory_mb(fn) -> float:
    """Peak CPU memory allocated by torch during fn() above what was live before, in MiB.

    Reads the profiler's allocator events ([memory] records: + on alloc, - on free) in time order.
    """
    if _collected is not None:
        return COLLECTING_PEAK_MB
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20
