"""GFLOPs and parameters of the STTS models against the paper (STTS Tables 2, 4, 7; fvcore convention).

Every count runs on the meta device (no memory, no compute), eval mode (hard top-k), batch 1, one
view, scorer networks included — the setting of STTS Table 4.
"""

import pytest
import torch
from torchvision.models.video import mvit_v1_b, swin3d_b

from vidsel import flops
from vidsel.models.stts import PAPER_GFLOPS

# STTS Table 4 rows that do not reproduce as labelled (see README "STTS GFLOPs"): the labelled
# anchors (43×43 at block 0, 8×8 at block 4) cost far more than printed.
NOT_AS_LABELLED = ("mvit_b16-S0.6@0", "mvit_b16-S0.3@4")
REPRODUCED = {name: value for name, value in PAPER_GFLOPS.items() if name not in NOT_AS_LABELLED}


def gmacs(name: str, **overrides) -> float:
    return flops.count_model(name, **overrides).gmacs


@pytest.mark.parametrize("name", sorted(REPRODUCED))
def test_gflops_match_paper_within_one_percent(name):
    assert gmacs(name) == pytest.approx(REPRODUCED[name], rel=0.01)


def test_swin_temporal_selection_matches_table2():
    # Table 2: VideoSwin-B-T0.8 = 3.02 TFLOPs over 4x3 views -> 251.7 GFLOPs per view.
    assert gmacs("swin3d_b-T0.8@0") == pytest.approx(3020 / 12, rel=0.01)


def test_timesformer_baseline_matches_196_gflops():
    assert gmacs("timesformer_8x224") == pytest.approx(196, rel=0.01)


def test_table4_spatial_rows_do_not_reproduce_as_labelled_but_a_6x6_anchor_gives_35_2():
    # S0.6@0 keeps a 43x43 anchor of the 56x56 grid, S0.3@4 an 8x8 anchor of 14x14: both far above
    # the printed 31.2 / 35.2. A 6x6 anchor at block 4 (ratio 0.18) does give 35.2.
    for name in NOT_AS_LABELLED:
        assert gmacs(name) > 1.1 * PAPER_GFLOPS[name]
    assert gmacs("mvit_b16-S0.18@4") == pytest.approx(35.2, rel=0.01)


def test_selection_before_block_zero_and_four_compose():
    # joint selection costs less than either single selection alone (same ratios)
    joint = gmacs("mvit_b16-T0.6@0-S0.9@4")
    assert joint < gmacs("mvit_b16-T0.6@0") and joint < gmacs("mvit_b16-S0.9@4")


def _state_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_backbones_are_the_torchvision_models():
    from vidsel.models import create_model

    with torch.device("meta"):
        ours_mvit = create_model("mvit_b16").backbone
        ours_swin = create_model("swin3d_b").backbone
        assert _state_shapes(ours_mvit) == _state_shapes(mvit_v1_b(weights=None))
        assert _state_shapes(ours_swin) == _state_shapes(swin3d_b(weights=None))


def test_parameter_counts():
    # MViT-B 36.6 M (MViT paper), Video Swin-B 88 M (Video Swin paper), TimeSformer 121.4 M + head
    assert flops.count_model("mvit_b16").params == pytest.approx(36.6e6, rel=0.005)
    assert flops.count_model("swin3d_b").params == pytest.approx(88.0e6, rel=0.005)
    assert flops.count_model("timesformer_8x224").params == pytest.approx(121.6e6, rel=0.005)


def test_scorer_overhead_is_below_the_papers():
    # §4.2: "the parameters and FLOPs of the scorer network are only 1.0% and 0.7% of those in the
    # original MViT-B16 backbone". Ours (eq. 2-3 as written) is smaller still, and not zero.
    base = flops.count_model("mvit_b16")
    stts = flops.count_model("mvit_b16-T0.6@0-S0.9@4")
    scorer_params = stts.params - base.params
    scorer_gmacs = stts.by_module["selectors"]
    assert 0 < scorer_params <= 0.010 * base.params
    assert 0 < scorer_gmacs <= 0.007 * base.gmacs
