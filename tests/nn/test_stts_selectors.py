"""STTS selector layers (vidsel.nn.stts_selectors): scorer eq. 2–3, temporal selection eq. 9, anchor
spatial selection (§3.3), the ratio -> count rules, the σ schedule, and a small learning check.

Grids are (B, T, H, W, C). The models that compose these layers are tested in tests/models/test_stts.py.
"""

import pytest
import torch
from torch import nn

import vidsel.nn
from vidsel.nn import AnchorSpatialSelector, ScorerNetwork, TemporalSelector
from vidsel.nn.stts_selectors import anchor_side, frames_kept, min_max_normalize, sigma_at


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contended ones


# --- count rules and σ schedule -----------------------------------------------------------------


def test_ratio_to_count_rules():
    assert [frames_kept(8, r) for r in (0.3, 0.5, 0.6, 0.8, 0.9, 1.0)] == [2, 4, 5, 6, 7, 8]
    assert frames_kept(16, 0.6) == 10 and frames_kept(4, 0.01) == 1
    assert anchor_side(14, 14, 0.9) == 13 and anchor_side(56, 56, 0.7) == 47
    assert anchor_side(56, 56, 0.6) == 43 and anchor_side(14, 14, 0.3) == 8 and anchor_side(14, 14, 0.18) == 6


def test_sigma_decays_linearly_to_zero():
    assert sigma_at(0, 100, 0.1) == pytest.approx(0.1)
    assert sigma_at(25, 100, 0.1) == pytest.approx(0.075)
    assert sigma_at(100, 100, 0.1) == 0.0 and sigma_at(150, 100, 0.1) == 0.0
    for bad in ((0, 0, 0.1), (-1, 10, 0.1), (0, 10, -0.1)):
        with pytest.raises(ValueError):
            sigma_at(*bad)


# --- scorer and selectors -----------------------------------------------------------------------


def test_scorer_is_min_max_normalised_and_uses_the_global_feature():
    scorer = ScorerNetwork(12)
    tokens = torch.randn(3, 7, 12)
    scores = scorer(tokens)
    assert scores.shape == (3, 7)
    assert torch.allclose(scores.amin(1), torch.zeros(3)) and torch.allclose(scores.amax(1), torch.ones(3), atol=1e-4)
    # eq. 2-3: a token's score depends on the others through the mean (global) feature
    changed = tokens.clone()
    changed[:, 1:] = torch.randn(3, 6, 12)
    assert not torch.allclose(scorer.raw_scores(tokens)[:, 0], scorer.raw_scores(changed)[:, 0])


def test_temporal_selector_eval_keeps_the_top_frames_in_order():
    selector = TemporalSelector(8, 0.5).eval()
    grid = torch.randn(2, 6, 3, 3, 8)
    out = selector(grid)
    assert out.shape == (2, 3, 3, 3, 8)
    best = selector.frame_scores(grid).topk(3, dim=1).indices.sort(dim=1).values
    expected = torch.stack([grid[b, best[b]] for b in range(2)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_anchor_selector_eval_keeps_one_square_window_per_frame():
    selector = AnchorSpatialSelector(8, 0.5).eval()
    grid = torch.randn(2, 3, 9, 9, 8)
    out = selector(grid)
    side, stride = anchor_side(9, 9, 0.5), selector.anchor_stride(9, 9)
    assert (side, stride) == (6, 1) and out.shape == (2, 3, 6, 6, 8)
    for b in range(2):
        for t in range(3):
            windows = [grid[b, t, r:r + side, c:c + side] for r in range(0, 4, stride) for c in range(0, 4, stride)]
            assert any(torch.equal(out[b, t], w) for w in windows)


def test_anchor_stride_default_and_explicit():
    # default: max((H - a) // 2, 1) — at most three anchor positions per axis
    assert AnchorSpatialSelector(8, 0.7).anchor_stride(56, 56) == 4  # a = 47: rows 0, 4, 8
    assert AnchorSpatialSelector(8, 0.7, stride=2).anchor_stride(56, 56) == 2


def test_min_max_normalize_maps_each_row_to_unit_range():
    scores = torch.tensor([[3.0, 1.0, 2.0], [-4.0, 0.0, 4.0]])
    torch.testing.assert_close(min_max_normalize(scores), torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.5, 1.0]]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer_class", [TemporalSelector, AnchorSpatialSelector])
def test_training_with_sigma_mixes_tokens_and_trains_the_scorer(layer_class):
    # eq. 7-8: with σ > 0 the output is the perturbed indicator applied to the grid, and the scorer
    # gets a gradient; at σ = 0 training gives exactly the eval (hard top-k) output
    layer = layer_class(8, 0.5, num_samples=64)
    grid = torch.randn(2, 4, 6, 6, 8)
    with torch.no_grad():
        hard = layer.eval()(grid)
    layer.train()
    layer.sigma = 0.0
    with torch.no_grad():
        assert torch.equal(layer(grid), hard)
    layer.sigma = 0.5
    soft = layer(grid)
    assert soft.shape == hard.shape and not torch.allclose(soft, hard)
    soft.square().sum().backward()
    assert layer.scorer.local.weight.grad is not None and layer.scorer.local.weight.grad.abs().sum() > 0


def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="ratio"):
        TemporalSelector(8, 0.0)
    with pytest.raises(ValueError, match="ratio"):
        AnchorSpatialSelector(8, 1.5)
    with pytest.raises(ValueError, match="stride"):
        AnchorSpatialSelector(8, 0.5, stride=0)
    with pytest.raises(ValueError, match="dim"):
        ScorerNetwork(0)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, L, 12\)"):
        ScorerNetwork(12)(torch.randn(2, 5, 10))
    for layer in (TemporalSelector(8, 0.5), AnchorSpatialSelector(8, 0.5)):
        with pytest.raises(ValueError, match=r"grid must have shape \(B, T, H, W, 8\)"):
            layer(torch.randn(2, 4, 16, 8))  # (B, T, L, C): not a grid
        with pytest.raises(ValueError, match=r"grid must have shape \(B, T, H, W, 8\)"):
            layer(torch.randn(2, 4, 3, 3, 6))  # wrong channels


def test_layers_are_exported_from_vidsel_nn():
    for name in ("ScorerNetwork", "TemporalSelector", "AnchorSpatialSelector"):
        assert name in vidsel.nn.__all__
        assert getattr(vidsel.nn, name).__module__ == "vidsel.nn.stts_selectors"


# --- learning -------------------------------------------------------------------------------------


def test_learning_check_selector_finds_the_informative_frame():
    """Only one of T = 8 frames carries the label (a class prototype added to its tokens); the rest
    is noise. A temporal selector keeping K = 1 frame and a linear head, trained end to end through
    the perturbed top-k (sigma decayed linearly to 0), must then pick that frame >= 90% of the time
    in eval (hard top-1); chance is 1/8."""
    generator = torch.Generator().manual_seed(0)
    frames, classes, dim = 8, 4, 16
    prototypes = torch.randn(classes, dim, generator=generator)

    def clips(n):
        labels = torch.randint(0, classes, (n,), generator=generator)
        where = torch.randint(0, frames, (n,), generator=generator)
        grid = torch.randn(n, frames, 2, 2, dim, generator=generator)
        grid[torch.arange(n), where] += 2 * prototypes[labels][:, None, None, :]
        return grid, labels, where

    selector = TemporalSelector(dim, 1 / frames, num_samples=100)
    head = nn.Linear(dim, classes)
    optimizer = torch.optim.AdamW([*selector.parameters(), *head.parameters()], lr=1e-2)
    steps = 100
    selector.train()
    for step in range(steps):
        selector.sigma = sigma_at(step, steps, 0.5)
        grid, labels, _ = clips(64)
        loss = nn.functional.cross_entropy(head(selector(grid).mean(dim=(1, 2, 3))), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    selector.eval()
    grid, _, where = clips(512)
    with torch.no_grad():
        kept = selector(grid)[:, 0]
    hits = (kept == grid[torch.arange(512), where]).flatten(1).all(dim=1).float().mean().item()
    assert hits >= 0.9

