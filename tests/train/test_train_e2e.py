"""`vidsel train` end to end on generated videos: a tiny STTS model learns 4 classes of moving textures
to >= 90% held-out accuracy on CPU, a corrupt file in the folder is skipped with one warning naming it,
and bad flags fail with a message naming them."""

import json
import os
import warnings

import pytest
import torch

from tests.train.moving_textures import make_folder
from vidsel.train import main

TINY_STTS = ["--model", "timesformer_8x224-T0.5@0", "--num-samples", "50"] + [
    arg for kv in ("num_frames=4", "img_size=32", "patch_size=8", "embed_dim=32", "depth=2", "num_heads=2")
    for arg in ("--model-arg", kv)
]


def read_log(out) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_tiny_stts_learns_moving_textures_and_skips_a_corrupt_file(tmp_path):
    data, out = tmp_path / "videos", tmp_path / "run"
    make_folder(data, per_class=40, num_frames=8, size=32, seed=1)
    bad = os.path.join(data, "vertical", "zz_corrupt.mp4")
    with open(bad, "wb") as handle:
        handle.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))  # an MP4 header, then garbage
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = main(TINY_STTS + ["--data", str(data), "--out", str(out), "--epochs", "6", "--batch-size", "8",
                                       "--lr", "2e-3", "--val-fraction", "0.25", "--workers", "0", "--no-progress",
                                       "--checkpoint-every", "0"])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    log = read_log(out)
    evals = [e for e in log if e["event"] == "eval"]
    assert [e["epoch"] for e in evals] == list(range(6))
    assert evals[-1]["accuracy"] >= 0.9, evals
    assert evals[0]["accuracy"] < evals[-1]["accuracy"]
    trains = [e for e in log if e["event"] == "train"]
    assert trains[-1]["loss"] < trains[0]["loss"] and all(e["clips_per_s"] > 0 for e in trains)
    sigmas = [e["sigma"] for e in trains]
    assert sigmas == sorted(sigmas, reverse=True) and 0 < sigmas[-1] < sigmas[0] <= 0.1  # σ decays (sigma_at)
    reports = [str(w.message) for w in caught if bad in str(w.message)]
    assert len(reports) == 1, reports
    assert [e["path"] for e in log if e["event"] == "skipped"] == [bad]
    final = torch.load(out / "model.pt")
    assert final["classes"] == ["checker", "diagonal", "horizontal", "vertical"] and final["num_classes"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--model", "no_such_model"], "unknown model"),
    (["--sigma-schedule", "constant"], "STTS"),
    (["--model-arg", "depth"], "--model-arg"),
    (["--model-arg", "not_a_field=1"], "not_a_field"),
])
def test_bad_flags_name_the_problem(tmp_path, capsys, flags, message):
    os.makedirs(tmp_path / "videos" / "a")
    os.makedirs(tmp_path / "videos" / "b")
    tiny = [a for kv in ("depth=1", "embed_dim=16", "num_heads=1") for a in ("--model-arg", kv)]
    base = ["--model", "testa_f16", "--data", str(tmp_path / "videos"), "--out", str(tmp_path / "run")] + tiny
    assert main(base + flags) == 2
    assert message in capsys.readouterr().err


def test_resume_checks_the_flags_and_starts_fresh_without_a_checkpoint(tmp_path, capsys):
    make_folder(tmp_path / "videos", per_class=2, num_frames=4, size=32)
    tiny = [a for kv in ("num_frames=2", "img_size=32", "patch_size=16", "embed_dim=16", "depth=1", "num_heads=1")
            for a in ("--model-arg", kv)]
    base = ["--model", "testa_f16", "--data", str(tmp_path / "videos"), "--out", str(tmp_path / "run"), "--epochs",
            "1", "--batch-size", "2", "--val-fraction", "0.5", "--workers", "0", "--no-progress"] + tiny
    with pytest.warns(RuntimeWarning, match="from scratch"):
        assert main(base + ["--resume"]) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    assert main(base + ["--resume", "--lr", "5e-4"]) == 2
    assert "different --lr" in capsys.readouterr().err
