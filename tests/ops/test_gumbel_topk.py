"""gumbel_topk / gumbel_topk_select (MIST §3.2 segment selection, Appendix A).

Given the seed, the soft draws softmax((logits + g_t) / tau) are smooth in the logits, so hard=False
is gradchecked against finite differences; hard=True is straight-through (one-hot forward, the soft
draws' gradient), tested by comparing its gradient with the hard=False gradient.
"""

import pytest
import torch

import vidsel.ops as ops
from tests.helpers import (DTYPES, assert_close, compiled_backends, cpu_backends, device_backends,
                           fused_device_backends, non_contiguous)
from vidsel.ops._dispatch import supported
from vidsel.ops.gumbel_topk import GUMBEL_TOPK, GUMBEL_TOPK_BACKWARD, _gumbel_topk, _gumbel_topk_backward

SUPPORTED_IMPLS = supported(GUMBEL_TOPK, GUMBEL_TOPK_BACKWARD)

BACKENDS = cpu_backends(SUPPORTED_IMPLS)
COMPILED = compiled_backends(SUPPORTED_IMPLS)
ON_DEVICES = device_backends(SUPPORTED_IMPLS)  # (device, impl): CPU tensors here, CUDA on a GPU machine
COMPILED_ON_DEVICES = fused_device_backends(SUPPORTED_IMPLS)
# (B, L, k, replacement): L = 1, k = 1, k = L, k > L with replacement, odd L, B = 1
CASES = [(1, 1, 1, True), (3, 13, 4, True), (2, 7, 7, False), (1, 33, 1, False), (2, 3, 6, True), (2, 9, 5, False)]


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,length,k,replacement", CASES)
def test_backends_agree_with_reference(device, impl, dtype, batch, length, k, replacement):
    logits = torch.randn(batch, length).to(dtype)
    grad = torch.randn(batch, k, length).to(dtype)
    for hard in (True, False):
        args = (k, 0.7, hard, replacement, 77)
        expected = _gumbel_topk(logits, *args, "reference")
        actual = _gumbel_topk(logits, *args, impl)
        if hard:
            assert torch.equal(actual, expected)  # same noise, same picks
        else:
            assert_close(actual, expected, dtype)
    assert_close(_gumbel_topk_backward(grad, logits, k, 0.7, replacement, 77, impl),
                 _gumbel_topk_backward(grad, logits, k, 0.7, replacement, 77, "reference"), dtype)


@pytest.mark.parametrize("device, impl", COMPILED_ON_DEVICES)
def test_non_contiguous_inputs(device, impl):
    logits = non_contiguous(torch.randn(3, 10))
    grad = non_contiguous(torch.randn(3, 4, 10))
    assert not logits.is_contiguous()
    assert torch.equal(_gumbel_topk(logits, 4, 1.0, True, False, 3, impl),
                       _gumbel_topk(logits.contiguous(), 4, 1.0, True, False, 3, "reference"))
    assert_close(_gumbel_topk_backward(grad, logits, 4, 1.0, False, 3, impl),
                 _gumbel_topk_backward(grad.contiguous(), logits.contiguous(), 4, 1.0, False, 3, "reference"))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_hard_draws_are_one_hot_and_soft_rows_are_distributions(device, impl):
    logits = torch.randn(2, 8, dtype=torch.float64)
    hard = ops.gumbel_topk(logits, 5, seed=1, impl=impl)
    assert torch.equal(hard.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    assert torch.equal(hard, (hard > 0).double())
    soft = ops.gumbel_topk(logits, 5, hard=False, seed=1, impl=impl)
    assert_close(soft.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    assert torch.equal(soft.argmax(-1), hard.argmax(-1))  # the pick is the soft row's mode


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_without_replacement_picks_distinct_items(device, impl):
    logits = torch.randn(3, 6) * 4
    picks = ops.gumbel_topk(logits, 6, replacement=False, seed=2, impl=impl).argmax(-1)
    assert torch.equal(picks.sort(-1).values, torch.arange(6).expand(3, 6))  # k = L: a permutation
    soft = ops.gumbel_topk(logits, 6, hard=False, replacement=False, seed=2, impl=impl)
    for t in range(1, 6):  # earlier picks have probability 0 in later draws (Appendix A)
        assert (soft[:, t].gather(1, picks[:, :t]) == 0).all()


def test_with_replacement_frequencies_follow_softmax():
    logits = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    picks = ops.gumbel_topk(logits, 20000, seed=3).argmax(-1)
    freq = torch.bincount(picks[0], minlength=4).double() / 20000
    expected = torch.softmax(logits[0].double(), 0)
    assert (freq - expected).abs().max() < 4 * (0.25 / 20000) ** 0.5


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gradcheck_soft_draws(device, impl):
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    for replacement in (True, False):
        f = lambda l_: ops.gumbel_topk(l_, 3, tau=0.8, hard=False, replacement=replacement, seed=4, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(f, (logits,), fast_mode=True)
    g = lambda x_, l_: ops.gumbel_topk_select(x_, l_, 3, tau=0.8, hard=False, seed=4, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(g, (x, logits), fast_mode=True)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_straight_through_gradient_equals_soft_gradient(device, impl):
    logits = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, 7, dtype=torch.float64)
    grads = []
    for hard in (True, False):
        logits.grad = None
        ops.gumbel_topk(logits, 4, tau=0.5, hard=hard, replacement=False, seed=6, impl=impl).backward(grad)
        grads.append(logits.grad.clone())
    assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_hard_select_gathers_rows(device, impl):
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    out = ops.gumbel_topk_select(x, logits, 3, seed=8, impl=impl)
    picks = ops.gumbel_topk(logits.detach(), 3, seed=8, impl=impl).argmax(-1)
    assert torch.equal(out.detach(), x.detach().gather(1, picks[..., None].expand(-1, -1, 4)))
    out.sum().backward()
    assert logits.grad is not None and x.grad is not None


def test_seed_none_follows_torch_manual_seed():
    logits = torch.randn(2, 9)
    torch.manual_seed(5)
    first = ops.gumbel_topk(logits, 3, hard=False)
    torch.manual_seed(5)
    assert torch.equal(ops.gumbel_topk(logits, 3, hard=False), first)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_opcheck(device, impl):
    logits = torch.randn(2, 6, requires_grad=True)
    torch.library.opcheck(_gumbel_topk, (logits, 3, 0.9, False, False, 5, impl))
    torch.library.opcheck(_gumbel_topk_backward, (torch.randn(2, 3, 6), logits.detach(), 3, 0.9, True, 5, impl))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_compile_matches_eager(device, impl):
    torch._dynamo.reset()
    x, logits = torch.randn(2, 6, 3), torch.randn(2, 6)

    def f(x_, l_):
        return ops.gumbel_topk_select(x_, l_, 2, tau=0.5, hard=False, seed=12, impl=impl)

    assert_close(torch.compile(f, fullgraph=True)(x, logits), f(x, logits))


@pytest.mark.parametrize(
    "call,error,name",
    [
        (lambda l, x: ops.gumbel_topk(l, 0), ValueError, "k"),
        (lambda l, x: ops.gumbel_topk(l, 9, replacement=False), ValueError, "k"),
        (lambda l, x: ops.gumbel_topk(l, 2, tau=0.0), ValueError, "tau"),
        (lambda l, x: ops.gumbel_topk(l, 2, tau=None), TypeError, "tau"),
        (lambda l, x: ops.gumbel_topk(l, 2, hard=1), TypeError, "hard"),
        (lambda l, x: ops.gumbel_topk(l, 2, seed=2**63), ValueError, "seed"),
        (lambda l, x: ops.gumbel_topk(l.int(), 2), TypeError, "logits"),
        (lambda l, x: ops.gumbel_topk(l[0], 2), ValueError, "logits"),
        (lambda l, x: ops.gumbel_topk_select(x[:, :3], l, 2), ValueError, "logits"),
        (lambda l, x: ops.gumbel_topk_select(x[0], l, 2), ValueError, "x"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, name):
    logits, x = torch.randn(2, 8), torch.randn(2, 8, 3)
    with pytest.raises(error, match=name):
        call(logits, x)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_nan_logits_rank_last(device, impl):
    out = ops.gumbel_topk(torch.tensor([[float("nan"), 0.0]]), 1, seed=0, impl=impl)
    assert torch.equal(out, torch.tensor([[[0.0, 1.0]]]))


@pytest.mark.parametrize("device, impl", fused_device_backends(SUPPORTED_IMPLS))
@pytest.mark.parametrize("replacement", [False, True])
def test_rows_longer_than_one_block(device, impl, replacement):
    """Rows span several kernel blocks (16 items under the interpreter, 256 or 512 on a GPU): the first
    maximum, the softmax denominator and earlier picks all cross block boundaries."""
    torch.manual_seed(9)
    logits = torch.randn(2, 70, dtype=torch.float64)
    logits[0, :40] = float("-inf")  # the first blocks hold only -inf: the pick is in a later block
    logits[1, 20:50] = float("nan")  # NaNs in the middle blocks rank after every number
    grad = torch.randn(2, 4, 70, dtype=torch.float64)
    for hard in (True, False):
        args = (4, 0.6, hard, replacement, 31)
        expected, actual = _gumbel_topk(logits, *args, "reference"), _gumbel_topk(logits, *args, impl)
        if hard:
            assert torch.equal(actual, expected)
            assert not (actual[1, :, 20:50] > 0).any()
        else:
            assert torch.equal(actual.isnan(), expected.isnan())
            assert_close(actual.nan_to_num(), expected.nan_to_num(), torch.float64)
    finite = logits[:1]
    assert_close(_gumbel_topk_backward(grad[:1], finite, 4, 0.6, replacement, 31, impl),
                 _gumbel_topk_backward(grad[:1], finite, 4, 0.6, replacement, 31, "reference"), torch.float64)


def test_gpu_launch_table_covers_any_row_length():
    """On a GPU a row longer than the largest table entry is walked in that entry's blocks."""
    from vidsel.kernels import configs

    table = configs.GPU["gumbel_topk"]
    for length in (1, 300, 4096, 4097, 100_000):
        block = table[configs.gpu_key(table, configs.next_power_of_2(length))]["BLOCK_L"]
        assert block <= max(table) and (block >= length or block == max(table))
