"""pytest-benchmark cases: ``pytest benchmarks/ --benchmark-only`` times every op benchmark's contenders.

The contenders are the very callables `make bench` times: each op benchmark passes them through
`benchmarks.harness.expose`, and collection runs its ``run("quick")`` inside `harness.collecting()`
(contenders built, timing skipped). So regression tracking across commits works with
``--benchmark-autosave`` and ``pytest-benchmark compare``; one group per benchmark case.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil

import benchmarks
from benchmarks import harness


def exposing_modules() -> list[str]:
    """The benchmark modules that publish contenders (the op benchmarks)."""
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    folder = os.path.dirname(benchmarks.__file__)
    return [name for name in names if "expose(" in open(os.path.join(folder, f"{name}.py")).read()]


def _broken(error: Exception):
    def fail():
        raise error

    return fail


@functools.cache
def collected_contenders() -> tuple:
    """(case, contender name, callable, context) of every exposing module, in module order. A module
    whose setup fails becomes one case that raises its error (the other modules still run)."""
    found = []
    for name in exposing_modules():
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            with harness.collecting() as cases:
                module.run("quick")
            if not cases:
                raise RuntimeError(f"benchmarks.{name} calls expose() but exposed no contenders")
        except Exception as error:  # reported by its own case, not by aborting the collection
            found.append((name, "setup", _broken(error), None))
            continue
        found += [(case, contender, fn, context) for case, (fns, context) in cases.items() for contender, fn in fns.items()]
    return tuple(found)


def pytest_generate_tests(metafunc):
    if "contender" in metafunc.fixturenames:
        cases = collected_contenders()
        metafunc.parametrize("contender", cases, ids=[f"{case}::{name}" for case, name, _, _ in cases])


def test_contender(benchmark, contender):
    case, _, fn, context = contender
    benchmark.group = case
    with context() if context is not None else contextlib.nullcontext():
        benchmark(fn)


def test_every_op_benchmark_exposes_its_contenders():
    modules = exposing_modules()
    expected = {"bench_anchor_select", "bench_chunk_attention", "bench_compressed_patch_embed",
                "bench_perturbed_topk", "bench_token_merging", "bench_topk_gather"}
    assert expected <= set(modules)


def test_collecting_records_without_timing():
    calls = []
    contenders = {"a": lambda: calls.append(1)}
    assert harness.expose("case", contenders) is contenders and harness._collected is None
    with harness.collecting() as cases:
        assert harness.expose("case", contenders) is contenders
        assert harness.median_ms(contenders["a"]) == 1.0 and harness.interleaved_median_ms(contenders, 3) == {"a": 1.0}
    assert calls == [] and set(cases) == {"case"} and harness._collected is None
