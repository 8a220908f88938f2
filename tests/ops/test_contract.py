"""The shared input contract of the ops, on every backend: empty batches, argument errors, the ranking
rule (larger first, NaN after every number, ties to the lower position), causality and zero weights
that never let a non-finite value through, and numerics independent of the scores' dynamic range."""

import math

import pytest
import torch

from tests.helpers import device_backends
from vidsel import ops
from vidsel.ops import CompressedEmbedParams

ON_DEVICES = device_backends()  # (device, impl): CPU tensors here, CUDA tensors on a GPU machine
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_ops_accept_an_empty_batch(device, impl):
    out = ops.perturbed_topk(torch.randn(0, 13), 3, seed=5, impl=impl)
    assert out.shape == (0, 3, 13)
    out = ops.perturbed_topk_select(torch.randn(0, 13, 4), torch.randn(0, 13), 3, seed=5, impl=impl)
    assert out.shape == (0, 3, 4)
    out = ops.frame_select(torch.randn(0, 6, 2, 3), torch.randn(0, 6), 2, mode="perturbed", seed=1, impl=impl)
    assert out.shape == (0, 2, 2, 3)
    out = ops.anchor_select(torch.randn(0, 2, 4, 4, 3), torch.randn(0, 2, 4, 4), 2, mode="perturbed", seed=1,
                            impl=impl)
    assert out.shape == (0, 2, 2, 2, 3)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_topk_backward_accepts_an_empty_batch(device, impl):
    scores = torch.randn(0, 7, requires_grad=True)
    ops.perturbed_topk(scores, 2, seed=3, impl=impl).sum().backward()
    assert scores.grad.shape == (0, 7)


# ---------------------------------------------------------------- compressed_patch_embed arguments


def _embed_case(dim=8, feat=6, weight_feat=6):
    batch, frames, height, width, patch = 1, 2, 8, 8, 4
    inputs = [torch.randn(batch, frames, 3, height, width), torch.randn(batch, frames, 2, 2, 2),
              torch.randn(batch, frames, 3, height, width), torch.randn(batch, frames, feat)]
    params = []
    for channels in (3, 2, 3):
        params += [torch.randn(dim, channels, patch, patch), torch.randn(dim), torch.randn(frames, 4, dim)]
    params += [torch.randn(dim, weight_feat), torch.randn(dim), torch.randn(frames, dim)]
    return inputs, CompressedEmbedParams(*params), patch


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("weight_feat", [3, 9])
def test_compressed_embed_rejects_an_audio_weight_of_another_width(device, impl, weight_feat):
    inputs, params, patch = _embed_case(weight_feat=weight_feat)
    with pytest.raises(ValueError, match=r"params.audio_weight must have shape \(8, 6\)"):
        ops.compressed_patch_embed(*inputs, params, patch=patch, impl=impl)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_compressed_embed_rejects_zero_width(device, impl):
    inputs, params, patch = _embed_case(dim=0)
    with pytest.raises(ValueError, match="D >= 1"):
        ops.compressed_patch_embed(*inputs, params, patch=patch, impl=impl)


# ---------------------------------------------------------------- causality

@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("lq", [7, 5])
def test_chunk_attention_hides_non_finite_future_keys_and_values(device, impl, lq):
    """Queries of chunk t never see keys of later chunks, not even a NaN or inf in them (eq. 8)."""
    torch.manual_seed(0)
    q = torch.randn(2, 2, lq, 5, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 7, 5, dtype=torch.float64) for _ in range(2))
    bias = torch.randn(2, 7, dtype=torch.float64)
    clean = ops.chunk_causal_attention(q, k, v, chunk_size=3, key_bias=bias, impl=impl)
    k[:, :, 6, 1], v[:, :, 6, 2], v[:, :, 5, 0], bias[:, 6] = NAN, INF, NAN, NAN
    k.requires_grad_(), v.requires_grad_(), bias.requires_grad_()
    dirty = ops.chunk_causal_attention(q, k, v, chunk_size=3, key_bias=bias, impl=impl)
    early = lq - 4  # query rows at positions 0..2 (the first chunk)
    assert torch.equal(dirty[:, :, :early], clean[:, :, :early])
    assert dirty[:, :, -1].isnan().any()  # the last chunk sees them
    grad = torch.randn_like(dirty)
    grad[:, :, -1] = NAN  # a NaN gradient of the last query reaches only what that query saw
    dirty.backward(grad)
    assert torch.isfinite(q.grad[:, :, :early]).all()


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_chunk_attention_gradients_of_hidden_keys_stay_finite(device, impl):
    """A key's gradient comes only from queries that see it: NaNs of an earlier query stay out."""
    torch.manual_seed(1)
    q = torch.randn(1, 1, 6, 4, dtype=torch.float64)
    q[0, 0, 1] = NAN
    q.requires_grad_()
    k, v = (torch.randn(1, 1, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = ops.chunk_causal_attention(q, k, v, chunk_lens=[3, 2, 1], impl=impl)
    grad = torch.randn_like(out)
    grad[0, 0, 2] = NAN
    out.backward(grad)
    assert torch.isfinite(k.grad[:, :, 3:]).all() and torch.isfinite(v.grad[:, :, 3:]).all()
    assert torch.isfinite(q.grad[:, :, 3:]).all()


# ---------------------------------------------------------------- ranking rule


RANKED = [
    ([0.5, NAN, 0.5, -INF, 2.0], 3, [0, 2, 4]),
    ([NAN, -INF, NAN, 1.0], 3, [0, 1, 3]),
    ([NAN, NAN, NAN], 2, [0, 1]),
    ([INF, NAN, INF, 3.0], 2, [0, 2]),
]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", RANKED)
def test_topk_gather_ranks_nan_last(device, impl, dtype, case):
    values, k, expected = case
    scores = torch.tensor([values], dtype=dtype)
    x = torch.arange(len(values), dtype=dtype).reshape(1, -1, 1)
    selected, index = ops.topk_gather(x, scores, k, impl=impl)
    assert index.tolist() == [expected]
    assert selected[0, :, 0].tolist() == [float(i) for i in expected]


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("case", RANKED)
def test_perturbed_topk_without_noise_ranks_nan_last(device, impl, case):
    values, k, expected = case
    out = ops.perturbed_topk(torch.tensor([values]), k, num_samples=3, sigma=0.0, seed=0, impl=impl)
    assert out[0].argmax(-1).tolist() == expected
    assert torch.equal(out.sum(-1), torch.ones(1, k))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_topk_never_picks_nan_while_numbers_remain(device, impl):
    scores = torch.tensor([[0.1, NAN, 0.3, NAN, -0.2, 0.0]])
    out = ops.perturbed_topk(scores, 4, num_samples=64, sigma=0.5, seed=7, impl=impl)
    assert torch.equal(out[0, :, 1], torch.zeros(4)) and torch.equal(out[0, :, 3], torch.zeros(4))
    assert torch.allclose(out.sum(-1), torch.ones(1, 4))


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("replacement", [True, False])
def test_gumbel_topk_hard_pick_ranks_nan_last(device, impl, replacement):
    logits = torch.tensor([[NAN, 0.0, NAN, -1.0]])
    out = ops.gumbel_topk(logits, 2, hard=True, replacement=replacement, seed=3, impl=impl)
    assert out[0, :, 0].sum() == 0 and out[0, :, 2].sum() == 0
    assert torch.equal(out.sum(-1), torch.ones(1, 2))
    if not replacement:
        assert sorted(out[0].argmax(-1).tolist()) == [1, 3]
        out = ops.gumbel_topk(logits, 3, hard=True, replacement=False, seed=3, impl=impl)
        assert out[0, 2].argmax().item() == 0  # only NaNs left: the first of them


# ---------------------------------------------------------------- zero weights


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_unselected_non_finite_rows_never_reach_the_output(device, impl):
    x = torch.randn(2, 6, 3)
    x[:, 5] = NAN
    x[:, 4, 1] = INF
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, -5.0, -6.0]] * 2)
    out = ops.perturbed_topk_select(x, scores, 2, sigma=0.0, num_samples=2, seed=0, impl=impl)
    assert torch.equal(out, x[:, :2])
    picked = ops.gumbel_topk_select(x, torch.tensor([[30.0, 0, 0, 0, 0, 0]] * 2), 2, hard=True, seed=1, impl=impl)
    assert torch.equal(picked, x[:, [0, 0]])


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gumbel_topk_select_hard_returns_the_picked_rows_exactly(device, impl):
    torch.manual_seed(2)
    x, logits = torch.randn(3, 7, 5), torch.randn(3, 7)
    x[:, 3, 2] = NAN
    weights = ops.gumbel_topk(logits, 4, hard=True, seed=11, impl=impl)
    out = ops.gumbel_topk_select(x, logits, 4, hard=True, seed=11, impl=impl)
    expected = x.gather(1, weights.argmax(-1, keepdim=True).expand(-1, -1, 5))
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_hard_anchor_select_ignores_non_finite_pixels_outside_the_anchor(device, impl):
    x = torch.randn(1, 1, 4, 4, 2)
    x[0, 0, 3, 3] = NAN
    scores = torch.zeros(1, 1, 4, 4)
    scores[0, 0, :2, :2] = 1.0
    out = ops.anchor_select(x, scores, 2, stride=2, impl=impl)
    assert torch.equal(out[0, 0], x[0, 0, :2, :2])


# ---------------------------------------------------------------- parameters and numerics


@pytest.mark.parametrize("tau", [5e-324, 1e-310, 0.0, -1.0, INF, NAN])
def test_gumbel_tau_must_have_a_finite_reciprocal(tau):
    with pytest.raises(ValueError, match="tau"):
        ops.gumbel_topk(torch.randn(2, 5), 2, tau=tau, hard=False, seed=0)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchor_scores_do_not_depend_on_the_dynamic_range(device, impl, dtype):
    """A finfo.min-masked or infinite region must not swamp the small means of other anchors."""
    scores = torch.full((2, 6, 6), 1e-3, dtype=dtype)
    scores[:, :, 4:] = torch.finfo(dtype).min
    scores[1, 0, 5] = -INF
    scores[:, 2, 2] = 2e-3
    means = ops.anchor_scores(scores, 2, 1, impl=impl)
    expected = ops.anchor_scores(scores, 2, 1, impl="reference")
    assert torch.equal(means, expected)
    grid = means.reshape(2, 5, 5).double()
    expected_small = torch.full((5, 3), 1e-3, dtype=torch.float64)
    expected_small[1:3, 1:3] = 1.25e-3  # the windows covering the 2e-3 score
    for frame in range(2):
        torch.testing.assert_close(grid[frame, :, :3], expected_small, rtol=1e-6, atol=0)
    assert grid[1, 0, 4] == -INF
    # the hard pick is the 2e-3 region on every backend, not an anchor rounded up next to finfo.min
    pick = ops.anchor_select(torch.randn(2, 1, 6, 6, 1, dtype=dtype), scores[:, None], 2, stride=1, impl=impl)
    assert pick.shape == (2, 1, 2, 2, 1)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_anchor_scores_bfloat16_matches_the_reference(device, impl):
    torch.manual_seed(3)
    scores = torch.randn(3, 8, 8).to(torch.bfloat16)
    assert torch.equal(ops.anchor_scores(scores, 3, 2, impl=impl), ops.anchor_scores(scores, 3, 2, impl="reference"))


def test_anchor_reference_is_exact_for_small_windows_next_to_huge_ones():
    scores = torch.tensor([[[1e-3, 1e-3, -3.4e38, -3.4e38]]], dtype=torch.float32)
    means = ops.anchor_scores(scores, (1, 2), (1, 1), impl="reference")
    assert means[0, 0].item() == pytest.approx(1e-3) and math.isfinite(means[0, 1].item())


# ---------------------------------------------------------------- empty merges, Matching, draws


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("batch, n", [(0, 6), (2, 0), (0, 0)])
def test_merge_and_unmerge_accept_empty_inputs(device, impl, batch, n):
    empty = torch.zeros(batch, n, dtype=torch.int64)
    matching = ops.Matching(empty, torch.zeros(batch, 0, dtype=torch.int64), torch.zeros(batch, 0, dtype=torch.int64),
                            empty)
    x = torch.randn(batch, n, 3)
    merged, size = ops.merge(x, matching, impl=impl)
    assert merged.shape == (batch, n, 3) and size.shape == (batch, n)
    assert ops.unmerge(merged, matching, impl=impl).shape == (batch, n, 3)
    frames = torch.randn(batch, n, 2, 3)
    assert ops.merge(frames, matching, impl=impl)[0].shape == (batch, n, 2, 3)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_matching_with_int32_indices_is_rejected_on_every_backend(device, impl):
    matching = ops.bipartite_match(torch.randn(1, 6, 4), 2, impl="reference")
    as_int32 = ops.Matching(*(t.to(torch.int32) for t in matching))
    with pytest.raises(TypeError, match="matching.kept_index must have dtype"):
        ops.merge(torch.randn(1, 6, 3), as_int32, impl=impl)
    with pytest.raises(TypeError, match="matching.kept_index must have dtype"):
        ops.unmerge(torch.randn(1, 4, 3), as_int32, impl=impl)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_gumbel_topk_needs_at_least_one_item(device, impl):
    with pytest.raises(ValueError, match="L >= 1"):
        ops.gumbel_topk(torch.randn(2, 0), 1, seed=0, impl=impl)


# ---------------------------------------------------------------- double backward


def _double_backward_cases():
    def perturbed(impl):
        s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
        return s, ops.perturbed_topk(s, 2, num_samples=4, seed=0, impl=impl)

    def gumbel(impl):
        s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
        return s, ops.gumbel_topk(s, 2, hard=False, seed=0, impl=impl)

    def anchor(impl):
        x = torch.randn(1, 1, 4, 4, 2, dtype=torch.float64, requires_grad=True)
        return x, ops.anchor_select(x, torch.randn(1, 1, 4, 4, dtype=torch.float64), 2, impl=impl)

    def attention(impl):
        q = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
        return q, ops.chunk_causal_attention(q, q, q, chunk_size=2, impl=impl)

    def embed(impl):
        inputs, params, patch = _embed_case()
        inputs = [t.double().requires_grad_() for t in inputs]
        params = CompressedEmbedParams(*(p.double() for p in params))
        return inputs[0], ops.compressed_patch_embed(*inputs, params, patch=patch, impl=impl)

    return {"perturbed_topk": perturbed, "gumbel_topk": gumbel, "anchor_select": anchor,
            "chunk_causal_attention": attention, "compressed_patch_embed": embed}


@pytest.mark.parametrize("device, impl", ON_DEVICES)
@pytest.mark.parametrize("name", list(_double_backward_cases()))
def test_double_backward_is_refused_naming_the_op(device, impl, name):
    inp, out = _double_backward_cases()[name](impl)
    (grad,) = torch.autograd.grad(out.square().sum(), inp, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{name}: double backward"):
        grad.sum().backward()


# ---------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_chunk_attention_compiles_over_changing_lengths(device, impl):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    fn = torch.compile(lambda q: ops.chunk_causal_attention(q, q, q, chunk_size=3, impl=impl), fullgraph=True,
                       backend="aot_eager")
    for length in (7, 9, 10):
        q = torch.randn(1, 2, length, 4)
        torch.testing.assert_close(fn(q), ops.chunk_causal_attention(q, q, q, chunk_size=3, impl=impl))
    assert sum(counters["stats"].values()) >= 1  # it compiled (one graph per distinct chunk layout)


@pytest.mark.parametrize("device, impl", ON_DEVICES)
def test_perturbed_and_gumbel_compile_with_dynamic_shapes(device, impl):
    torch._dynamo.reset()
    perturbed = torch.compile(lambda s, sigma: ops.perturbed_topk(s, 2, num_samples=4, sigma=sigma, seed=1, impl=impl),
                              fullgraph=True, dynamic=True, backend="aot_eager")
    gumbel = torch.compile(lambda s, tau: ops.gumbel_topk(s, 2, tau=tau, hard=False, seed=1, impl=impl),
                           fullgraph=True, dynamic=True, backend="aot_eager")
    for batch, length, value in ((2, 5, 0.1), (3, 6, 0.2)):
        s = torch.randn(batch, length)
        assert torch.equal(perturbed(s, value), ops.perturbed_topk(s, 2, num_samples=4, sigma=value, seed=1, impl=impl))
        torch.testing.assert_close(gumbel(s, value + 1), ops.gumbel_topk(s, 2, tau=value + 1, hard=False, seed=1,
                                                                          impl=impl))


def test_seed_none_under_compile_is_refused_naming_the_alternative():
    torch._dynamo.reset()
    fn = torch.compile(lambda s: ops.gumbel_topk(s, 2, impl="reference"), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="explicit int seed"):
        fn(torch.randn(2, 5))
    fn = torch.compile(lambda s: ops.perturbed_topk(s, 2, impl="reference"), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="explicit int seed"):
        fn(torch.randn(2, 5))
