"""SegmentSelector / RegionSelector (MIST eq. 2–5): shapes, the selected rows, train vs eval rules,
determinism, straight-through gradients, the non-parametric selector, argument errors."""

import pytest
import torch

from tests.helpers import assert_close
from vidsel.nn import RegionSelector, SegmentSelector

B, K, T, N, D = 3, 6, 2, 5, 16


def _inputs():
    patches = torch.randn(B, K, T, N, D)
    return patches, patches[:, :, :, 0].mean(2), torch.randn(B, D)


def _gathered(x, index):
    """x (B, L, ...) rows at index (B, k)."""
    return x[torch.arange(x.shape[0])[:, None], index]


@pytest.mark.parametrize("selector", ["gumbel", "gumbel_no_replacement", "attention"])
@pytest.mark.parametrize("training", [True, False])
def test_segment_selector_returns_the_indexed_segments(selector, training):
    patches, segments, question = _inputs()
    layer = SegmentSelector(D, 2, selector=selector).train(training)
    selected, index = layer(patches, segments, question)
    assert selected.shape == (B, 2, T, N, D) and index.shape == (B, 2) and index.dtype == torch.int64
    assert bool(((index >= 0) & (index < K)).all())
    assert_close(selected, _gathered(patches, index))
    if selector != "gumbel" or not training:  # without replacement / the hard top-k: distinct segments
        assert bool((index[:, 0] != index[:, 1]).all())


def test_eval_is_the_deterministic_top_k_of_the_scores():
    patches, segments, question = _inputs()
    layer = SegmentSelector(D, 3).eval()
    first = layer(patches, segments, question)
    torch.manual_seed(123)  # eval draws no noise: the generator state does not matter
    second = layer(patches, segments, question)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    expected = layer.scores(segments, question).topk(3, dim=1).indices  # highest score first
    assert torch.equal(first[1], expected)


def test_training_draws_follow_torch_seed_and_vary_between_calls():
    patches, segments, question = _inputs()
    layer = SegmentSelector(D, 2, tau=0.5).train()
    with torch.no_grad():
        layer.g_q.weight.mul_(0.0)  # flat scores: every draw is pure Gumbel noise
    torch.manual_seed(7)
    a = layer(patches, segments, question)[1]
    torch.manual_seed(7)
    b = layer(patches, segments, question)[1]
    draws = torch.stack([layer(patches, segments, question)[1] for _ in range(8)])
    assert torch.equal(a, b)
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1


def test_straight_through_gradients_reach_both_projections_and_the_patches():
    patches, segments, question = _inputs()
    patches.requires_grad_(True)
    seg = SegmentSelector(D, 2).train()
    reg = RegionSelector(D, 3).train()
    selected, _ = seg(patches, segments, question)
    regions, _ = reg(selected.flatten(1, 2), question)
    (regions * torch.randn_like(regions)).sum().backward()
    for name, param in [*seg.named_parameters(), *reg.named_parameters()]:
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    assert bool(patches.grad.abs().sum() > 0)


def test_eval_gives_no_gradient_to_the_scores():
    patches, segments, question = _inputs()
    layer = SegmentSelector(D, 2).eval()
    selected, _ = layer(patches.requires_grad_(True), segments, question)
    selected.sum().backward()
    assert layer.g_q.weight.grad is None or not bool(layer.g_q.weight.grad.any())


def test_attention_selector_is_parameter_free_cosine_top_k():
    patches, segments, question = _inputs()
    layer = SegmentSelector(D, 2, selector="attention").train()
    assert not list(layer.parameters())
    _, index = layer(patches, segments, question)
    cosine = torch.nn.functional.cosine_similarity(segments, question[:, None], dim=-1)
    assert torch.equal(index, cosine.topk(2, dim=1).indices)


@pytest.mark.parametrize("selector", ["gumbel", "gumbel_no_replacement", "attention"])
def test_region_selector_shapes_and_rows(selector):
    frames = torch.randn(B, 4, N, D)
    question = torch.randn(B, D)
    for training in (True, False):
        layer = RegionSelector(D, 3, selector=selector).train(training)
        selected, index = layer(frames, question)
        assert selected.shape == (B, 4, 3, D) and index.shape == (B, 4, 3)
        flat = frames.reshape(B * 4, N, D)
        assert_close(selected.reshape(B * 4, 3, D), _gathered(flat, index.reshape(B * 4, 3)))


def test_region_selector_eval_picks_the_highest_scoring_patches():
    frames, question = torch.randn(B, 4, N, D), torch.randn(B, D)
    layer = RegionSelector(D, 2).eval()
    _, index = layer(frames, question)
    assert torch.equal(index, layer.scores(frames, question).topk(2, dim=-1).indices)


def test_bad_arguments_raise_clear_errors():
    patches, segments, question = _inputs()
    with pytest.raises(ValueError, match="selector"):
        SegmentSelector(D, 2, selector="argmax")
    with pytest.raises(ValueError, match="k must"):
        SegmentSelector(D, 0)
    with pytest.raises(ValueError, match="tau"):
        RegionSelector(D, 2, tau=0.0)
    with pytest.raises(ValueError, match=r"k=7 must be <= the number of segments K=6"):
        SegmentSelector(D, 7)(patches, segments, question)
    with pytest.raises(ValueError, match="patches must have shape"):
        SegmentSelector(D, 2)(patches[..., :8], segments, question)
    with pytest.raises(ValueError, match="segments must be"):
        SegmentSelector(D, 2)(patches, segments[:, :3], question)
    with pytest.raises(TypeError, match="question must be a torch.Tensor"):
        SegmentSelector(D, 2)(patches, segments, None)
    with pytest.raises(ValueError, match=r"j=6 must be <= the number of patches per frame N=5"):
        RegionSelector(D, 6)(patches[:, 0], question)
    with pytest.raises(ValueError, match="frames must have shape"):
        RegionSelector(D, 2)(patches, question)
