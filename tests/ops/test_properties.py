"""Property tests (hypothesis): every backend against the reference on random tiny inputs, and the
invariants of each op. Shapes include 1 and odd sizes, values ties, +-inf, NaN, huge and subnormal
numbers, layouts transposed, expanded and sliced.

`make test` runs the "default" profile: 200 examples per op and backend, Triton under the interpreter
included (its examples draw tiny shapes, see `size`: the interpreter runs every program instance in
Python, so its cost grows with the grid, not with the work); `make test-long` sets
VIDSEL_HYPOTHESIS_PROFILE=long (2000 on every backend, full shapes); "smoke" (20) is for a quick run.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import device_backends, fused_device_backends
from vidsel import ops
from vidsel.ops import CompressedEmbedParams
from vidsel.reference.topk_gather import ranking as reference_ranking

settings.register_profile(
    "default", max_examples=200, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "smoke", max_examples=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("VIDSEL_HYPOTHESIS_PROFILE", "default"))

ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
FUSED_ON_DEVICES = fused_device_backends()  # the pairs compared with the reference
PROFILE = os.environ.get("VIDSEL_HYPOTHESIS_PROFILE", "default")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def per_backend(test):
    """Parametrises `test(impl, data)` over FUSED_ON_DEVICES (the tensors_on_device fixture makes
    `device` the factories' default) and runs it as a hypothesis test, the profile's number of
    examples on every backend."""

    def run(device, impl):
        def example(data):
            test(impl, data)

        given(data=st.data())(example)()

    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    return pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)(run)


def size(data, impl: str, low: int, high: int, interpreted_high: int | None = None) -> int:
    """A size in [low, high]; Triton under the interpreter (outside the long profile) draws from
    [low, interpreted_high]: every extra program instance costs it Python-level time, not work."""
    interpreted = impl == "triton" and INTERPRETED and torch.get_default_device().type == "cpu"
    if interpreted and PROFILE != "long" and interpreted_high is not None:
        high = max(low, min(high, interpreted_high))
    return data.draw(st.integers(low, high))


def thread_invariant(impl: str, call, expected) -> None:
    """The compiled CPU kernels give the same bits on 1 and 2 threads (their parallel split is fixed):
    `call()` is rerun on whichever of 1 and 2 threads `expected` was not computed with."""
    if impl != "cpu":
        return
    threads = torch.get_num_threads()
    try:
        for count in [c for c in (1, 2) if c != threads]:  # `expected` ran on the current count
            torch.set_num_threads(count)
            out = call()
            for got, want in zip(out if isinstance(out, tuple) else (out,),
                                 expected if isinstance(expected, tuple) else (expected,)):
                assert (got is None and want is None) or _same(got, want), f"{count} thread(s) changed the result"
    finally:
        torch.set_num_threads(threads)


SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 1e30, -1e30, 1e-40, float("inf"), float("-inf"), float("nan")]
FINITE_SPECIAL = [0.0, 1.0, -1.0, 0.5, 2.0, 1e-40, 1e4]


def _values(count: int, special=SPECIAL):
    """count floats: mostly small integers (ties), some special values, some arbitrary floats."""
    item = st.one_of(
        st.integers(-3, 3).map(float),
        st.sampled_from(special),
        st.floats(-10, 10, width=32),
    )
    return st.lists(item, min_size=count, max_size=count)


@st.composite
def _matrix(draw, rows, cols, special=SPECIAL, dtype=None):
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    flat = torch.tensor(draw(_values(rows * cols, special)), dtype=torch.float64).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]))
    if layout == "expanded":  # stride 0 over rows: every row the same (ties across rows)
        return flat.reshape(rows, cols)[:1].expand(rows, cols) if rows else flat.reshape(rows, cols)
    if layout == "transposed":
        return flat.reshape(cols, rows).t()
    if layout == "sliced":
        wide = torch.zeros(rows, 2 * cols, dtype=dtype)
        wide[:, ::2] = flat.reshape(rows, cols)
        return wide[:, ::2]
    return flat.reshape(rows, cols)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values with NaN equal to NaN."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


# ---------------------------------------------------------------- topk_gather


@per_backend
def test_topk_gather_matches_reference(impl, data):
    groups, n = size(data, impl, 1, 3, 2), size(data, impl, 1, 9)
    scores = data.draw(_matrix(groups, n))
    k = data.draw(st.integers(1, n))
    sorted_by_index = data.draw(st.booleans())
    x = torch.randn(1, n, 3, dtype=scores.dtype).expand(groups, n, 3)  # an expanded (stride 0) x
    selected, index = ops.topk_gather(x, scores, k, sorted_by_index=sorted_by_index, impl=impl)
    ref_selected, ref_index = ops.topk_gather(x, scores, k, sorted_by_index=sorted_by_index, impl="reference")
    assert torch.equal(index, ref_index) and torch.equal(selected, ref_selected)
    assert all(len(set(row)) == k for row in index.tolist())  # distinct
    numbers = (~scores.isnan()).sum(1)
    picked_nan = scores.isnan().gather(1, index).sum(1)
    assert torch.equal(picked_nan, (k - numbers).clamp(min=0))  # NaN only when numbers run out
    thread_invariant(impl, lambda: ops.topk_gather(x, scores, k, sorted_by_index=sorted_by_index, impl=impl),
                     (selected, index))


# ---------------------------------------------------------------- perturbed_topk


def _perturbed_case(data, impl, select_dtype=None):
    batch, length = size(data, impl, 0, 3, 1), size(data, impl, 1, 7, 5)
    dtype = select_dtype or data.draw(st.sampled_from([torch.float32, torch.float64]))
    scores = data.draw(_matrix(batch, length, dtype=dtype))
    k = data.draw(st.integers(1, length))
    args = dict(num_samples=size(data, impl, 1, 4, 2), sigma=data.draw(st.sampled_from([0.0, 0.05, 1.0])),
                seed=data.draw(st.integers(0, 2**31)))
    return scores, k, args


@per_backend
def test_perturbed_topk_matches_reference(impl, data):
    scores, k, args = _perturbed_case(data, impl)
    batch = scores.shape[0]
    out = ops.perturbed_topk(scores, k, impl=impl, **args)
    assert torch.equal(out, ops.perturbed_topk(scores, k, impl="reference", **args))  # same seed, same bits
    assert torch.allclose(out.sum(-1).double(), torch.ones(batch, k, dtype=torch.float64))
    if batch and bool(((~scores.isnan()).sum(1) >= k).all()):
        assert not bool(out.transpose(1, 2)[scores.isnan()].any())  # NaN never selected
    thread_invariant(impl, lambda: ops.perturbed_topk(scores, k, impl=impl, **args), out)


@per_backend
def test_perturbed_topk_select_matches_reference(impl, data):
    """Y^T x with the same indicators as perturbed_topk; rows no indicator touches never reach it."""
    scores, k, args = _perturbed_case(data, impl)
    batch, length = scores.shape
    x = data.draw(_matrix(batch * length, 2, special=FINITE_SPECIAL, dtype=scores.dtype)).reshape(batch, length, 2)
    indicators = ops.perturbed_topk(scores, k, impl="reference", **args)
    unused = (indicators == 0).all(1)  # (B, L): rows with zero weight in every slot
    poisoned = x.masked_fill(unused[..., None], data.draw(st.sampled_from([float("nan"), float("inf")])))
    out = ops.perturbed_topk_select(poisoned, scores, k, impl=impl, **args)
    expected = ops.perturbed_topk_select(x, scores, k, impl="reference", **args)
    assert out.shape == (batch, k, 2)
    torch.testing.assert_close(out, expected, **_tolerance(scores.dtype))
    if args["sigma"] == 0 and batch:  # one-hot indicators: exactly the hard top-k rows in input order
        assert torch.equal(out, ops.topk_gather(x, scores, k, impl="reference")[0])
    thread_invariant(impl, lambda: ops.perturbed_topk_select(poisoned, scores, k, impl=impl, **args), out)


def _tolerance(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gumbel_topk


def _gumbel_case(data, impl, dtype=torch.float64):
    batch, length = size(data, impl, 0, 3, 1), size(data, impl, 1, 7, 5)
    logits = data.draw(_matrix(batch, length, dtype=dtype))
    replacement = data.draw(st.booleans())
    k = data.draw(st.integers(1, length if not replacement else length + 2))
    args = dict(tau=data.draw(st.sampled_from([0.1, 1.0, 3.0])), replacement=replacement,
                seed=data.draw(st.integers(0, 2**31)))
    return logits, k, args


@per_backend
def test_gumbel_topk_matches_reference(impl, data):
    logits, k, args = _gumbel_case(data, impl)
    batch = logits.shape[0]
    hard = ops.gumbel_topk(logits, k, hard=True, impl=impl, **args)
    assert torch.equal(hard, ops.gumbel_topk(logits, k, hard=True, impl="reference", **args))
    assert torch.equal(hard.sum(-1), torch.ones(batch, k, dtype=hard.dtype))
    if not args["replacement"] and batch:
        assert all(len(set(row)) == k for row in hard.argmax(-1).tolist())
    soft = ops.gumbel_topk(logits, k, hard=False, impl=impl, **args)
    expected = ops.gumbel_topk(logits, k, hard=False, impl="reference", **args)
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(soft))
    torch.testing.assert_close(soft[finite], expected[finite], rtol=1e-9, atol=1e-12)
    thread_invariant(impl, lambda: ops.gumbel_topk(logits, k, hard=True, impl=impl, **args), hard)


@per_backend
def test_gumbel_topk_select_matches_reference(impl, data):
    """hard=True: row t is exactly x[pick_t], whatever (even NaN) the other rows hold; soft: weights @ x."""
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    logits, k, args = _gumbel_case(data, impl, dtype=dtype)
    batch, length = logits.shape
    x = data.draw(_matrix(batch * length, 2, dtype=dtype)).reshape(batch, length, 2)
    hard = data.draw(st.booleans())
    out = ops.gumbel_topk_select(x, logits, k, hard=hard, impl=impl, **args)
    assert out.shape == (batch, k, 2)
    if hard:
        pick = ops.gumbel_topk(logits, k, hard=True, impl="reference", **args).argmax(-1)
        assert _same(out, x.gather(1, pick[..., None].expand(-1, -1, 2)))
        thread_invariant(impl, lambda: ops.gumbel_topk_select(x, logits, k, hard=True, impl=impl, **args), out)
    else:
        expected = ops.gumbel_topk_select(x, logits, k, hard=False, impl="reference", **args)
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(out))
        torch.testing.assert_close(out[finite], expected[finite], **_tolerance(dtype))


# ---------------------------------------------------------------- anchor_scores / anchor_select


@per_backend
def test_anchor_scores_match_reference(impl, data):
    frames, height, width = size(data, impl, 0, 2, 1), data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    scores = torch.stack([data.draw(_matrix(height, width, dtype=dtype)) for _ in range(frames)]) if frames else (
        torch.zeros(0, height, width, dtype=dtype))
    anchor = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    means = ops.anchor_scores(scores, anchor, stride, impl=impl)
    expected = ops.anchor_scores(scores, anchor, stride, impl="reference")
    assert _same(means, expected)  # one summation order in float64 on every backend: the same bits
    thread_invariant(impl, lambda: ops.anchor_scores(scores, anchor, stride, impl=impl), means)


def _anchor_case(data, impl):
    batch, frames = size(data, impl, 0, 2, 1), size(data, impl, 1, 2, 1)
    height, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    scores = torch.stack([data.draw(_matrix(height, width, dtype=dtype)) for _ in range(batch * frames)]).reshape(
        batch, frames, height, width) if batch else torch.zeros(0, frames, height, width, dtype=dtype)
    x = torch.randn(batch, frames, height, width, 2, dtype=dtype)
    anchor = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    return x, scores, anchor, stride


@per_backend
def test_anchor_select_hard_is_the_best_window(impl, data):
    """Hard mode returns exactly the window of the best anchor (NaN last, ties to the lower index); the
    other pixels, even NaN, are never read."""
    x, scores, (ah, aw), (sh, sw) = _anchor_case(data, impl)
    batch, frames, height, width, dim = x.shape
    flat = scores.reshape(-1, height, width)
    best = ops.anchor_scores(flat.double(), (ah, aw), (sh, sw), impl="reference")
    index = reference_ranking(best)[:, 0] if best.shape[0] else torch.zeros(0, dtype=torch.int64)
    cols = (width - aw) // sw + 1
    top, left = (index // cols) * sh, (index % cols) * sw
    poisoned = torch.full_like(x, float("nan")).reshape(-1, height, width, dim)
    windows = []
    for f in range(poisoned.shape[0]):
        rows, columns = slice(int(top[f]), int(top[f]) + ah), slice(int(left[f]), int(left[f]) + aw)
        poisoned[f, rows, columns] = x.reshape(-1, height, width, dim)[f, rows, columns]
        windows.append(poisoned[f, rows, columns])
    expected = torch.stack(windows).reshape(batch, frames, ah, aw, dim) if windows else x.new_zeros(
        batch, frames, ah, aw, dim)
    out = ops.anchor_select(poisoned.reshape(x.shape), scores, (ah, aw), (sh, sw), impl=impl)
    assert torch.equal(out, expected)
    thread_invariant(impl, lambda: ops.anchor_select(poisoned.reshape(x.shape), scores, (ah, aw), (sh, sw), impl=impl),
                     out)


@per_backend
def test_anchor_select_perturbed_matches_reference(impl, data):
    x, scores, anchor, stride = _anchor_case(data, impl)
    args = dict(mode="perturbed", num_samples=size(data, impl, 1, 3, 2),
                sigma=data.draw(st.sampled_from([0.0, 0.1, 1.0])), seed=data.draw(st.integers(0, 2**31)))
    scores = torch.nan_to_num(scores, nan=0.0, posinf=1e4, neginf=-1e4)  # anchor means of finite scores
    out = ops.anchor_select(x, scores, anchor, stride, impl=impl, **args)
    expected = ops.anchor_select(x, scores, anchor, stride, impl="reference", **args)
    torch.testing.assert_close(out, expected, **_tolerance(x.dtype))


# ---------------------------------------------------------------- frame_select


@per_backend
def test_frame_select_matches_reference(impl, data):
    batch, frames = size(data, impl, 0, 2, 1), size(data, impl, 1, 5, 4)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    scores = data.draw(_matrix(batch, frames, dtype=dtype))
    x = torch.randn(batch, frames, 2, 3, dtype=dtype)
    k = data.draw(st.integers(1, frames))
    mode = data.draw(st.sampled_from(["hard", "perturbed"]))
    args = dict(mode=mode, num_samples=size(data, impl, 1, 3, 2), sigma=data.draw(st.sampled_from([0.0, 0.1])),
                seed=data.draw(st.integers(0, 2**31)))
    if mode == "hard":
        selected, index = ops.topk_gather(x.flatten(2), scores, k, impl="reference")
        unused = torch.ones(batch, frames, dtype=torch.bool).scatter(1, index, False)
    else:
        unused = (ops.perturbed_topk(scores, k, num_samples=args["num_samples"], sigma=args["sigma"],
                                     seed=args["seed"], impl="reference") == 0).all(1)
    poisoned = x.masked_fill(unused[..., None, None], float("nan"))  # frames no slot reads
    out = ops.frame_select(poisoned, scores, k, impl=impl, **args)
    expected = ops.frame_select(x, scores, k, impl="reference", **args)
    assert out.shape == (batch, k, 2, 3)
    if mode == "hard":
        assert torch.equal(out, selected.reshape(batch, k, 2, 3)) and torch.equal(out, expected)
    else:
        torch.testing.assert_close(out, expected, **_tolerance(dtype))
    thread_invariant(impl, lambda: ops.frame_select(poisoned, scores, k, impl=impl, **args), out)


# ---------------------------------------------------------------- chunk_causal_attention


@per_backend
def test_chunk_attention_matches_reference_and_is_causal(impl, data):
    lens = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    lk, dim = sum(lens), data.draw(st.integers(1, 5))
    lq = data.draw(st.integers(1, lk))
    q = torch.randn(1, 2, lq, dim, dtype=torch.float64)
    k, v = torch.randn(1, 2, lk, dim, dtype=torch.float64), torch.randn(1, 2, lk, dim, dtype=torch.float64)
    bias = data.draw(st.sampled_from([None, torch.randn(1, lk, dtype=torch.float64)]))
    out = ops.chunk_causal_attention(q, k, v, chunk_lens=lens, key_bias=bias, impl=impl)
    expected = ops.chunk_causal_attention(q, k, v, chunk_lens=lens, key_bias=bias, impl="reference")
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # changing (even poisoning) the last chunk's keys and values leaves earlier chunks' queries alone
    last = lens[-1]
    k2, v2 = k.clone(), v.clone()
    k2[:, :, lk - last:] = data.draw(st.sampled_from([float("nan"), float("inf"), 7.0]))
    v2[:, :, lk - last:] = data.draw(st.sampled_from([float("nan"), float("-inf"), -3.0]))
    earlier = max(0, lq - last)
    changed = ops.chunk_causal_attention(q, k2, v2, chunk_lens=lens, key_bias=bias, impl=impl)
    assert torch.equal(changed[:, :, :earlier], out[:, :, :earlier])
    thread_invariant(impl, lambda: ops.chunk_causal_attention(q, k, v, chunk_lens=lens, key_bias=bias, impl=impl),
                     out)


# ---------------------------------------------------------------- bipartite_match


PARTITION_NAMES = ["alternate", "alternate_after_protected", "importance"]


def _matching_args(data, n: int):
    partition = data.draw(st.sampled_from(PARTITION_NAMES))
    protected = data.draw(st.integers(0, min(2, n - 1)))  # protected == N: its own test below
    free = n - protected
    high = free // 2 if partition != "importance" else max(free - 1, 0)
    return dict(r=data.draw(st.integers(0, high)), partition=partition, protected=protected)


def _check_matching_invariants(m, n: int, r: int, protected: int) -> None:
    """Sizes sum to N, kept and merged positions partition the tokens, targets are kept, protected
    tokens neither merge nor receive merges."""
    batch = m.dst_index.shape[0]
    assert m.kept_index.shape == (batch, n - r) and m.merged_index.shape == (batch, r)
    for b in range(batch):
        kept, merged = m.kept_index[b].tolist(), m.merged_index[b].tolist()
        assert kept == sorted(set(kept)) and merged == sorted(set(merged))  # distinct, ascending
        assert sorted(kept + merged) == list(range(n))
        assert set(m.merged_into[b].tolist()) <= set(kept) - set(range(protected))
        assert set(range(protected)) <= set(kept)
        dst = m.dst_index[b]
        assert torch.equal(dst[m.kept_index[b]], torch.arange(n - r))
        assert torch.equal(dst[m.merged_index[b]], dst[m.merged_into[b]])
        assert int(torch.bincount(dst, minlength=n - r).sum()) == n  # group sizes sum to N


def _match_all(metric, args, importance, impl):
    kwargs = dict(args, importance=importance if args["partition"] == "importance" else None)
    return ops.bipartite_match(metric, impl=impl, **kwargs)


@per_backend
def test_bipartite_match_matches_reference(impl, data):
    batch, n = size(data, impl, 1, 3, 2), data.draw(st.integers(1, 9))
    args = _matching_args(data, n)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    channels = data.draw(st.integers(2, 4))
    # distinct random directions (no exact ties: those have their own test), in a drawn layout; no
    # huge common offset: it makes float32 similarities tie up to rounding, where backends may differ
    metric = data.draw(_matrix(batch * n, channels, special=[1e-40, 0.5, 2.0], dtype=torch.float64))
    metric = (metric.double().reshape(batch, n, channels) + torch.randn(batch, n, channels, dtype=torch.float64)).to(
        dtype)
    importance = torch.randn(batch, n, dtype=dtype)
    matching = _match_all(metric, args, importance, impl)
    expected = _match_all(metric, args, importance, "reference")
    for name in matching._fields:
        assert torch.equal(getattr(matching, name), getattr(expected, name)), name
    _check_matching_invariants(matching, n, args["r"], args["protected"])
    thread_invariant(impl, lambda: tuple(_match_all(metric, args, importance, impl)), tuple(matching))


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
def test_bipartite_match_ties_follow_the_rule(device, impl):
    """Duplicated metric rows and C = 1 give exact similarity ties: the backend must pick the pairs
    the reference (the documented rule) picks."""

    @given(data=st.data())
    def example(data):
        batch, n = size(data, impl, 1, 2, 1), data.draw(st.integers(2, 9))
        args = _matching_args(data, n)
        channels = data.draw(st.sampled_from([1, 2]))
        rows = data.draw(st.lists(st.sampled_from([-1.0, 1.0, 2.0, 0.5]), min_size=channels, max_size=channels * n))
        metric = torch.tensor(_tied_rows(rows, n, channels), dtype=torch.float32).expand(batch, n, channels)
        importance = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
        importance = importance.expand(batch, n)
        matching = _match_all(metric, args, importance, impl)
        expected = _match_all(metric, args, importance, "reference")
        _check_matching_invariants(matching, n, args["r"], args["protected"])
        for name in matching._fields:
            assert torch.equal(getattr(matching, name), getattr(expected, name)), name

    example()


def _tied_rows(values: list[float], n: int, channels: int) -> list[list[float]]:
    """n metric rows of `channels` values cycling through a few distinct rows (exact duplicates)."""
    distinct = [values[i:i + channels] for i in range(0, len(values) - channels + 1, channels)] or [[1.0] * channels]
    return [distinct[i % len(distinct)] for i in range(n)]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("partition", ["alternate", "alternate_after_protected"])
def test_bipartite_match_with_every_token_protected_is_the_identity(device, impl, partition):
    m = ops.bipartite_match(torch.randn(2, 3, 2), 0, partition=partition, protected=3, impl=impl)
    assert m.dst_index.tolist() == [[0, 1, 2]] * 2 and m.merged_index.shape == (2, 0)


@pytest.mark.parametrize("device, impl", FUSED_ON_DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_bipartite_match_non_finite_metric_rows_merge_last_like_the_reference(device, impl, bad):
    """A NaN/inf metric row has NaN similarity with every row: ranked after every number, on every backend."""
    metric = torch.randn(2, 7, 3)
    metric[1, 4, 0] = bad
    matching = ops.bipartite_match(metric, 3, impl=impl)
    expected = ops.bipartite_match(metric, 3, impl="reference")
    for name in matching._fields:
        assert torch.equal(getattr(matching, name), getattr(expected, name)), name
    _check_matching_invariants(matching, 7, 3, 0)
    assert 4 in matching.kept_index[1].tolist()  # A token 4 ranks after the 3 finite A tokens: it stays


# ---------------------------------------------------------------- merge / unmerge


def _merge_case(data, impl):
    batch, n = size(data, impl, 0, 2, 1), data.draw(st.integers(0, 9))
    if n:
        args = _matching_args(data, n)
        matching = _match_all(torch.randn(batch, n, 3, dtype=torch.float64), args,
                              torch.randn(batch, n, dtype=torch.float64), "reference")
    else:  # N = 0: an empty matching
        args, empty = dict(r=0), torch.zeros(batch, 0, dtype=torch.int64)
        matching = ops.Matching(empty, empty, empty, empty)
    x = data.draw(_matrix(batch * n, 2, special=FINITE_SPECIAL, dtype=torch.float64)).reshape(batch, n, 2)
    sizes = torch.tensor(data.draw(st.lists(st.integers(1, 4), min_size=batch * n, max_size=batch * n)),
                         dtype=torch.float64).reshape(batch, n)
    return matching, x, sizes, args["r"]


@per_backend
def test_merge_invariants_and_reference(impl, data):
    matching, x, size_in, r = _merge_case(data, impl)
    batch, n = size_in.shape
    merged, size_merged = ops.merge(x, matching, size_in, impl=impl)
    ref_merged, ref_size = ops.merge(x, matching, size_in, impl="reference")
    torch.testing.assert_close(merged, ref_merged, rtol=1e-12, atol=1e-12)
    assert torch.equal(size_merged, ref_size)
    assert merged.shape == (batch, n - r, 2)
    assert torch.equal(size_merged.sum(1), size_in.sum(1))  # sizes sum to N (weighted)
    total = (size_in[..., None] * x).sum(1)
    torch.testing.assert_close((size_merged[..., None] * merged).sum(1), total, rtol=1e-9, atol=1e-6)
    thread_invariant(impl, lambda: ops.merge(x, matching, size_in, impl=impl), (merged, size_merged))


@per_backend
def test_unmerge_then_merge_is_a_projection(impl, data):
    """P = unmerge(merge(.)) is idempotent (P P x = P x), unmerge matches the reference, and merging
    an unmerged tensor gives it back (merge after unmerge is the identity)."""
    matching, x, size_in, r = _merge_case(data, impl)
    batch, n = size_in.shape
    frames = data.draw(st.booleans())  # (B, N, L, D): whole frames as tokens
    x = x.reshape(batch, n, 1, 2).expand(batch, n, 3, 2) if frames else x
    merged, _ = ops.merge(x, matching, size_in, impl=impl)
    restored = ops.unmerge(merged, matching, impl=impl)
    assert restored.shape == x.shape
    assert torch.equal(restored, ops.unmerge(merged, matching, impl="reference"))
    again, _ = ops.merge(restored, matching, size_in, impl=impl)
    torch.testing.assert_close(again, merged, rtol=1e-12, atol=1e-9)
    twice = ops.unmerge(again, matching, impl=impl)
    torch.testing.assert_close(twice, restored, rtol=1e-12, atol=1e-9)
    transposed = merged.transpose(0, 1).contiguous().transpose(0, 1)  # another layout, same values
    assert torch.equal(ops.unmerge(transposed, matching, impl=impl), restored)


# ---------------------------------------------------------------- compressed_patch_embed


def _layout(data, t: torch.Tensor) -> torch.Tensor:
    """Same values in a drawn layout: contiguous, transposed (last two axes), or sliced."""
    layout = data.draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


@per_backend
def test_compressed_patch_embed_matches_reference(impl, data):
    batch, frames = size(data, impl, 1, 2, 1), size(data, impl, 1, 2, 1)
    patch = data.draw(st.integers(1, 3))
    rows, cols = size(data, impl, 1, 3, 2), size(data, impl, 1, 3, 2)
    height, width = rows * patch, cols * patch
    block = data.draw(st.sampled_from([g for g in range(1, 7) if height % g == 0 and width % g == 0]))
    dim, feat = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    with_audio, expand_audio = data.draw(st.booleans()), data.draw(st.booleans())
    tokens = rows * cols

    def rand(*shape):
        return _layout(data, torch.randn(*shape, dtype=dtype))

    iframe = rand(batch, frames, 3, height, width)
    bad = data.draw(st.sampled_from([None, float("nan"), float("inf"), 1e30]))
    if bad is not None:  # a non-finite (or huge) I-frame pixel propagates to its token only
        iframe = iframe.clone()
        iframe[0, 0, 0, 0, 0] = bad
    motion = rand(batch, frames, 2, height // block, width // block)
    residual = rand(batch, frames, 3, height, width)
    audio = rand(batch, frames, feat) if with_audio else None
    params = []
    for channels in (3, 2, 3):
        params += [rand(dim, channels, patch, patch), rand(dim), rand(frames, tokens, dim)]
    params += [rand(dim, feat), rand(dim), rand(frames, dim)] if with_audio else [None] * 3
    params = CompressedEmbedParams(*params)
    run = lambda which: ops.compressed_patch_embed(iframe, motion, residual, audio, params,  # noqa: E731
                                                   patch=patch, expand_audio=expand_audio, impl=which)
    out, expected = run(impl), run("reference")
    out = out if isinstance(out, tuple) else (out,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    modalities = 4 if with_audio and expand_audio else 3
    assert out[0].shape == (batch, modalities, frames, tokens, dim)
    for got, want in zip(out, expected):
        if want is None:
            assert got is None
            continue
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))
        torch.testing.assert_close(got[finite], want[finite], **(_tolerance(dtype) if dtype == torch.float64 else
                                                                  dict(rtol=1e-4, atol=1e-4)))
    thread_invariant(impl, lambda: run(impl), out if len(out) > 1 else out[0])


@per_backend
def test_merge_source_covers_every_token_once(impl, data):
    """Every original token lies in exactly one output token; composing two merges by passing the
    source back gives the coverage of the composed matching."""
    matching, x, _, r = _merge_case(data, impl)
    batch, n = matching.dst_index.shape
    source = ops.merge_source(matching, impl=impl)
    assert torch.equal(source, ops.merge_source(matching, impl="reference"))
    assert source.shape == (batch, n - r, n) and bool((source.sum(1) == 1).all())
    assert bool(source.gather(2, matching.kept_index[..., None]).all())  # each output covers its own token
    if n - r >= 2 and batch:
        second = ops.bipartite_match(torch.randn(batch, n - r, 3), 1, impl="reference")
        composed = ops.merge_source(second, source, impl=impl)
        expected = torch.zeros(batch, n - r - 1, n, dtype=torch.bool)
        for b in range(batch):
            for i in range(n):
                expected[b, second.dst_index[b, matching.dst_index[b, i]], i] = True
        assert torch.equal(composed, expected)
