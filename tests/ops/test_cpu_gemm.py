"""The CPU kernels' runtime GEMM choice: each path is exact to float32 tolerance, every matrix-multiplying
CPU kernel stays within tolerance whichever path is forced, and the choice is reported and forceable."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import assert_close
from tests.ops.test_compressed_patch_embed import as_list, make_case, run
from vidsel import _backends
from vidsel.reference import perturbed_topk as perturbed_reference

pytestmark = pytest.mark.skipif(
    "cpu" not in _backends.available_impls("cpu") or not hasattr(torch.ops.vidsel_C, "cpu_gemm_report"),
    reason="needs the C++ CPU extension with the runtime GEMM choice",
)

SHAPE_CLASSES = ("attention_tile", "patch_projection", "patch_gradient", "similarity", "indicator")


def _paths() -> list[str]:
    with_avx512 = "avx512 (vidsel GEMM" in _backends.cpu_features()
    return ["vidsel", "blas"] if with_avx512 else ["blas"]


PATHS = _paths()


@contextlib.contextmanager
def forced(mode: str):
    previous = _backends.set_cpu_gemm_mode(mode)
    try:
        yield
    finally:
        _backends.set_cpu_gemm_mode(previous)


# (m, n, k, trans_a, trans_b, beta): ragged edges of every register tile, k = 0, k past one depth block.
GEMM_CASES = [
    (1, 1, 1, False, False, 0.0),
    (7, 17, 5, False, True, 1.0),
    (13, 65, 130, True, False, 1.0),
    (6, 64, 129, True, True, 0.0),
    (33, 100, 0, False, False, 0.0),
    (33, 100, 0, False, True, 1.0),
    (96, 250, 64, False, False, 1.0),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", GEMM_CASES, ids=str)
def test_each_path_computes_the_product(path, case):
    m, n, k, trans_a, trans_b, beta = case
    gen = torch.Generator().manual_seed(m * 31 + n + k)
    a = torch.randn((k, m) if trans_a else (m, k), generator=gen)
    b = torch.randn((n, k) if trans_b else (k, n), generator=gen)
    c = torch.randn(m, n, generator=gen)
    got = torch.ops.vidsel_C.cpu_gemm_on_path(a, b, c, trans_a, trans_b, beta, path)
    op_a, op_b = (a.t() if trans_a else a).double(), (b.t() if trans_b else b).double()
    expected = 1.5 * op_a @ op_b + beta * c.double()
    assert_close(got, expected.float(), torch.float32, scale=max(1, k) ** 0.5)


@pytest.mark.parametrize("path", PATHS)
def test_chunk_attention_on_each_path(path):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 64, generator=gen, requires_grad=True) for _ in range(3))
    expected = ops.chunk_causal_attention(q, k, v, chunk_size=75, impl="reference")
    grads_expected = torch.autograd.grad(expected.square().sum(), (q, k, v))
    with forced(path):
        got = ops.chunk_causal_attention(q, k, v, chunk_size=75, impl="cpu")
        grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    assert_close(got, expected, torch.float32)
    for g, e in zip(grads, grads_expected):
        assert_close(g, e, torch.float32, scale=10)


@pytest.mark.parametrize("path", PATHS)
def test_compressed_embed_on_each_path(path):
    inputs, params = make_case(height=32, width=32, patch=8, block=4, dim=40)
    leaves = [t.requires_grad_() for t in [*inputs[:3], params.iframe_weight]]
    expected = as_list(run(inputs, params, "reference"))
    grads_expected = torch.autograd.grad(sum(t.square().sum() for t in expected), leaves)
    with forced(path):
        got = as_list(run(inputs, params, "cpu"))
        grads = torch.autograd.grad(sum(t.square().sum() for t in got), leaves)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, torch.float32, scale=10)
    for g, e in zip(grads, grads_expected, strict=True):
        assert_close(g, e, torch.float32, scale=30)


@pytest.mark.parametrize("path", PATHS)
def test_bipartite_match_on_each_path(path):
    metric = torch.randn(3, 197, 64, generator=torch.Generator().manual_seed(1))
    expected = ops.bipartite_match(metric, 40, protected=1, impl="reference")
    with forced(path):
        got = ops.bipartite_match(metric, 40, protected=1, impl="cpu")
    for name, e, g in zip(expected._fields, expected, got):
        assert torch.equal(e, g), name


@pytest.mark.parametrize("path", PATHS)
def test_dense_indicator_products_on_each_path(path):
    gen = torch.Generator().manual_seed(2)
    indicators = torch.rand(2, 9, 70, generator=gen)  # dense: a perturbed top-k average
    x = torch.randn(2, 70, 300, generator=gen, requires_grad=True)
    expected = perturbed_reference.indicator_matmul(indicators, x)
    grad_expected = torch.autograd.grad(expected.square().sum(), x)[0]
    with forced(path):
        got = torch.ops.vidsel.indicator_matmul(indicators, x, "cpu")
        grad = torch.autograd.grad(got.square().sum(), x)[0]
    assert_close(got, expected, torch.float32, scale=10)
    assert_close(grad, grad_expected, torch.float32, scale=10)


def test_report_names_every_shape_class_and_is_stable():
    first = _backends.cpu_gemm_report()
    assert [line.split(":")[0] for line in first] == [*SHAPE_CLASSES, "calibration"]
    if "vidsel" in PATHS:  # every class was timed on both paths (none left to a default)
        assert all("vidsel " in line and "blas " in line and " ms" in line for line in first[:-1]), first
    assert _backends.cpu_gemm_report() == first  # calibrated once per process
    assert set(_backends.cpu_gemm_paths().values()) <= {"vidsel", "blas"}
    with forced("blas"):
        assert set(_backends.cpu_gemm_paths().values()) == {"blas"}


def _in_subprocess(code: str, mode: str, **env_vars) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIDSEL_CPU_GEMM=mode, **env_vars)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize("mode", PATHS)
def test_environment_forces_the_path(mode):
    done = _in_subprocess("from vidsel import _backends; print(sorted(set(_backends.cpu_gemm_paths().values())))", mode)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([mode])


@pytest.mark.skipif("vidsel" not in PATHS, reason="without AVX-512 there is nothing to calibrate")
def test_choice_is_saved_per_machine_and_read_back(tmp_path):
    code = "from vidsel import _backends; print('\\n'.join(_backends.cpu_gemm_report()))"
    first = _in_subprocess(code, "auto", VIDSEL_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    files = list(tmp_path.glob("cpu_gemm-*.txt"))
    assert len(files) == 1 and "saved to" in first.stdout, first.stdout
    second = _in_subprocess(code, "auto", VIDSEL_CACHE_DIR=str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert "choice read from" in second.stdout
    paths = lambda out: [line.split("(")[0] for line in out.splitlines()[:-1]]  # noqa: E731
    assert paths(second.stdout) == paths(first.stdout)
    files[0].write_text("stale key\n")  # another machine's or a damaged file: calibrated again, rewritten
    third = _in_subprocess(code, "auto", VIDSEL_CACHE_DIR=str(tmp_path))
    assert third.returncode == 0 and "saved to" in third.stdout, third.stdout + third.stderr
    assert files[0].read_text().startswith("vidsel-cpu-gemm")


def test_bad_environment_value_is_rejected():
    code = "import torch, vidsel.ops as ops; ops.chunk_causal_attention(*[torch.randn(1, 1, 8, 4)] * 3, chunk_size=4, impl='cpu')"
    done = _in_subprocess(code, "fastest")
    assert done.returncode != 0 and "VIDSEL_CPU_GEMM" in done.stderr


def test_set_mode_rejects_unknown_names():
    with pytest.raises(ValueError, match="mode"):
        _backends.set_cpu_gemm_mode("mkl")
