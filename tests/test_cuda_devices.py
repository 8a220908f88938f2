"""Every op on CUDA tensors, each GPU backend (cuda, compiled triton) against the reference on CPU.

Runs when a CUDA device exists (so `make test` / `make gpu-check` on a GPU machine check the real
kernels, fp16 / bf16 included); here every case is collected and reported as skipped. Inputs are drawn
once in float32 on the CPU and cast; the reference runs in float32 on the cast values, and the GPU
result must agree within the suite's tolerance for the input dtype (tests/helpers.py).
"""

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import TOLERANCES
from vidsel import _backends

DEVICE = "cuda"  # the tests below run their GPU side here
GPU_IMPLS = ("cuda", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cases():
    for impl in GPU_IMPLS:
        for dtype in DTYPES:
            reason = _backends._unusable_reason(impl, torch.device("cuda")) if torch.cuda.is_available() else \
                "no CUDA device"
            marks = [pytest.mark.skipif(reason is not None, reason=f"cuda tensors: {reason}")]
            yield pytest.param(impl, dtype, marks=marks, id=f"cuda-{impl}-{str(dtype).removeprefix('torch.')}")


CASES = list(_cases())


def _leaves(tensors, device, dtype):
    return [t.to(device=device, dtype=dtype).requires_grad_(t.is_floating_point()) for t in tensors]


def _compare(op, inputs, impl, dtype, grad_seed=0, scale=1.0):
    """op(impl, *tensors) -> tensor; forward and input gradients on cuda vs the CPU reference."""
    reference_inputs = [t.to(dtype).to(torch.float32) for t in inputs]
    expected_leaves = _leaves(reference_inputs, "cpu", torch.float32)
    expected = op("reference", *expected_leaves)
    actual_leaves = _leaves(inputs, DEVICE, dtype)
    actual = op(impl, *actual_leaves)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected, atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)
    if not expected.requires_grad:
        return
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(grad_seed)).to(dtype)
    expected_grads = torch.autograd.grad(expected, expected_leaves, grad.float(), allow_unused=True)
    actual_grads = torch.autograd.grad(actual, actual_leaves, grad.to(DEVICE), allow_unused=True)
    for got, want in zip(actual_grads, expected_grads):
        if want is not None:
            torch.testing.assert_close(got.float().cpu(), want, atol=tol["atol"] * 4 * scale,
                                       rtol=tol["rtol"] * 4 * scale)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_chunk_attention(impl, dtype):
    q, k, v = (torch.randn(2, 3, 37, 32) for _ in range(3))
    _compare(lambda i, q, k, v: ops.chunk_causal_attention(q, k, v, chunk_size=8, impl=i), (q, k, v), impl, dtype,
             scale=4.0)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_token_merging(impl, dtype):
    metric, x = torch.randn(2, 45, 16), torch.randn(2, 45, 24)
    matching = ops.bipartite_match(metric, 11, impl="reference")
    gpu_matching = ops.bipartite_match(metric.to(DEVICE, dtype), 11, impl=impl)
    if dtype == torch.float32:
        assert torch.equal(gpu_matching.dst_index.cpu(), matching.dst_index)
    _compare(lambda i, x: ops.merge(x, matching if i == "reference" else matching._replace(
        **{f: getattr(matching, f).to(DEVICE) for f in matching._fields}), impl=i)[0], (x,), impl, dtype)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_topk_gather(impl, dtype):
    x, scores = torch.randn(3, 29, 20), torch.randn(3, 29)
    _compare(lambda i, x, s: ops.topk_gather(x, s.detach(), 7, impl=i)[0], (x, scores), impl, dtype)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_perturbed_topk(impl, dtype):
    scores = torch.randn(3, 41)
    _compare(lambda i, s: ops.perturbed_topk(s, 6, num_samples=64, sigma=0.2, seed=7, impl=i), (scores,), impl,
             dtype, scale=4.0)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_gumbel_topk(impl, dtype):
    logits = torch.randn(3, 33)
    _compare(lambda i, l: ops.gumbel_topk(l, 4, tau=0.5, hard=False, seed=3, impl=i), (logits,), impl, dtype,
             scale=4.0)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_anchor_select(impl, dtype):
    x, scores = torch.randn(2, 3, 9, 11, 12), torch.randn(2, 3, 9, 11)
    _compare(lambda i, x, s: ops.anchor_select(x, s, (4, 5), mode="perturbed", num_samples=32, seed=5, impl=i),
             (x, scores), impl, dtype, scale=4.0)


@pytest.mark.parametrize("impl,dtype", CASES)
def test_compressed_patch_embed(impl, dtype):
    from vidsel.nn import CompressedPatchEmbed

    params = CompressedPatchEmbed(24, patch=8, num_frames=2, size=16, motion_block=8).params()
    inputs = (torch.randn(2, 2, 3, 16, 16), torch.randn(2, 2, 2, 2, 2), torch.randn(2, 2, 3, 16, 16),
              torch.randn(2, 2, 128), *(p.detach() for p in params))

    def embed(i, iframe, motion, residual, audio, *weights):
        return ops.compressed_patch_embed(iframe, motion, residual, audio, ops.CompressedEmbedParams(*weights),
                                          patch=8, impl=i)[0]

    _compare(embed, inputs, impl, dtype, scale=8.0)
