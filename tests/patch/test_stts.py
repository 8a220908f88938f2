"""vidsel.patch.stts on torchvision MViT (mvit_v1_b) and SwinTransformer3d (swin3d_b)."""

import copy

import pytest
import torch

import vidsel
from tests.helpers import assert_close
from vidsel import flops
from vidsel.patch import stts

# Small configs of the same torchvision classes (vidsel's STTS models wrap them as .backbone).
SMALL = {
    "mvit_b16": dict(embed_dim=16, stage_depths=(1, 1, 2, 1), num_frames=8, img_size=64, num_classes=5),
    "swin3d_b": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(2, 7, 7),
                     num_frames=8, img_size=56, num_classes=5),
}
CASES = {"mvit_b16": "T0.5@0-S0.6@2", "swin3d_b": "T0.5@1"}


def vidsel_and_torchvision(backbone: str, selections: str):
    """vidsel's STTS model and an unpatched copy of its torchvision backbone (same weights)."""
    model = vidsel.create_model(f"{backbone}-{selections}", **SMALL[backbone], num_samples=32).eval()
    return model, copy.deepcopy(model.backbone)


def run(model, clip):
    with torch.no_grad():
        return model(clip)


@pytest.mark.parametrize("backbone", CASES)
def test_equals_vidsel_stts_with_its_selector_weights(backbone):
    model, torchvision_model = vidsel_and_torchvision(backbone, CASES[backbone])
    clip = model.example_inputs(2)[0]
    handle = stts(torchvision_model, CASES[backbone])
    torchvision_model.stts_selectors.load_state_dict(model.selectors.state_dict())
    assert torch.equal(run(torchvision_model, clip), run(model, clip))
    assert handle.patched == len({s.block for s in model.specs})
    assert handle.state.grid_per_block == model.token_grid_plan()  # the count formulas of vidsel.models.stts


@pytest.mark.parametrize("backbone", CASES)
def test_keeping_everything_equals_unpatched(backbone):
    model, torchvision_model = vidsel_and_torchvision(backbone, CASES[backbone])
    clip = model.example_inputs(2)[0]
    expected = run(torchvision_model, clip)
    stts(torchvision_model, "T1@0-T1@1")
    assert (run(torchvision_model, clip) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("backbone", CASES)
def test_remove_restores_bitwise(backbone):
    model, torchvision_model = vidsel_and_torchvision(backbone, CASES[backbone])
    clip = model.example_inputs(2)[0]
    expected = run(torchvision_model, clip)
    modules, state = list(torchvision_model.modules()), torchvision_model.state_dict()
    handle = stts(torchvision_model, CASES[backbone])
    assert set(torchvision_model.state_dict()) > set(state)  # + stts_selectors.*
    handle.remove()
    assert list(torchvision_model.modules()) == modules
    after = torchvision_model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(run(torchvision_model, clip), expected)
    assert not any(block._forward_pre_hooks for block in torchvision_model.modules())


@pytest.mark.parametrize("name, build, frames", [
    ("mvit_b16-T0.6@0-S0.9@4", "mvit_v1_b", 16),
    ("swin3d_b-T0.6@0", "swin3d_b", 32),
])
def test_flops_equal_vidsel_stts(name, build, frames):
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models.video, build)()
    clip = torch.empty(1, 3, frames, 224, 224, device="meta")
    unpatched = flops.count(model, clip).gmacs
    stts(model, name.split("-", 1)[1])
    patched = flops.count(model, clip).gmacs
    assert patched == pytest.approx(flops.count_model(name).gmacs, rel=1e-12)
    assert patched < 0.8 * unpatched


def test_training_mode_trains_the_scorers():
    model, torchvision_model = vidsel_and_torchvision("mvit_b16", CASES["mvit_b16"])
    stts(torchvision_model, CASES["mvit_b16"], num_samples=32).model.train()
    logits = torchvision_model(model.example_inputs(2)[0])  # perturbed top-k (σ = 0.1)
    logits.square().mean().backward()
    scorer_grads = [p.grad for p in torchvision_model.stts_selectors.parameters()]
    assert all(g is not None for g in scorer_grads) and any(g.abs().sum() > 0 for g in scorer_grads)


def test_torch_compile_matches_eager():
    model, torchvision_model = vidsel_and_torchvision("swin3d_b", CASES["swin3d_b"])
    clip = model.example_inputs(1)[0]
    stts(torchvision_model, CASES["swin3d_b"])
    expected = run(torchvision_model, clip)
    compiled = torch.compile(torchvision_model, fullgraph=True, backend="aot_eager")
    assert_close(run(compiled, clip), expected)


def test_errors():
    with pytest.raises(TypeError, match=r"Linear.*MViT.*SwinTransformer3d"):
        stts(torch.nn.Linear(2, 2), "T0.5@0")
    _, swin = vidsel_and_torchvision("swin3d_b", CASES["swin3d_b"])
    with pytest.raises(ValueError, match="temporal selections only"):
        stts(swin, "S0.5@0")
    with pytest.raises(ValueError, match="block 9 does not exist"):
        stts(swin, "T0.5@9")
    with pytest.raises(ValueError, match="ratio"):
        stts(swin, "T1.5@0")
    with pytest.raises(ValueError, match="at least one"):
        stts(swin, "")
    handle = stts(swin, "T0.5@0")
    with pytest.raises(ValueError, match="already patched"):
        stts(swin, "T0.5@0")
    handle.remove()
