"""GFLOPs of the TESTA / ToMe / TimeSformer encoders against the papers (TESTA Tables 1, 5, 6).

Every row is counted twice: by `vidsel.flops` (FlopCounterMode on the meta device, full size, batch 1)
and by `fvcore_gmacs_*` below, an independent analytic count in fvcore's convention (matmul /
linear / conv multiply-adds, 5 per LayerNorm element, attention q·kᵀ and attn·v, the bipartite
|A|x|B| key similarities; softmax, GELU, adds and merges free). Both must agree, and be within 1%
of the paper.
"""

import io
import contextlib

import pytest
import torch
from torch.utils.flop_counter import flop_registry

import vidsel.models.testa  # noqa: F401  (registers the configs)
from vidsel import flops
from vidsel.models.testa import JointConfig, JointEncoder, TestaConfig, TestaEncoder

D, HEAD_DIM, MLP, DEPTH, PATCHES, PATCH_PIXELS = 768, 64, 3072, 12, 196, 3 * 16 * 16


def _layer_norm(tokens: int) -> int:
    return 5 * tokens * D


def _similarity(n: int, removed: int, protected: int = 0) -> int:
    """Alternate partition of the n - protected free tokens: ceil/2 x floor/2 cosine products."""
    free = n - protected
    return ((free + 1) // 2) * (free // 2) * HEAD_DIM if removed else 0


def fvcore_gmacs_testa(frames: int, r_frames: int = 0, r_patches: int = 0, patches: int = PATCHES) -> float:
    """TESTA (divided space-time) in fvcore's convention, TAM/SAM per §3.2."""
    macs = frames * patches * PATCH_PIXELS * D  # patch embedding
    for _ in range(DEPTH):
        tokens = frames * patches
        macs += _layer_norm(tokens) + 3 * tokens * D * D + 2 * patches * frames * frames * D  # temporal qkv, attn
        macs += 2 * tokens * D * D  # temporal proj + temporal_fc
        removed = min(r_frames, (frames - 1) // 2)
        macs += _similarity(frames, removed, protected=1)
        frames -= removed
        per_frame = patches + 1  # CLS copied into every frame
        macs += frames * (_layer_norm(per_frame) + 4 * per_frame * D * D + 2 * per_frame * per_frame * D)
        removed = min(r_patches, patches // 2)
        macs += frames * _similarity(patches, removed)
        patches -= removed
        tokens = 1 + frames * patches
        macs += _layer_norm(tokens) + 2 * tokens * D * MLP
    return (macs + _layer_norm(1 + frames * patches)) / 1e9


def fvcore_gmacs_joint(frames: int, r: int = 0, patches: int = PATCHES) -> float:
    """Joint space-time ViT-B/16 with ToMe (CLS protected) in fvcore's convention."""
    macs = frames * patches * PATCH_PIXELS * D
    tokens = 1 + frames * patches
    for _ in range(DEPTH):
        macs += _layer_norm(tokens) + 4 * tokens * D * D + 2 * tokens * tokens * D
        removed = min(r, (tokens - 1) // 2)
        macs += _similarity(tokens, removed, protected=1)
        tokens -= removed
        macs += _layer_norm(tokens) + 2 * tokens * D * MLP
    return (macs + _layer_norm(tokens)) / 1e9


# (model, paper GFLOPs, where, analytic count)
ROWS = [
    ("testa_f16_noagg", 392.0, "Table 6", lambda: fvcore_gmacs_testa(16)),
    ("testa_f16", 228.0, "Table 6", lambda: fvcore_gmacs_testa(16, 1, 2)),
    ("testa_f32_noagg", 786.0, "Table 1", lambda: fvcore_gmacs_testa(32)),
    ("testa_f32", 420.0, "Table 1", lambda: fvcore_gmacs_testa(32, 1, 12)),
    ("testa_f96_noagg", 2382.5, "Table 5", lambda: fvcore_gmacs_testa(96)),
    ("testa_f96", 1381.4, "Table 5", lambda: fvcore_gmacs_testa(96, 4, 8)),
    ("joint_f16", 450.0, "Table 6 (ToMe w/o agg.)", lambda: fvcore_gmacs_joint(16)),
    ("tome_joint_f16", 252.0, "Table 6 (ToMe r=197)", lambda: fvcore_gmacs_joint(16, 197)),
    ("timesformer_f8", 196.0, "TimeSformer 8x224²", lambda: fvcore_gmacs_testa(8)),
]


@pytest.mark.parametrize("name,paper,where,analytic", ROWS, ids=[r[0] for r in ROWS])
def test_gflops_match_paper_and_analytic_count(name, paper, where, analytic):
    report = flops.count_model(name)
    expected = analytic()
    # The only terms the analytic count leaves out are vidsel's merges (1 multiply-add per merged
    # element, ~1e-4 of the total): counter and analytic count agree to 0.1%.
    assert report.gmacs == pytest.approx(expected, rel=1e-3), (name, report.gmacs, expected)
    assert report.gmacs == pytest.approx(paper, rel=0.01), f"{name}: {report.gmacs:.1f} vs {paper} ({where})"
    assert expected == pytest.approx(paper, rel=0.01)
    print(f"{name}: ours {report.gmacs:.1f} GFLOPs, paper {paper} ({where}), params {report.params / 1e6:.2f} M")


def test_ablation_rows_of_table5():
    """Table 5 (96 frames): only temporal R_T=7 (1303.9), only spatial R_S=14 (1364.0)."""
    for overrides, paper in ((dict(r_frames=7, r_patches=0), 1303.9), (dict(r_frames=0, r_patches=14), 1364.0)):
        report = flops.count_model("testa_f96", **overrides)
        assert report.gmacs == pytest.approx(paper, rel=0.01), (overrides, report.gmacs)


def test_param_counts():
    """TimeSformer-B (divided space-time, 8 frames) has 121.4 M parameters (TimeSformer Table 1);
    the joint ViT-B/16 is BLIP's ViT-B (86 M) plus a time embedding."""
    timesformer = flops.count_model("timesformer_f8").params
    assert timesformer == pytest.approx(121.4e6, rel=0.01)
    joint = flops.count_model("joint_f16").params
    expected_vit_b = DEPTH * (12 * D * D + 13 * D) + D * PATCH_PIXELS + D + D + (PATCHES + 1) * D + 2 * D
    assert joint == expected_vit_b + 16 * D


def _small_testa(**overrides):
    config = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, r_frames=1, r_patches=3)
    config.update(overrides)
    return TestaEncoder(TestaConfig(**config))


def test_cpu_and_meta_counts_agree():
    """On CPU tensors SDPA runs a fused flash kernel torch's counter does not know; vidsel.flops
    registers a formula so a real run counts what the meta run (SDPA decomposed) counts."""
    torch.manual_seed(0)
    cpu_model = _small_testa().eval()
    with torch.device("meta"):
        meta_model = _small_testa()
    cpu = flops.count(cpu_model, *cpu_model.example_inputs())
    meta = flops.count(meta_model, *meta_model.example_inputs())
    assert cpu.gmacs == pytest.approx(meta.gmacs, rel=1e-9)
    assert cpu.by_module["blocks.0.attn"] == pytest.approx(meta.by_module["blocks.0.attn"], rel=1e-9)


def test_layer_norm_and_attention_counted_in_papers_convention():
    """A lone attention layer: qkv + proj (4 N D²) + q·kᵀ and attn·v (2 N² D) + LayerNorm (5 N D)."""
    from vidsel.models.timesformer import Attention

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.attn = torch.nn.LayerNorm(24), Attention(24, 3)

        def forward(self, x):
            return self.attn(self.norm(x))[0]

    n, dim = 10, 24
    report = flops.count(Layer(), torch.randn(2, n, dim))
    expected = 2 * (4 * n * dim * dim + 2 * n * n * dim + 5 * n * dim)
    assert report.gmacs * 1e9 == pytest.approx(expected)
    assert report.by_module["norm"] * 1e9 == pytest.approx(2 * 5 * n * dim)


def test_breakdown_sums_to_total():
    with torch.device("meta"):
        model = JointEncoder(JointConfig(num_frames=2, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, r=4))
    report = flops.count(model, *model.example_inputs())
    top_level = sum(v for k, v in report.by_module.items() if k and "." not in k)
    assert top_level == pytest.approx(report.gmacs, rel=1e-9)
    assert report.by_module[""] == pytest.approx(report.gmacs)
    assert sum(report.by_op.values()) == pytest.approx(report.gmacs)
    assert report.by_module["blocks"] == pytest.approx(sum(report.by_module[f"blocks.{i}"] for i in range(3)))


def test_every_vidsel_op_has_a_flop_formula():
    import vidsel.ops  # noqa: F401

    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("vidsel::")]
    assert names, "no vidsel ops registered"
    missing = [n for n in names if getattr(torch.ops.vidsel, n.split(".")[0]) not in flop_registry]
    assert not missing, f"vidsel ops without register_flop_formula: {missing}"


def test_cli_prints_table():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        flops.main(["testa_f16", "--frames", "4", "--depth", "2", "--set", "img_size=64"])
    text = out.getvalue()
    assert "blocks.1" in text and "total" in text
    expected = flops.count_model("testa_f16", num_frames=4, depth=2, img_size=64).gmacs
    assert f"{expected:.5g}" in text
