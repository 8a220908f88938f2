"""Shared test helpers. The per-dtype tolerances are stated here, once, for the whole suite."""

import pytest
import torch

import vidsel  # noqa: F401
from vidsel import _backends

TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-7),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0):
    """assert_close with the suite's tolerance for `dtype` (default: expected's), optionally scaled."""
    tol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def cpu_backends(supported=("reference", "cpu", "triton", "cuda")) -> list[str]:
    """Every backend of an op that can run on CPU tensors here (triton only under the interpreter)."""
    return _backends.available_impls("cpu", supported)


def compiled_backends(supported=("cpu", "triton", "cuda")) -> list[str]:
    """The non-reference backends runnable here: each is compared with the reference."""
    return [b for b in cpu_backends(supported) if b != "reference"]


GPU_BACKENDS = ("reference", "cuda", "triton")  # what can run on CUDA tensors


def _cuda_unusable_reason(impl: str) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _backends._unusable_reason(impl, torch.device("cuda"))


def device_backends(supported=("reference", "cpu", "triton", "cuda"), reference: bool = True) -> list:
    """pytest params `(device, impl)` for a backend test: every backend of the op that runs on CPU tensors
    here, then each GPU backend (cuda, compiled triton; the reference too when `reference`) on CUDA tensors.

    The CUDA pairs are always collected and reported as skipped, with the reason, where no CUDA device or
    build exists. A test parametrised with these builds its tensors on `device` (the `tensors_on_device`
    fixture in tests/conftest.py makes it the factories' default device), so its body is the same for both.
    """
    params = [pytest.param("cpu", impl, id=f"cpu-{impl}")
              for impl in cpu_backends(supported) if reference or impl != "reference"]
    for impl in GPU_BACKENDS:
        if impl not in supported or (impl == "reference" and not reference):
            continue
        reason = _cuda_unusable_reason(impl)
        mark = pytest.mark.skipif(reason is not None, reason=f"cuda tensors: {reason}")
        params.append(pytest.param("cuda", impl, id=f"cuda-{impl}", marks=mark))
    return params


def fused_device_backends(supported=("cpu", "triton", "cuda")) -> list:
    """device_backends without the reference: the pairs that are compared with the reference."""
    return device_backends(supported, reference=False)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous layout (a transposed copy transposed back)."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)
