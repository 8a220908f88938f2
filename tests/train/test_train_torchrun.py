"""The one-machine command under `torchrun --nproc_per_node=2` (Gloo on CPU): both ranks train, rank 0
logs and writes checkpoints whose weights load into a plain single-process model."""

import json
import os
import signal
import subprocess
import sys

import torch

from tests.train.moving_textures import make_folder
from vidsel.train.models import build_classifier

TINY = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, r_frames=1, r_patches=2)


def test_torchrun_two_processes_fsdp(tmp_path):
    make_folder(tmp_path / "videos", per_class=4, num_frames=8, size=32)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vidsel.train", "--model", "testa_f16", "--data", str(tmp_path / "videos"),
               "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--workers", "0",
               "--val-fraction", "0.25", "--no-progress", "--log-every", "1", "--fsdp",
               *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")]]
    # Own session: on a timeout the launcher and both workers are killed together.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd(),
                               env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        _, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, err[-3000:]
    with open(tmp_path / "run" / "log.jsonl") as handle:
        log = [json.loads(line) for line in handle]
    start = log[0]
    assert start["event"] == "start" and start["world_size"] == 2
    assert start["steps"] == 3  # 12 training clips / 2 ranks / batch 2
    assert [e["step"] for e in log if e["event"] == "train"] == [1, 2, 3]
    assert [e["clips"] for e in log if e["event"] == "eval"] == [4]
    final = torch.load(tmp_path / "run" / "model.pt")
    model = build_classifier("testa_f16", 4, TINY)
    model.load_state_dict(final["model"])  # full (unsharded) tensors under the single-process names
