"""The one-machine command under `torchrun --nproc_per_node=2` (Gloo on CPU): DDP and FSDP2 runs train on
both ranks, rank 0 logs and writes weights that load into a plain single-process model, and an FSDP2 run
SIGKILLed mid-epoch and resumed under torchrun ends with the uninterrupted run's weights, bit for bit."""

import json
import os
import signal
import subprocess
import sys

import torch

from tests.train.moving_textures import make_folder
from vidsel.train.models import build_classifier

TINY = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, r_frames=1, r_patches=2)


def torchrun(data, out, *extra, module: str = "vidsel.train", env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", module, "--model", "testa_f16", "--data", str(data), "--out", str(out), "--epochs", "1",
               "--batch-size", "2", "--workers", "0", "--val-fraction", "0.25", "--no-progress", "--log-every", "1",
               *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")], *extra]
    # Own session: on a timeout the launcher and both workers are killed together.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd(),
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), start_new_session=True)


def wait(process: subprocess.Popen, expect_success: bool = True) -> None:
    try:
        _, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert (process.returncode == 0) == expect_success, err[-3000:]


def read_log(out) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def check_run(out) -> None:
    log = read_log(out)
    start = log[0]
    assert start["event"] == "start" and start["world_size"] == 2
    assert start["steps"] == 3  # 12 training clips / 2 ranks / batch 2
    assert [e["step"] for e in log if e["event"] == "train"] == [1, 2, 3]
    assert [e["clips"] for e in log if e["event"] == "eval"] == [4]
    final = torch.load(os.path.join(out, "model.pt"))
    model = build_classifier("testa_f16", 4, TINY)
    model.load_state_dict(final["model"])  # full (unsharded) tensors under the single-process names


def test_torchrun_two_processes_ddp(tmp_path):
    make_folder(tmp_path / "videos", per_class=4, num_frames=8, size=32)
    wait(torchrun(tmp_path / "videos", tmp_path / "run"))
    check_run(tmp_path / "run")


def test_torchrun_fsdp_sigkill_mid_epoch_then_resume(tmp_path):
    make_folder(tmp_path / "videos", per_class=4, num_frames=8, size=32)
    data, flags = tmp_path / "videos", ("--fsdp", "--checkpoint-every", "1")
    whole = torchrun(data, tmp_path / "whole", *flags)
    # Rank 0 dies in the step after the checkpoint at batch 1; torchrun then stops rank 1 and fails.
    wait(torchrun(data, tmp_path / "killed", *flags, module="tests.train.kill_after_checkpoint",
                  env=dict(VIDSEL_TEST_KILL_AT="0,1")), expect_success=False)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert checkpoint["progress"] == dict(epoch=0, batch=1, step=1) and checkpoint["world_size"] == 2
    assert not (tmp_path / "killed" / "model.pt").exists()
    wait(torchrun(data, tmp_path / "killed", *flags, "--resume"))
    wait(whole)
    check_run(tmp_path / "whole")
    expected = torch.load(tmp_path / "whole" / "model.pt")["model"]
    resumed = torch.load(tmp_path / "killed" / "model.pt")["model"]
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert [e["step"] for e in read_log(tmp_path / "killed") if e["event"] == "resume"] == [1]
