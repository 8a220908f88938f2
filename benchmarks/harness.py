"""Benchmark helpers: timing, peak memory, tables.

A benchmark module `benchmarks/bench_<name>.py` defines `run(profile: str) -> list[Table]`
(profile is "quick" for `make bench`, "full" for `make bench-full`). Time every contender in the
same run and report ratios against a peer, never absolute targets alone: CPU timings here are noisy.
"""

from __future__ import annotations

import contextlib
import gc
import os
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


def gemm_paths_note(classes: tuple[str, ...], torch_contenders: str = "torch's own BLAS / oneDNN kernels") -> str:
    """Which GEMM each contender ran: vidsel's kernels use the per-machine choice of csrc/cpu/gemm.h
    (shape classes `classes`); `torch_contenders` says what PyTorch's contenders run (torch's BLAS /
    oneDNN, named with their versions)."""
    from vidsel import _backends
    from vidsel.info import torch_blas_name

    paths = _backends.cpu_gemm_paths()
    chosen = ", ".join(f"{c}={paths.get(c, 'n/a')}" for c in classes)
    cpu = _backends.cpu_identity()
    return (f"GEMM paths on {cpu['model']} ({cpu['vendor']}): vidsel cpu contenders {chosen} "
            f"(VIDSEL_CPU_GEMM={os.environ.get('VIDSEL_CPU_GEMM', 'auto')}; blas = torch's sgemm); PyTorch "
            f"contenders: {torch_contenders} ({torch_blas_name()}).")


def _cold_child(module: str, factory: str, name: str, calls: int) -> None:
    """Runs in a fresh process: builds the contenders (untimed), then times the first `calls` calls of one."""
    import importlib
    import json

    fn = getattr(importlib.import_module(module), factory)()[name]
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    print("COLD " + json.dumps(dict(first=times[0], first_five=sum(times[:5]))))


def cold_calls_ms(module: str, factory: str, names: list[str], calls: int = 5) -> dict:
    """{name: {"first": ms, "first_five": ms}}: the first call and the sum of the first five calls of every
    contender of `module.factory()` (a dict name -> zero-argument callable), each in its own fresh process, so
    nothing is warm: allocator pools, first-touch page faults, GEMM calibration, oneDNN primitives."""
    if _collected is not None:
        return {name: {"first": 1.0, "first_five": 5.0} for name in names}
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for name in names:
        code = f"from benchmarks.harness import _cold_child; _cold_child({module!r}, {factory!r}, {name!r}, {calls})"
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=900)
        line = next((l for l in done.stdout.splitlines() if l.startswith("COLD ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"cold-call run of {name!r} failed: {done.stderr[-2000:]}")
        out[name] = json.loads(line[5:])
    return out


def cold_table(name: str, title: str, cold: dict, steady_ms: dict, baseline: str) -> Table:
    """Cold calls beside the steady state: a user notices both."""
    table = Table(name=name, title=title, columns=[
        "contender", "first call ms", "first 5 calls ms", "steady median ms", "first / steady",
        f"first call vs {baseline}"])
    for contender, c in cold.items():
        steady = steady_ms[contender]
        table.rows.append([contender, c["first"], c["first_five"], steady, c["first"] / steady,
                           cold[baseline]["first"] / c["first"]])
    table.notes.append("Cold: every contender in a fresh process (inputs built untimed), so allocator pools, "
                       "first-touch page faults, GEMM calibration and library primitive caches start empty.")
    return table


@contextlib.contextmanager
def one_thread():
    """Runs the block with torch on one thread (model benchmarks: CPU time then reads as work done),
    restoring the previous thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
