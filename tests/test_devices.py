"""The device parametrisation of the backend tests: CUDA pairs are collected (skipped without a GPU) and a
test parametrised over `device` builds its tensors and modules there without naming it."""

import pytest
import torch

from tests.helpers import device_backends, fused_device_backends


def _pairs(params):
    return [tuple(p.values) for p in params]


def test_every_gpu_backend_is_collected_for_cuda_tensors():
    pairs = _pairs(device_backends(("reference", "cpu", "triton", "cuda")))
    assert {("cuda", "reference"), ("cuda", "triton"), ("cuda", "cuda")} <= set(pairs)
    assert ("cuda", "cpu") not in pairs and ("cpu", "reference") in pairs


def test_fused_pairs_leave_out_the_reference():
    pairs = _pairs(fused_device_backends(("reference", "cpu", "triton")))
    assert all(impl != "reference" for _, impl in pairs)
    assert ("cuda", "triton") in pairs and ("cuda", "cuda") not in pairs


def test_cuda_pairs_are_skipped_with_a_reason_without_a_gpu():
    cuda = [p for p in device_backends() if p.values[0] == "cuda"]
    skipped = [m for p in cuda for m in p.marks if m.name == "skipif" and m.args[0]]
    if torch.cuda.is_available():
        assert len(skipped) < len(cuda)
    else:
        assert len(skipped) == len(cuda) and all("cuda tensors:" in m.kwargs["reason"] for m in skipped)


@pytest.mark.parametrize("device", ["meta"])
def test_tensors_and_modules_land_on_the_parametrised_device(device):
    assert torch.randn(2).device.type == device
    assert torch.nn.Linear(3, 4).weight.device.type == device
