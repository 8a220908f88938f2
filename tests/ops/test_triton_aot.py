"""Every Triton kernel compiles ahead of time for sm_90 in its GPU launch configurations.

`python -m vidsel.kernels.aot` runs once per session in a child process without TRITON_INTERPRET
(the interpreter replaces @triton.jit functions); its JSON rows are checked here: no compile error,
no spill, shared memory within an H100 block's 227 KB, and tensor-core instructions in the GEMM-shaped
kernels wherever the operands allow them (float16 / bfloat16, float32 with tf32).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from vidsel.kernels import configs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMEM_LIMIT = 227 * 1024
# The GEMM-shaped kernels that must run on tensor cores (module, kernel).
TENSOR_CORE_KERNELS = {
    ("kernels/chunk_attention.py", "_chunk_attention_kernel"),
    ("kernels/chunk_attention.py", "_chunk_attention_dq_kernel"),
    ("kernels/chunk_attention.py", "_chunk_attention_dkdv_kernel"),
    ("kernels/token_merging.py", "_best_partner_kernel"),
    ("kernels/compressed_patch_embed.py", "_patch_project_kernel"),
    ("kernels/compressed_patch_embed.py", "_patch_grad_input_kernel"),
    ("kernels/compressed_patch_embed.py", "_patch_grad_weight_kernel"),
}
MODULES = ("philox", "perturbed_topk", "gumbel_topk", "topk_gather", "anchor_select", "compressed_patch_embed",
           "token_merging", "chunk_attention")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "vidsel.kernels.aot", "--arch", "90", "--jobs", "2", "--json",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert out.exists(), f"the AOT tool wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def _triton(rows):
    return [r for r in rows if r["module"] != "csrc/cuda"]


def _name(row):
    return f"{row['module']}:{row['kernel']} [{row['dtype']}, {row['config']}]"


def test_report_rows_have_the_documented_keys(rows):
    keys = {"kernel", "module", "dtype", "config", "ok", "error", "regs", "spill_bytes", "smem_bytes", "tensor_cores"}
    assert rows and all(keys <= set(r) for r in rows)


def test_every_kernel_module_and_dtype_is_compiled(rows):
    seen = {(r["module"], r["dtype"]) for r in _triton(rows)}
    for module in MODULES:
        if module == "philox":
            assert (f"kernels/{module}.py", "fp64") in seen
            continue
        for dtype in ("fp32", "fp16", "bf16", "fp64"):
            assert (f"kernels/{module}.py", dtype) in seen, (module, dtype)


def test_every_launch_signature_compiles(rows):
    failed = [f"{_name(r)}: {r['error']}" for r in _triton(rows) if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_no_register_spills(rows):
    spilled = [f"{_name(r)}: {r['spill_bytes']} bytes" for r in _triton(rows)
               if r["ok"] and r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)


def test_shared_memory_fits_one_hopper_block(rows):
    over = [f"{_name(r)}: {r['smem_bytes']} bytes" for r in _triton(rows) if r["ok"] and r["smem_bytes"] > SMEM_LIMIT]
    assert not over, "\n".join(over)


def test_gemm_kernels_use_tensor_cores(rows):
    required = [r for r in _triton(rows) if (r["module"], r["kernel"]) in TENSOR_CORE_KERNELS]
    # Requirement rows exist for every listed kernel in fp16, bf16 and fp32-with-tf32.
    for module, kernel in TENSOR_CORE_KERNELS:
        mine = [r for r in required if r["kernel"] == kernel and r["tensor_cores_required"]]
        assert {r["dtype"] for r in mine} == {"fp16", "bf16", "fp32"}, (kernel, {r["dtype"] for r in mine})
        assert all("tf32" in r["config"] for r in mine if r["dtype"] == "fp32"), kernel
    missing = [_name(r) for r in required if r["tensor_cores_required"] and not r["tensor_cores"]]
    assert not missing, "no wgmma / mma in:\n" + "\n".join(missing)


def test_cuda_cxx_kernels_are_reported_when_built(rows):
    import glob

    if not glob.glob(os.path.join(ROOT, "vidsel", "_C_cuda*.so")):
        pytest.skip("vidsel/_C_cuda*.so is not built here")
    cuda = [r for r in rows if r["module"] == "csrc/cuda"]
    assert cuda and all(isinstance(r["regs"], int) and r["regs"] > 0 for r in cuda)


def test_interpreter_keeps_small_tiles_and_gpu_takes_hopper_tiles(monkeypatch):
    assert configs.launch("chunk_attention_fwd", 64, "cpu") == configs.INTERPRETER["chunk_attention_fwd"]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for kernel in ("chunk_attention_fwd", "chunk_attention_dq", "chunk_attention_dkdv"):
        for head_dim in (32, 64, 128):
            gpu = configs.launch(kernel, head_dim, "cuda", torch.float16)
            assert 64 <= gpu["BLOCK_M"] <= 128 and 64 <= gpu["BLOCK_N"] <= 128, (kernel, head_dim, gpu)
            assert 4 <= gpu.num_warps <= 8 and 2 <= gpu.num_stages <= 4, (kernel, head_dim, gpu)
    for kernel in ("best_partner", "patch_project"):
        gpu = configs.launch(kernel, 768, "cuda", torch.bfloat16)
        assert all(64 <= size <= 128 for name, size in gpu.blocks if name != "BLOCK_C" and name != "BLOCK_K")
        assert 4 <= gpu.num_warps <= 8 and 2 <= gpu.num_stages <= 4
    # Sizes above the largest key take the largest entry.
    assert configs.launch("chunk_attention_fwd", 512, "cuda") == configs.GPU["chunk_attention_fwd"][256]


def test_dot_precision_follows_torch_tf32_flag(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    matmul, before = torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32
    try:
        matmul.allow_tf32 = True
        assert configs.dot_precision(torch.float32, "cuda") == "tf32"
        assert configs.dot_precision(torch.float64, "cuda") == "ieee"
        assert configs.dot_precision(torch.float32, "cpu") == "ieee"
        matmul.allow_tf32 = False
        assert configs.dot_precision(torch.float32, "cuda") == "ieee"
    finally:
        matmul.allow_tf32 = before
    # bfloat16 enters tl.dot as bfloat16 on a GPU; the interpreter widens it (it cannot multiply bf16).
    assert configs.dot_operand(torch.bfloat16, "cuda") == triton.language.bfloat16
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert configs.dot_operand(torch.bfloat16, "cuda") == triton.language.float32


def test_float64_scalars_reach_kernels_in_float64():
    value = 1.0 / 3.0
    carried = configs.scalar(value, torch.float64, "cpu")
    assert carried.dtype == torch.float64 and carried.item() == value


def test_chunk_attention_exact_pass_keeps_the_reduction_tile():
    """The exact pass may take other tiles than the fast pass only along the non-reduced axis, so the
    sums of the results it rewrites run in the fast pass's order."""
    assert configs.EXACT_PASS  # some entries need their own launch (the masked operand would spill)
    for (kernel, label, key), exact in configs.EXACT_PASS.items():
        dtype = next(d for d, name in configs.TL_NAMES.items() if label.split()[0] == name)
        precision = label.split()[1] if " " in label else "ieee"
        fast = configs.gpu_table(kernel, dtype, precision)[key]
        reduced = configs.EXACT_REDUCTION[kernel]
        assert exact[reduced] == fast[reduced], (kernel, label, key)
        assert configs.exact_pass(kernel, dtype, precision, key) == exact
