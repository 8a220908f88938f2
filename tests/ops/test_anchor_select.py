"""anchor_scores / anchor_select (STTS §3.3): every backend against the reference."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.ops.anchor_select import _anchor_gather
from vidsel.reference import anchor_select as reference

BACKENDS = cpu_backends()
FUSED = compiled_backends()
ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
FUSED_ON_DEVICES = fused_device_backends()

# (H, W, anchor, stride): G = 1 (anchor = map), 1x1 anchors, non-square, stride leaving a border,
# stride larger than the anchor (uncovered pixels), a 1-pixel-wide map.
GEOMETRIES = [
    (5, 7, (3, 2), (2, 1)),
    (4, 4, (4, 4), None),
    (3, 5, (1, 1), None),
    (7, 6, (2, 3), (3, 4)),
    (1, 9, (1, 4), 2),
    (6, 6, (3, 3), 1),
]


def _inputs(height, width, batch=2, frames=3, dim=5, dtype=torch.float32):
    x = torch.randn(batch, frames, height, width, dim).to(dtype)
    scores = torch.rand(batch, frames, height, width).to(dtype)
    return x, scores


def _grid(height, width, anchor, stride):
    ah, aw = anchor
    sh, sw = (1, 1) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    rows, cols = reference.anchor_grid(height, width, ah, aw, sh, sw)
    return (ah, aw, sh, sw), rows * cols


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_anchor_scores_and_hard_select_equal_reference(device, impl, geometry):
    height, width, anchor, stride = geometry
    x, scores = _inputs(height, width)
    x.requires_grad_()
    scores_grad = torch.randn(2, 3, _grid(height, width, anchor, stride)[1])
    out_grad = torch.randn(2, 3, *anchor, 5)
    results = {}
    for name in ("reference", impl):
        s = scores.clone().requires_grad_()
        means = ops.anchor_scores(s, anchor, stride, impl=name)
        (grad_scores,) = torch.autograd.grad(means, s, scores_grad)
        selected = ops.anchor_select(x, scores, anchor, stride, impl=name)
        (grad_x,) = torch.autograd.grad(selected, x, out_grad)
        results[name] = (means, grad_scores, selected, grad_x)
    expected, got = results["reference"], results[impl]
    assert torch.equal(got[0], expected[0])  # float64 sums: bit-identical anchor means
    assert_close(got[1], expected[1])
    assert torch.equal(got[2], expected[2])  # the hard window is a copy
    assert torch.equal(got[3], expected[3])


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
def test_anchor_gather_dtypes_non_contiguous(device, impl, dtype):
    (ah, aw, sh, sw), count = _grid(6, 7, (3, 4), (2, 1))
    x = non_contiguous(torch.randn(4, 6, 7, 19).to(dtype)).requires_grad_()
    weights = torch.rand(4, count).to(dtype)
    weights[0, 1] = 0.0  # zero weights are skipped by the kernels
    weights.requires_grad_()
    grad = torch.randn(4, ah, aw, 19).to(dtype)
    results = {}
    for name in ("reference", impl):
        out = _anchor_gather(x, weights, ah, aw, sh, sw, name)
        results[name] = (out, *torch.autograd.grad(out, (x, weights), grad))
    # fp32-accumulated sums of up to `count` terms (and the weight gradient of 3*4*19 products)
    for e, g, scale in zip(results["reference"], results[impl], (count, count, 4 * 19)):
        assert_close(g, e, scale=scale if dtype in (torch.float32, torch.float64) else 1.0)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_hard_semantics(device, impl):
    """A hot 2x2 patch at rows 3-4, cols 1-2: the 2x2 anchor there wins; ties go to the first anchor."""
    x = torch.randn(1, 2, 6, 5, 3)
    scores = torch.zeros(1, 2, 6, 5)
    scores[0, 0, 3:5, 1:3] = 1.0
    out = ops.anchor_select(x, scores, 2, impl=impl)
    assert torch.equal(out[0, 0], x[0, 0, 3:5, 1:3])
    assert torch.equal(out[0, 1], x[0, 1, 0:2, 0:2])  # all-equal scores: anchor 0
    out = ops.anchor_select(x, scores, (2, 2), stride=2, impl=impl)  # anchors at rows 0, 2, 4
    assert torch.equal(out[0, 0], x[0, 0, 2:4, 0:2])  # first of the two anchors tied at mean 0.5


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck(device, impl):
    x = torch.randn(1, 2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    (ah, aw, sh, sw), count = _grid(5, 4, (3, 2), (1, 2))
    weights = torch.rand(2, count, dtype=torch.float64, requires_grad=True)
    flat_x = x.detach().view(2, 5, 4, 3).requires_grad_()
    means = lambda s: ops.anchor_scores(s, (3, 2), (1, 2), impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(means, (scores,), fast_mode=True)
    assert torch.autograd.gradgradcheck(means, (scores,), fast_mode=True)
    gather = lambda a, w: _anchor_gather(a, w, ah, aw, sh, sw, impl)  # noqa: E731
    assert torch.autograd.gradcheck(gather, (flat_x, weights), fast_mode=True)
    hard = lambda a: ops.anchor_select(a, scores.detach(), (3, 2), (1, 2), impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(hard, (x,), fast_mode=True)
    perturbed = lambda a: ops.anchor_select(  # noqa: E731
        a, scores.detach(), (3, 2), (1, 2), mode="perturbed", num_samples=20, seed=7, impl=impl)
    assert torch.autograd.gradcheck(perturbed, (x,), fast_mode=True)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
def test_perturbed_equals_reference_estimator(device, impl):
    """Same seed, same Philox noise: forward and both gradients match the reference (STTS eq. 7-8)."""
    x, scores = _inputs(6, 5, dtype=torch.float64)
    grad = torch.randn(2, 3, 3, 2, 5, dtype=torch.float64)
    results = {}
    for name in ("reference", impl):
        xs, ss = x.clone().requires_grad_(), scores.clone().requires_grad_()
        out = ops.anchor_select(xs, ss, (3, 2), (1, 2), mode="perturbed", num_samples=16, sigma=0.2, seed=11,
                                impl=name)
        results[name] = (out, *torch.autograd.grad(out, (xs, ss), grad))
    for e, g in zip(results["reference"], results[impl]):
        assert_close(g, e, scale=10.0)
    assert results["reference"][2].abs().sum() > 0  # the scorer does receive a gradient


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_sigma_zero_is_hard(device, impl):
    x, scores = _inputs(5, 6)
    hard = ops.anchor_select(x, scores, (2, 3), 1, impl=impl)
    soft = ops.anchor_select(x, scores, (2, 3), 1, mode="perturbed", sigma=0.0, num_samples=3, seed=0, impl=impl)
    assert_close(soft, hard)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    scores = torch.rand(3, 6, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.vidsel.anchor_scores.default, (scores, 3, 2, 2, 1, impl))
    (ah, aw, sh, sw), count = _grid(6, 5, (3, 2), (2, 1))
    grad_means = torch.randn(3, count, requires_grad=True)
    torch.library.opcheck(torch.ops.vidsel.anchor_scores_backward.default, (grad_means, 6, 5, 3, 2, 2, 1, impl))
    x = torch.randn(3, 6, 5, 4, requires_grad=True)
    weights = torch.rand(3, count, requires_grad=True)
    torch.library.opcheck(torch.ops.vidsel.anchor_gather.default, (x, weights, 3, 2, 2, 1, impl))
    grad = torch.randn(3, 3, 2, 4)
    for need_x, need_w in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.vidsel.anchor_gather_backward.default,
                              (grad, x.detach(), weights.detach(), 2, 1, need_x, need_w, impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("mode", ["hard", "perturbed"])
def test_compile_fullgraph_matches_eager(device, impl, mode):
    def layer(x, scores):
        return ops.anchor_select(x * 2, scores, (2, 3), 2, mode=mode, num_samples=10, seed=5, impl=impl)

    x, scores = _inputs(5, 7)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    assert_close(compiled(x, scores), layer(x, scores))


def test_flop_counter():
    x, scores = _inputs(6, 6, batch=1, frames=2, dim=4)
    with FlopCounterMode(display=False) as counter:
        ops.anchor_select(x, scores, 3, 3, impl="reference")
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts["vidsel.anchor_gather"] == 2 * 2 * 4 * 3 * 3 * 4  # 2 frames x 4 anchors x 3x3 x D=4
    assert counts["vidsel.anchor_scores"] == 2 * 4 * (3 * 3 + 1)  # direct window sums + the division


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 5), ValueError,
         r"anchor=\(5, 5\) is larger"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), (2, 5)), ValueError,
         "anchor"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 0), ValueError, "anchor=0"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2, 0), ValueError,
         "stride=0 must be >= 1"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2, (1, -1)), ValueError,
         "stride"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2.5), TypeError, "anchor"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), (1, 2, 3)), ValueError,
         "anchor"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 5), 2), ValueError,
         "scores must have shape"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.randint(0, 2, (1, 2, 4, 4)), 2), TypeError,
         "scores must be a floating"),
        (lambda: ops.anchor_select(torch.randn(2, 4, 4, 3), torch.rand(2, 4, 4), 2), ValueError,
         "x must have 5 dimensions"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2, mode="soft"), ValueError,
         "mode must be one of"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2, mode="perturbed",
                                   sigma=-1.0), ValueError, "sigma"),
        (lambda: ops.anchor_select(torch.randn(1, 2, 4, 4, 3), torch.rand(1, 2, 4, 4), 2, mode="perturbed",
                                   num_samples=0), ValueError, "num_samples"),
        (lambda: ops.anchor_scores(torch.rand(4, 4), 2, 0), ValueError, "stride"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_nan_scores_rank_last(device, impl):
    x, scores = _inputs(4, 4)
    scores[0, 1] = 0.0
    scores[0, 1, 0, 0] = float("nan")  # poisons the top-left anchor only
    out = ops.anchor_select(x, scores, 2, impl=impl)
    assert torch.equal(out[0, 1], x[0, 1, :2, 1:3])


@pytest.mark.parametrize("impl", [b for b in FUSED if b == "cpu"])
def test_cpu_kernels_reject_bad_geometry(impl):
    with pytest.raises(RuntimeError, match="anchor"):
        torch.ops.vidsel_C.anchor_scores(torch.rand(2, 3, 3), 4, 1, 1, 1)
    with pytest.raises(RuntimeError, match="stride"):
        torch.ops.vidsel_C.anchor_gather(torch.rand(2, 3, 3, 2), torch.rand(2, 4), 2, 2, 0, 1)
    with pytest.raises(RuntimeError, match="G=4"):
        torch.ops.vidsel_C.anchor_gather(torch.rand(2, 3, 3, 2), torch.rand(2, 5), 2, 2, 1, 1)
