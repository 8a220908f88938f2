"""frame_select (STTS §3.3 temporal selection, eq. 9): hard and perturbed, every backend."""

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)

BACKENDS = cpu_backends()
FUSED = compiled_backends()
ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
FUSED_ON_DEVICES = fused_device_backends()

# (B, T, N, D, k): k=1, k=T, T=1, B=1, sizes off any block multiple.
CASES = [(2, 7, 5, 3, 3), (1, 4, 2, 9, 1), (3, 5, 3, 2, 5), (2, 1, 4, 4, 1)]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_hard_keeps_best_frames_in_order(device, impl, case):
    batch, frames, tokens, dim, k = case
    x = torch.randn(batch, frames, tokens, dim, requires_grad=True)
    scores = torch.randint(0, 3, (batch, frames)).float()  # ties: the earlier frame wins
    out = ops.frame_select(x, scores, k, impl=impl)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    chosen = torch.sort(order, dim=1).values
    expected = torch.stack([x[b, chosen[b]] for b in range(batch)])
    assert torch.equal(out, expected)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad.sum(dim=(2, 3)) != 0, torch.zeros_like(scores, dtype=torch.bool).scatter(1, chosen, True))


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_dtypes_non_contiguous(device, impl, dtype):
    x = non_contiguous(torch.randn(2, 6, 3, 5).to(dtype))
    scores = torch.randn(2, 6).to(dtype)
    assert torch.equal(ops.frame_select(x, scores, 4, impl=impl), ops.frame_select(x, scores, 4, impl="reference"))


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
def test_perturbed_equals_reference_estimator(device, impl):
    """Same seed: same indicators, so output and both gradients match the reference (STTS eq. 7-9)."""
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    scores = torch.rand(2, 6, dtype=torch.float64)
    grad = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    results = {}
    for name in ("reference", impl):
        xs, ss = x.clone().requires_grad_(), scores.clone().requires_grad_()
        out = ops.frame_select(xs, ss, 3, mode="perturbed", num_samples=40, sigma=0.3, seed=3, impl=name)
        results[name] = (out, *torch.autograd.grad(out, (xs, ss), grad))
    for e, g in zip(results["reference"], results[impl]):
        assert_close(g, e, scale=10.0)
    assert results["reference"][2].abs().sum() > 0


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_sigma_zero_is_hard_and_gradcheck(device, impl):
    x = torch.randn(2, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(2, 5, dtype=torch.float64)
    soft = ops.frame_select(x, scores, 2, mode="perturbed", sigma=0.0, num_samples=2, seed=0, impl=impl)
    assert_close(soft, ops.frame_select(x, scores, 2, impl=impl))
    perturbed = lambda a: ops.frame_select(a, scores, 2, mode="perturbed", num_samples=16, seed=1, impl=impl)  # noqa
    assert torch.autograd.gradcheck(perturbed, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a: ops.frame_select(a, scores, 2, impl=impl), (x,), fast_mode=True)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("mode", ["hard", "perturbed"])
def test_compile_fullgraph_matches_eager(device, impl, mode):
    def layer(x, scores):
        return ops.frame_select(x + 1, scores, 3, mode=mode, num_samples=8, seed=2, impl=impl)

    x, scores = torch.randn(2, 5, 3, 4), torch.rand(2, 5)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    assert_close(compiled(x, scores), layer(x, scores))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.rand(2, 4), 5), ValueError,
         r"k=5 must be in \[1, 4\]"),
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.rand(2, 4), 0), ValueError, "k=0"),
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.rand(2, 3), 1), ValueError, "scores must have shape"),
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.randint(0, 2, (2, 4)), 1), TypeError,
         "scores must be a floating"),
        (lambda: ops.frame_select(torch.randn(2, 4, 6), torch.rand(2, 4), 1), ValueError, "x must have 4 dimensions"),
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.rand(2, 4), 1, mode="x"), ValueError, "mode"),
        (lambda: ops.frame_select(torch.randn(2, 4, 3, 2), torch.rand(2, 4), 1, mode="perturbed", sigma=-0.5),
         ValueError, "sigma"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
