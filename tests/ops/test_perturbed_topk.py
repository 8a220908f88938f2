"""perturbed_topk / perturbed_topk_select (STTS §3.2 eq. 7-9) and the shared Philox stream.

About gradients: given the seed, the forward is top-k of s + sigma Z_s averaged over samples — a
piecewise-constant function of the scores, whose finite differences are zero almost everywhere.
gradcheck against finite differences is therefore only meaningful for the smooth part (the
selection wrt x, a linear map given the indicators). The scores gradient is the perturbed-maximum
*estimator* of eq. 8, E[Y Z^T] / sigma, and is tested against that formula evaluated with the very
same noise, written independently here in the STTS-repository shape ((B, n, k, L) one-hots, einsum).
"""

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.ops._dispatch import supported
from vidsel.ops.perturbed_topk import (
    INDICATOR_MATMUL,
    INDICATOR_MATMUL_BACKWARD,
    PERTURBED_TOPK,
    PERTURBED_TOPK_BACKWARD,
    _indicator_matmul,
    _indicator_matmul_backward,
    _perturbed_topk,
    _perturbed_topk_backward,
)
from vidsel.reference import philox

SUPPORTED_IMPLS = supported(PERTURBED_TOPK, PERTURBED_TOPK_BACKWARD, INDICATOR_MATMUL, INDICATOR_MATMUL_BACKWARD)
BACKENDS = cpu_backends(SUPPORTED_IMPLS)
COMPILED = compiled_backends(SUPPORTED_IMPLS)
ON_DEVICES = device_backends(SUPPORTED_IMPLS)  # (device, impl): CPU tensors here, CUDA on a GPU machine
COMPILED_ON_DEVICES = fused_device_backends(SUPPORTED_IMPLS)
# (B, L, k): L = 1, k = 1, k = L, L not a multiple of any block (13, 70), B = 1
SHAPES = [(1, 1, 1), (3, 13, 4), (2, 70, 70), (1, 70, 1), (2, 9, 8)]
SAMPLES = 6


def _estimator(scores, grad, k, n, sigma, seed):
    """Eq. 8 with the STTS-repo shapes: one-hots (B, n, k, L), E[Y Z^T]/sigma, contracted with grad."""
    noise = philox.normal(seed, scores.shape[0], n, scores.shape[1], philox.STREAM_PERTURBED_TOPK)
    values = scores.double()[:, None, :] + sigma * noise
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    one_hot = torch.nn.functional.one_hot(order.sort(-1).values, scores.shape[1]).double()
    jacobian = torch.einsum("bnkd,bne->bkde", one_hot, noise) / (n * sigma)
    return one_hot.mean(1), torch.einsum("bkd,bkde->be", grad.double(), jacobian)


def test_philox_matches_random123_known_answers():
    vectors = [  # Random123 kat_vectors, philox4x32_10: counter, key -> words
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, expected in vectors:
        words = philox.philox4x32(tuple(torch.tensor([c]) for c in counter), key)
        assert [int(w) for w in words] == list(expected)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_stream_is_identical_in_every_backend(kind):
    seed, shape = 2**40 + 17, (2, 3, 11)
    expected = (philox.uniform, philox.normal, philox.gumbel)[kind](seed, *shape, philox.STREAM_PERTURBED_TOPK)
    streams = {}
    if "cpu" in BACKENDS:
        streams["cpu"] = torch.ops.vidsel_C.philox_noise(torch.empty(0), seed, *shape, philox.STREAM_PERTURBED_TOPK, kind)
    if "triton" in BACKENDS:
        from vidsel.kernels.philox import philox_noise

        streams["triton"] = philox_noise(seed, *shape, philox.STREAM_PERTURBED_TOPK, kind)
    assert streams, "no compiled backend to compare"
    for name, values in streams.items():
        if kind == 0:  # integer words and an exact affine map: bit-identical
            assert torch.equal(values, expected), name
        else:  # float64 transcendentals may differ by an ulp
            torch.testing.assert_close(values, expected, atol=1e-14, rtol=1e-14, msg=name)


def test_normal_stream_has_standard_moments():
    z = philox.normal(5, 4, 500, 100, philox.STREAM_PERTURBED_TOPK)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs(torch.corrcoef(z.reshape(-1, 2).T)[0, 1].item()) < 0.02  # the cos/sin halves of each pair: independent


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,length,k", SHAPES)
def test_backends_agree_with_reference(device, impl, dtype, batch, length, k):
    scores = torch.randn(batch, length).to(dtype)
    grad = torch.randn(batch, k, length).to(dtype)
    args = (k, SAMPLES, 0.4, 1234)
    expected = _perturbed_topk(scores, *args, "reference")
    assert torch.equal(_perturbed_topk(scores, *args, impl), expected)  # same samples, same indices
    assert_close(_perturbed_topk_backward(grad, scores, *args, impl),
                 _perturbed_topk_backward(grad, scores, *args, "reference"), dtype)


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_indicator_matmul_agrees_with_dense(device, impl, dtype):
    """Y^T x skipping zero indicators; grad wrt Y restricted to Y's support (what eq. 8 reads)."""
    indicators = torch.rand(2, 5, 13) * (torch.rand(2, 5, 13) < 0.3)
    x, grad = torch.randn(2, 13, 7).to(dtype), torch.randn(2, 5, 7).to(dtype)
    indicators = indicators.to(dtype)
    assert_close(_indicator_matmul(indicators, x, impl), _indicator_matmul(indicators, x, "reference"), dtype)
    actual = _indicator_matmul_backward(grad, indicators, x, True, True, impl)
    expected = _indicator_matmul_backward(grad, indicators, x, True, True, "reference")
    for a, e in zip(actual, expected):
        assert_close(a, e, dtype)


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
def test_non_contiguous_inputs(device, impl):
    scores = non_contiguous(torch.randn(3, 11))
    grad = non_contiguous(torch.randn(3, 4, 11))
    assert not scores.is_contiguous()
    args = (4, SAMPLES, 0.3, 7)
    assert torch.equal(_perturbed_topk(scores, *args, impl), _perturbed_topk(scores.contiguous(), *args, "reference"))
    assert_close(_perturbed_topk_backward(grad, scores, *args, impl),
                 _perturbed_topk_backward(grad.contiguous(), scores.contiguous(), *args, "reference"))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_indicators_are_averaged_one_hots(device, impl):
    scores = torch.randn(2, 10, dtype=torch.float64)
    p = ops.perturbed_topk(scores, 3, num_samples=SAMPLES, sigma=1.0, seed=3, impl=impl)
    assert p.shape == (2, 3, 10)
    assert_close(p.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(p * SAMPLES, (p * SAMPLES).round())  # counts / n
    assert (p.sum(1) <= 1 + 1e-12).all()  # an item fills at most one slot per sample


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_small_sigma_tends_to_hard_topk_in_input_order(device, impl):
    scores = torch.randn(3, 12, dtype=torch.float64)
    hard_index = scores.topk(5, dim=1).indices.sort(1).values
    hard = torch.nn.functional.one_hot(hard_index, 12).double()
    for sigma in (1e-6, 0.0):
        assert torch.equal(ops.perturbed_topk(scores, 5, num_samples=4, sigma=sigma, seed=1, impl=impl), hard)
    wide = ops.perturbed_topk(scores, 5, num_samples=4, sigma=10.0, seed=1, impl=impl)
    assert not torch.equal(wide, hard)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_sigma_zero_is_hard_with_zero_gradient_and_ties_to_lower_index(device, impl):
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]], requires_grad=True)
    p = ops.perturbed_topk(scores, 2, num_samples=3, sigma=0.0, seed=0, impl=impl)
    assert torch.equal(p.detach(), torch.tensor([[[0.0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]]))
    p.backward(torch.randn_like(p))
    assert torch.equal(scores.grad, torch.zeros_like(scores))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_scores_gradient_is_the_estimator_for_the_same_noise(device, impl):
    scores = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 9, dtype=torch.float64)
    p = ops.perturbed_topk(scores, 3, num_samples=SAMPLES, sigma=0.5, seed=99, impl=impl)
    p.backward(grad)
    expected_p, expected_grad = _estimator(scores.detach(), grad, 3, SAMPLES, 0.5, 99)
    assert torch.equal(p.detach(), expected_p)
    assert_close(scores.grad, expected_grad)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_select_gradcheck_x_and_estimator_for_scores(device, impl):
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(2, 7, dtype=torch.float64)
    select = lambda x_: ops.perturbed_topk_select(x_, scores, 3, num_samples=SAMPLES, sigma=0.3, seed=5, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(select, (x,), fast_mode=True)
    scores.requires_grad_(True)
    grad = torch.randn(2, 3, 5, dtype=torch.float64)
    out = ops.perturbed_topk_select(x, scores, 3, num_samples=SAMPLES, sigma=0.3, seed=5, impl=impl)
    out.backward(grad)
    indicators, expected_scores_grad = _estimator(scores.detach(), grad @ x.detach().transpose(1, 2), 3, SAMPLES,
                                                  0.3, 5)
    assert_close(out.detach(), indicators @ x.detach())
    assert_close(scores.grad, expected_scores_grad)


def test_seed_none_follows_torch_manual_seed():
    scores = torch.randn(2, 15)
    torch.manual_seed(11)
    first = ops.perturbed_topk(scores, 4, num_samples=SAMPLES, sigma=1.0)
    torch.manual_seed(11)
    assert torch.equal(ops.perturbed_topk(scores, 4, num_samples=SAMPLES, sigma=1.0), first)
    assert not torch.equal(ops.perturbed_topk(scores, 4, num_samples=SAMPLES, sigma=1.0), first)


def test_leading_dims_are_flattened():
    scores = torch.randn(2, 3, 8)
    out = ops.perturbed_topk(scores, 2, num_samples=SAMPLES, seed=4)
    assert out.shape == (2, 3, 2, 8)
    assert torch.equal(out.reshape(6, 2, 8), ops.perturbed_topk(scores.reshape(6, 8), 2, num_samples=SAMPLES, seed=4))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    scores = torch.randn(2, 9, requires_grad=True)
    torch.library.opcheck(_perturbed_topk, (scores, 3, 4, 0.2, 8, impl))
    torch.library.opcheck(_perturbed_topk_backward, (torch.randn(2, 3, 9), scores.detach(), 3, 4, 0.2, 8, impl))
    indicators = _perturbed_topk(scores.detach(), 3, 4, 0.2, 8, impl).requires_grad_(True)
    x = torch.randn(2, 9, 5, requires_grad=True)
    torch.library.opcheck(_indicator_matmul, (indicators, x, impl))
    torch.library.opcheck(_indicator_matmul_backward, (torch.randn(2, 3, 5), indicators.detach(), x.detach(), True,
                                                       True, impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_compile_matches_eager(device, impl):
    torch._dynamo.reset()
    x = torch.randn(2, 9, 4)
    scores = torch.randn(2, 9)

    def f(x_, s_):
        return ops.perturbed_topk_select(x_, s_, 3, num_samples=4, sigma=0.2, seed=21, impl=impl)

    assert_close(torch.compile(f, fullgraph=True)(x, scores), f(x, scores))


def test_flop_formula():
    from torch.utils.flop_counter import FlopCounterMode

    scores = torch.randn(2, 9)
    with FlopCounterMode(display=False) as counter:
        ops.perturbed_topk(scores, 3, num_samples=4, seed=1)
    assert counter.get_total_flops() == 2 * 2 * 4 * 9


@pytest.mark.parametrize(
    "call,error,name",
    [
        (lambda s, x: ops.perturbed_topk(s, 9), ValueError, "k"),
        (lambda s, x: ops.perturbed_topk(s, 0), ValueError, "k"),
        (lambda s, x: ops.perturbed_topk(s, 2, sigma=-0.1), ValueError, "sigma"),
        (lambda s, x: ops.perturbed_topk(s, 2, sigma="a"), TypeError, "sigma"),
        (lambda s, x: ops.perturbed_topk(s, 2, num_samples=0), ValueError, "num_samples"),
        (lambda s, x: ops.perturbed_topk(s, 2, seed=-1), ValueError, "seed"),
        (lambda s, x: ops.perturbed_topk(s.long(), 2), TypeError, "scores"),
        (lambda s, x: ops.perturbed_topk(s[0], 2), ValueError, "scores"),
        (lambda s, x: ops.perturbed_topk_select(x[:, :5], s, 2), ValueError, "scores"),
        (lambda s, x: ops.perturbed_topk_select(x, s.double(), 2), TypeError, "scores"),
        (lambda s, x: ops.perturbed_topk_select(x[0], s, 2), ValueError, "x"),
        (lambda s, x: ops.perturbed_topk(s, 2, impl="nope"), ValueError, "impl"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, name):
    scores, x = torch.randn(2, 8), torch.randn(2, 8, 3)
    with pytest.raises(error, match=name):
        call(scores, x)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_nan_scores_rank_last(device, impl):
    out = ops.perturbed_topk(torch.tensor([[float("nan"), 0.0]]), 1, seed=0, impl=impl)
    assert torch.equal(out, torch.tensor([[[0.0, 1.0]]]))
