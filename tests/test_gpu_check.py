"""`make gpu-check`: its benchmark script runs end to end here on CPU (dry run), and says one line
and exits 0 when asked for the real run on a machine without a CUDA device."""

import json

import pytest
import torch

from benchmarks import gpu_check

OPS = {"chunk attention fwd", "bipartite match + merge", "perturbed top-k fwd", "top-k gather",
       "compressed patch embed fwd"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message only shows without a CUDA device")
def test_without_gpu_says_so_and_exits_zero(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not (tmp_path / "gpu.json").exists()


def test_dry_run_writes_every_op_against_its_peer(tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu.json").read_text())
    rows = record["rows"]
    assert {row["op"] for row in rows} == OPS
    for op in OPS:
        for dtype in ("float32", "bfloat16"):
            mine = [r for r in rows if r["op"] == op and r["dtype"] == dtype]
            assert any(r["contender"].startswith("vidsel triton") for r in mine), (op, dtype)
            peers = [r for r in mine if "(peer)" in r["contender"]]
            assert len(peers) == 1 and peers[0]["speedup_vs_peer"] == 1.0
            assert all(r["ms"] > 0 for r in mine)
    assert "| chunk attention fwd |" in (tmp_path / "gpu.md").read_text()
