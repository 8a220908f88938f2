"""Test-wide setup: Triton interpreter on CPU tensors, NaN-filled fresh memory, backend lists."""

import os

import torch  # noqa: E402  (torch does not import triton; the interpreter flag below is read by triton.jit)

# Must precede any triton import. Without a GPU the Triton kernels run under the interpreter on CPU
# tensors; on a GPU machine they are compiled and the tests run them on CUDA tensors
# (`device_backends` in tests/helpers.py), unless TRITON_INTERPRET is set explicitly.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
# C++ kernels fill their fresh outputs with NaN (or -1 for indices) so unwritten elements fail tests.
os.environ.setdefault("VIDSEL_DEBUG_FILL", "1")

import pytest  # noqa: E402

_empty, _empty_like, _new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

# `with torch.device(d)` recognises factories by identity, from a set it caches on first use: build it now,
# while torch.empty is still torch's own, so the NaN-filling wrappers below do not hide the factories.
with torch.device("meta"):
    torch.empty(0)


def _nan_filled(tensor):
    if tensor.is_floating_point() and tensor.device.type != "meta" and not isinstance(
        tensor, torch._subclasses.FakeTensor
    ):
        tensor.fill_(float("nan"))
    return tensor


def _empty_nan(*args, **kwargs):
    return _nan_filled(_empty(*args, **kwargs))


def _empty_like_nan(*args, **kwargs):
    return _nan_filled(_empty_like(*args, **kwargs))


def _new_empty_nan(self, *args, **kwargs):
    return _nan_filled(_new_empty(self, *args, **kwargs))


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """torch.empty & co. return NaN-filled tensors in tests (Python launchers allocate with them)."""
    if torch.compiler.is_compiling():
        return
    monkeypatch.setattr(torch, "empty", _empty_nan)
    monkeypatch.setattr(torch, "empty_like", _empty_like_nan)
    monkeypatch.setattr(torch.Tensor, "new_empty", _new_empty_nan)


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def tensors_on_device(request):
    """Tests parametrised over `device` (tests/helpers.py device_backends) create their tensors there."""
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec is not None else None
    if device is None or device == "cpu":
        yield
        return
    with torch.device(device):
        yield


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models: a second, contended thread only adds waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
