"""Shared test helpers. The per-dtype tolerances are stated here, once, for the whole suite."""

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


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous layout (a transposed copy transposed back)."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)
