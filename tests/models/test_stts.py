"""Behaviour of the STTS models (vidsel.models.stts): grammar, token counts, shapes, training, eval.

The selector layers themselves are tested in tests/nn/test_stts_selectors.py. Small configs
throughout (reduced width, depth, frames and resolution). Single-threaded: the machine is shared
and tiny models run faster on one thread than on two contended ones.
"""

import pytest
import torch
from torch import nn

import vidsel
from tests.helpers import assert_close, fused_device_backends
from vidsel.models import stts
from vidsel.models.stts import SelectionSpec, parse_selections

SMALL = {
    # 8 frames at 64² -> MViT grid (4, 16, 16) before block 0, (4, 4, 4) before block 2
    "mvit_b16": dict(embed_dim=16, stage_depths=(1, 1, 2, 1), num_frames=8, img_size=64, num_classes=5),
    # 8 frames at 56² -> Swin grid (4, 14, 14), window (2, 7, 7)
    "swin3d_b": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(2, 7, 7),
                     num_frames=8, img_size=56, num_classes=5),
    # 4 frames at 64², patch 16 -> grid (4, 4, 4)
    "timesformer_8x224": dict(embed_dim=32, depth=3, num_heads=2, num_frames=4, img_size=64, num_classes=5),
}
SMALL_NAMES = {
    "mvit_b16": "mvit_b16-T0.5@0-S0.6@2",
    "swin3d_b": "swin3d_b-T0.5@1",
    "timesformer_8x224": "timesformer_8x224-T0.75@1-S0.6@1",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contended ones


def small_model(name: str, **overrides):
    backbone = stts.split_name(name)[0]
    return vidsel.create_model(name, **{**SMALL[backbone], "num_samples": 64, **overrides})


# --- grammar -----------------------------------------------------------------------------


def test_grammar_parses_the_papers_notation():
    backbone, specs = stts.split_name("mvit_b16-S0.9@4-T0.6@0")
    assert backbone == "mvit_b16"
    assert specs == (SelectionSpec("T", 0.6, 0), SelectionSpec("S", 0.9, 4))  # ordered by block
    assert stts.format_selections(parse_selections("T0.9@0-T0.7@4-S0.9@0-S0.7@4")) == "-T0.9@0-S0.9@0-T0.7@4-S0.7@4"
    for bad in ("mvit_b16-T0.6", "mvit_b16-X0.5@0", "vit-T0.5@0", "mvit_b16-T1.5@0", "mvit_b16-T0@0"):
        with pytest.raises(ValueError):
            vidsel.create_model(bad)


def test_registry_lists_paper_configs_and_parses_unregistered_strings():
    names = vidsel.list_models("mvit_b16*")
    assert {"mvit_b16", "mvit_b16-T0.6@0-S0.9@4", "mvit_b16-T0.8@0-S0.7@0"} <= set(names)
    assert "swin3d_b-T0.6@0" in vidsel.list_models("swin3d_b*")
    unregistered = "mvit_b16-T0.7@1-S0.8@2"
    assert unregistered not in vidsel.list_models()
    model = small_model(unregistered)
    assert [s.label for s in model.specs] == ["T0.7@1", "S0.8@2"]


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="temporal selections only"):
        small_model("swin3d_b-S0.5@0")
    with pytest.raises(ValueError, match="block 9 does not exist"):
        small_model("mvit_b16-T0.5@9")
    with pytest.raises(ValueError, match="unknown config field"):
        vidsel.create_model("mvit_b16", not_a_field=1)


# --- models -------------------------------------------------------------------------------------


def _record_grids(model):
    """Forward hooks recording the token grid entering every block and what every selector returns.

    Returns (grids, selected, handles): grids[i] is (T, H, W) for MViT / Swin, (T, L) for the
    TimeSformer (its blocks take the patches as (B, T, L, D), the class token apart); selected[j]
    is the (T, H, W) grid selector j returned.
    """
    grids, selected = [], []
    backbone = model.backbone
    if isinstance(model, stts.STTSSwin3d):
        blocks = [b for layer in backbone.features if isinstance(layer, nn.Sequential) for b in layer]
        hook = lambda m, args: grids.append(tuple(args[0].shape[1:4]))  # noqa: E731
    elif isinstance(model, stts.STTSTimeSformer):
        blocks = list(backbone.blocks)

        def hook(module, args):
            cls, x = args
            assert cls.shape[1] == 1 and x.dim() == 4 and x.shape[0] == cls.shape[0]
            grids.append(tuple(x.shape[1:3]))
    else:
        blocks = list(backbone.blocks)

        def hook(module, args):
            x, thw = args
            assert x.shape[1] == 1 + thw[0] * thw[1] * thw[2]  # class token + the grid
            grids.append(tuple(thw))

    handles = [b.register_forward_pre_hook(hook) for b in blocks]
    handles += [s.register_forward_hook(lambda m, args, out: selected.append(tuple(out.shape[1:4])))
                for s in model.selectors]
    return grids, selected, handles


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_forward_shapes_and_token_counts_follow_the_formulas(backbone):
    model = small_model(SMALL_NAMES[backbone]).eval()
    (clip,) = model.example_inputs(batch_size=2)
    grids, selected, handles = _record_grids(model)
    with torch.no_grad():
        logits = model(clip)
    for h in handles:
        h.remove()
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    plan = model.token_grid_plan()
    if backbone == "timesformer_8x224":
        assert grids == [(t, h * w) for t, h, w in plan]
    else:
        assert grids == plan
    # the grid the last selection before a block returns is the plan's grid of that block
    last = {spec.block: index for index, spec in enumerate(model.specs)}
    assert len(selected) == len(model.specs)
    assert {block: selected[index] for block, index in last.items()} == {block: plan[block] for block in last}


def test_token_grid_plan_of_the_paper_configs():
    with torch.device("meta"):
        plan = vidsel.create_model("mvit_b16-T0.6@0-S0.9@4").token_grid_plan()
        # blocks 1 and 3 pool their queries (56 -> 28 -> 14); the anchor makes 14 -> 13 before block 4
        assert plan[0] == (5, 56, 56) and plan[3] == (5, 28, 28) and plan[4] == (5, 13, 13)
        assert plan[15] == (5, 7, 7)  # 13 -> 7 by the stride-2 query pooling of block 14
        plan = vidsel.create_model("mvit_b16-T0.8@0-S0.7@0").token_grid_plan()
        assert plan[0] == (6, 47, 47) and plan[2] == (6, 24, 24)  # block 1 pools 47 -> 24
        assert vidsel.create_model("swin3d_b-T0.6@0").token_grid_plan()[0] == (10, 56, 56)


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_adamw_step_lowers_loss_and_trains_the_scorers_through_perturbed_topk(backbone):
    model = small_model(SMALL_NAMES[backbone], **({"dropout": 0.0} if backbone == "mvit_b16" else {})).train()
    model.set_sigma(0.1)
    (clip,) = model.example_inputs(batch_size=4)
    labels = torch.arange(4) % 5
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone_parameters(), "lr": 1e-3}, {"params": model.selector_parameters(), "lr": 1e-2}]
    )

    def loss_with_fixed_noise():
        torch.manual_seed(123)  # the same perturbations / stochastic depth in both passes
        return nn.functional.cross_entropy(model(clip), labels)

    loss = loss_with_fixed_noise()
    loss.backward()
    for selector in model.selectors:
        for weight in (selector.scorer.local.weight, selector.scorer.score.weight):
            assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        assert loss_with_fixed_noise() < loss


def test_sigma_zero_trains_with_hard_topk_and_no_scorer_gradient():
    # §3.2: at sigma = 0 the perturbed top-k is the hard top-k and the scorer's gradient vanishes
    model = small_model("mvit_b16-T0.5@0-S0.6@2").train()
    model.set_sigma(0.0)
    model(model.example_inputs(2)[0]).sum().backward()
    for selector in model.selectors:
        assert all(p.grad is None or not p.grad.any() for p in selector.scorer.parameters())


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_eval_is_hard_and_deterministic(backbone):
    model = small_model(SMALL_NAMES[backbone])
    (clip,) = model.example_inputs(batch_size=2)
    model.eval()
    with torch.no_grad():
        first, second = model(clip), model(clip)
        torch.manual_seed(5)
        third = model(clip)
    assert torch.equal(first, second) and torch.equal(first, third)
    selector = model.selectors[0]
    grid = torch.randn(2, 4, 4, 4, selector.dim)
    with torch.no_grad():
        hard = selector.eval()(grid)
        soft = selector.train()(grid)  # the perturbed top-k mixes frames / anchors
    assert hard.shape == soft.shape and not torch.allclose(hard, soft)


@pytest.mark.parametrize("device, impl", fused_device_backends())
def test_every_op_backend_gives_the_reference_model_output(device, impl):
    # the selection ops are the only backend-dependent part: same weights, same clip, same output
    name = "timesformer_8x224-T0.75@1-S0.6@1"
    reference = small_model(name, impl="reference").eval()
    other = small_model(name, impl=impl).eval()
    other.load_state_dict(reference.state_dict())
    (clip,) = reference.example_inputs(batch_size=2)
    with torch.no_grad():
        assert_close(other(clip), reference(clip))


def test_explicit_anchor_stride():
    model = small_model("mvit_b16-S0.6@2", anchor_stride=1)
    assert model.selectors[0].anchor_stride(4, 4) == 1
    assert model.selectors[0].side(4, 4) == 3


@pytest.mark.parametrize("name", ["ScorerNetwork", "TemporalSelector", "AnchorSpatialSelector", "min_max_normalize"])
def test_old_selector_paths_warn_and_alias_the_nn_layers(name):
    from vidsel.nn import stts_selectors

    with pytest.warns(DeprecationWarning, match=f"vidsel.models.stts.{name} is deprecated"):
        old = getattr(stts, name)
    assert old is getattr(stts_selectors, name)
    with pytest.warns(DeprecationWarning):
        exec(f"from vidsel.models.stts import {name}", {})
    with pytest.raises(AttributeError):
        stts.NotAName  # noqa: B018
