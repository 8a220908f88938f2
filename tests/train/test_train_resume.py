"""SIGKILL in the middle of an epoch, then `--resume`: the final weights equal an uninterrupted run's,
bit for bit (tiny STTS: perturbed top-k noise, σ schedule, augmentation, a DataLoader worker).

The killed run SIGKILLs itself at a fixed point (tests/train/kill_after_checkpoint.py), not when a poller
happens to notice a log line: inside the optimizer step after epoch 1's mid-epoch checkpoint (gradients
computed, weights not yet updated, the loader's worker busy), so the resumed run has to redo a step the
killed one had half done.
"""

import json
import os
import signal
import subprocess
import sys

import torch

from tests.train.moving_textures import make_folder

STEPS_PER_EPOCH, EPOCHS = 4, 3
FLAGS = ["--model", "timesformer_8x224-T0.5@0-S0.7@1", "--num-samples", "20", "--epochs", str(EPOCHS),
         "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "2", "--val-fraction", "0.25", "--augment",
         "--workers", "1", "--checkpoint-every", "2", "--log-every", "1", "--no-progress", "--seed", "7"] + [
    arg for kv in ("num_frames=4", "img_size=32", "patch_size=8", "embed_dim=32", "depth=2", "num_heads=2")
    for arg in ("--model-arg", kv)
]


def launch(data, out, *extra, kill: bool = False) -> subprocess.Popen:
    """`python -m vidsel.train`; with `kill`, the run dies in the step after epoch 1's checkpoint at batch 2."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VIDSEL_TEST_KILL_AT="1,2")
    entry = ["-m", "tests.train.kill_after_checkpoint" if kill else "vidsel.train"]
    command = [sys.executable, *entry, "--data", str(data), "--out", str(out), *FLAGS, *extra]
    return subprocess.Popen(command, env=env, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def events(out) -> list[dict]:
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.endswith("\n")]


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    data = tmp_path / "videos"
    make_folder(data, per_class=6, num_frames=8, size=32, seed=2)  # 18 training clips: 4 batches of 4
    whole, killed = launch(data, tmp_path / "whole"), launch(data, tmp_path / "killed", kill=True)
    try:
        _, err = killed.communicate(timeout=600)
        assert killed.returncode == -signal.SIGKILL, err
        assert not (tmp_path / "killed" / "model.pt").exists()
        checkpoint = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
        assert 0 < checkpoint["progress"]["batch"] < STEPS_PER_EPOCH and checkpoint["progress"]["epoch"] == 1
        steps_before_kill = [e["step"] for e in events(tmp_path / "killed") if e["event"] == "train"]
        assert steps_before_kill[-1] == checkpoint["progress"]["step"]  # the step in flight was lost
        finish(launch(data, tmp_path / "killed", "--resume"))
        finish(whole)
    finally:  # nothing outlives a failed test
        for process in (whole, killed):
            if process.poll() is None:
                process.kill()

    expected = torch.load(tmp_path / "whole" / "model.pt")["model"]
    resumed = torch.load(tmp_path / "killed" / "model.pt")["model"]
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    log = events(tmp_path / "killed")
    assert [e for e in log if e["event"] == "resume"][0]["step"] == checkpoint["progress"]["step"]
    evaluations = lambda entries: [(e["epoch"], e["accuracy"], e["loss"]) for e in entries if e["event"] == "eval"]
    assert evaluations(log) == evaluations(events(tmp_path / "whole"))
