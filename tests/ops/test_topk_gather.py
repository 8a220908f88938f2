"""topk_gather: hard top-k fused with the row gather, every backend against the reference."""

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.reference import topk_gather as reference

BACKENDS = cpu_backends()
FUSED = compiled_backends()
ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
FUSED_ON_DEVICES = fused_device_backends()

# (group shape, N, D, k): N=1, k=1, k=N, N and D not multiples of any block, one group, no group dims,
# N larger than one rank tile (64) so the tiled count crosses tiles.
CASES = [
    ((2, 3), 17, 5, 6),
    ((1,), 1, 3, 1),
    ((4,), 9, 1, 9),
    ((3,), 130, 7, 1),
    ((2,), 130, 33, 77),
    ((), 11, 4, 5),
]


def _scores_with_ties(shape, dtype=torch.float32):
    """Random scores quantised to a few levels so ties are everywhere (ties go to the lower index)."""
    return (torch.randint(0, 5, shape) / 4.0).to(dtype)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("sorted_by_index", [True, False])
def test_equal_reference_with_ties(device, impl, case, sorted_by_index):
    groups, n, d, k = case
    x = torch.randn(*groups, n, d)
    scores = _scores_with_ties((*groups, n))
    expected = ops.topk_gather(x, scores, k, sorted_by_index=sorted_by_index, impl="reference")
    got = ops.topk_gather(x, scores, k, sorted_by_index=sorted_by_index, impl=impl)
    assert torch.equal(got[1], expected[1])
    assert torch.equal(got[0], expected[0])  # a copy: bit-exact


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
def test_dtypes_non_contiguous_and_backward(device, impl, dtype):
    x = non_contiguous(torch.randn(3, 37, 20).to(dtype)).requires_grad_()
    scores = non_contiguous(torch.randn(3, 37).to(dtype))
    grad = torch.randn(3, 12, 20).to(dtype)
    outs = {}
    for name in ("reference", impl):
        selected, index = ops.topk_gather(x, scores, 12, sorted_by_index=False, impl=name)
        (grad_x,) = torch.autograd.grad(selected, x, grad)
        outs[name] = (selected, index, grad_x)
    for e, g in zip(outs["reference"], outs[impl]):
        assert torch.equal(e, g)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
def test_infinite_scores_mask_tokens(device, impl):
    scores = torch.randn(3, 10)
    scores[:, ::3] = float("-inf")
    scores[1, 5] = float("inf")
    x = torch.randn(3, 10, 4)
    expected = ops.topk_gather(x, scores, 8, impl="reference")  # 2 of the 4 masked tokens must fill up
    got = ops.topk_gather(x, scores, 8, impl=impl)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


@pytest.mark.parametrize("impl", [b for b in FUSED if b == "cpu"])
def test_large_outputs_streaming_path(impl):
    """Outputs over 4 MiB take the streaming-store path; D=1001 makes rows start off 32-byte boundaries."""
    x = torch.randn(3, 700, 1001, requires_grad=True)
    scores = torch.randn(3, 700)
    grad = torch.randn(3, 450, 1001)
    outs = []
    for name in ("reference", impl):
        selected, index = ops.topk_gather(x, scores, 450, impl=name)
        outs.append((selected, index, *torch.autograd.grad(selected, x, grad)))
    for e, g in zip(*outs):
        assert torch.equal(e, g)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_semantics(device, impl):
    """Hand-checkable: top-3 of [1, 3, 3, 0, 3] is positions 1, 2, 4 (ties: lower first)."""
    x = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    selected, index = ops.topk_gather(x, scores, 2, impl=impl)
    assert index.tolist() == [[1, 2]]
    selected, index = ops.topk_gather(x, -scores, 2, sorted_by_index=False, impl=impl)
    assert index.tolist() == [[3, 0]]
    assert selected[0, :, 0].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck(device, impl):
    x = torch.randn(2, 3, 9, 4, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(2, 3, 9, dtype=torch.float64)
    select = lambda a: ops.topk_gather(a, scores, 4, impl=impl)[0]  # noqa: E731
    assert torch.autograd.gradcheck(select, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(select, (x,), fast_mode=True)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_scores_get_no_gradient(device, impl):
    x = torch.randn(2, 6, 3, requires_grad=True)
    scores = torch.randn(2, 6, requires_grad=True)
    selected, _ = ops.topk_gather(x, scores, 2, impl=impl)
    selected.sum().backward()
    assert scores.grad is None
    assert x.grad.sum().item() == pytest.approx(2 * 2 * 3)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    x = torch.randn(3, 11, 6, requires_grad=True)
    scores = torch.randn(3, 11)
    for sorted_by_index in (True, False):
        torch.library.opcheck(torch.ops.vidsel.topk_gather.default, (x, scores, 4, sorted_by_index, impl))
    index = reference.topk_indices(scores, 4, True)
    grad = torch.randn(3, 4, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.vidsel.topk_gather_backward.default, (grad, index, 11, impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_compile_fullgraph_matches_eager(device, impl):
    def layer(x, scores):
        selected, index = ops.topk_gather(x * 2, scores, 5, impl=impl)
        return selected.sum(-1), index

    x, scores = torch.randn(2, 3, 13, 8), torch.randn(2, 3, 13)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    got, expected = compiled(x, scores), layer(x, scores)
    assert_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 5), 6), ValueError, r"k=6 must be in \[1, 5\]"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 5), 0), ValueError, "k=0"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 5), 2.0), TypeError, "k must be an int"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 4), 2), ValueError, "scores must have shape"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randint(0, 3, (2, 5)), 2), TypeError,
         "scores must be a floating"),
        (lambda: ops.topk_gather(torch.randint(0, 3, (2, 5, 3)), torch.randn(2, 5), 2), TypeError,
         "x must be a floating"),
        (lambda: ops.topk_gather(torch.randn(5), torch.randn(5), 2), ValueError, "x must have shape"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), [0.0] * 5, 2), TypeError, "scores must be a torch.Tensor"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 5), 2, sorted_by_index=1), TypeError,
         "sorted_by_index"),
        (lambda: ops.topk_gather(torch.randn(2, 5, 3), torch.randn(2, 5), 2, impl="gpu"), ValueError, "impl"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_nan_scores_rank_last(device, impl):
    scores = torch.randn(1, 8)
    scores[0, 3] = float("nan")
    _, index = ops.topk_gather(torch.randn(1, 8, 2), scores, 7, impl=impl)
    assert 3 not in index.tolist()[0]


@pytest.mark.parametrize("impl", [b for b in FUSED if b == "cpu"])
def test_cpu_kernels_reject_bad_arguments(impl):
    with pytest.raises(RuntimeError, match="index"):
        torch.ops.vidsel_C.topk_gather_backward(torch.randn(1, 2, 3), torch.tensor([[0, 5]]), 4)
    with pytest.raises(RuntimeError, match="k=7"):
        torch.ops.vidsel_C.topk_gather(torch.randn(1, 4, 3), torch.randn(1, 4), 7, True)
