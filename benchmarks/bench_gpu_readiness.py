"""GPU readiness: the sm_90 ahead-of-time compile report of every Triton kernel (no GPU needed).

What: `python -m vidsel.kernels.aot` compiles each Triton kernel for every dtype its launcher accepts
in the launch configurations used on CUDA tensors (kernels/configs.py), and reads the CUDA C++
kernels of vidsel/_C_cuda*.so with cuobjdump. One row per kernel x dtype: how many configurations
compile, the largest register count, spill bytes, the largest shared memory, tensor-core instructions.
Why: without a GPU this is the evidence that the GPU launches compile, fit Hopper's register file and
227 KB of shared memory, and put tl.dot on tensor cores. GPU timings come from `make gpu-check`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks.harness import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot_rows() -> list[dict]:
    """The AOT tool's JSON rows (run in a child process without the Triton interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aot.json")
        subprocess.run([sys.executable, "-m", "vidsel.kernels.aot", "--jobs", "2", "--json", path], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=3000)
        with open(path) as f:
            return json.load(f)


def summarize(rows: list[dict]) -> list[list]:
    """One row per (module, kernel, dtype): configs ok / total, max regs, spills, max smem, tensor cores."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["module"], row["kernel"], row["dtype"]), []).append(row)
    out = []
    for (module, kernel, dtype), group in groups.items():
        ok = [r for r in group if r["ok"]]
        cores = sorted({r["tensor_cores"] for r in ok if r["tensor_cores"]})
        required = any(r.get("tensor_cores_required") for r in group)
        out.append([f"`{kernel}`", module, dtype, f"{len(ok)}/{len(group)}",
                    max((r["regs"] for r in ok), default="-"), sum(r["spill_bytes"] for r in ok),
                    max((r["smem_bytes"] for r in ok), default="-"),
                    (",".join(cores) or "-") + (" (required)" if required else "")])
    return out


def run(profile: str) -> list[Table]:
    rows = aot_rows()
    table = Table("gpu_readiness", "sm_90 ahead-of-time compile of every GPU launch (python -m vidsel.kernels.aot)",
                  ["kernel", "module", "dtype", "configs ok", "max regs", "spill bytes", "max smem B", "tensor cores"])
    table.rows = summarize(rows)
    triton = [r for r in rows if r["module"] != "csrc/cuda"]
    compiled = sum(r["ok"] for r in triton)
    table.check("Triton launch signatures compiling for sm_90", compiled, f"all {len(triton)}", compiled == len(triton))
    spills = sum(r["spill_bytes"] or 0 for r in triton)
    table.check("spill bytes over all Triton launches", spills, "0", spills == 0)
    missing = sum(1 for r in triton if r.get("tensor_cores_required") and not r["tensor_cores"])
    table.check("required tensor-core launches without wgmma/mma", missing, "0", missing == 0)
    table.notes = [
        "Per-configuration rows (tiles, warps, stages, tf32 / ieee, 16-divisible feature dims): "
        "`python -m vidsel.kernels.aot`. csrc/cuda rows come from cuobjdump: spill bytes there are the "
        "local-memory bytes per thread, shared memory the static part.",
        "GPU timings come from `make gpu-check` on an H100/H200 (none recorded yet: no GPU here).",
    ]
    return [table]
