"""Proof that csrc/cuda compiled and linked (it cannot run here: there is no GPU).

`make test` builds vidsel._C_cuda (sm_90) before running this; loading it resolves every symbol
(ctypes loads with RTLD_NOW), and every compiled vidsel_C op must have a CUDA kernel registered.
"""

import glob
import os
import shutil
import subprocess

import pytest
import torch

import vidsel
import vidsel.ops
from vidsel import _backends

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="no nvcc on PATH: csrc/cuda cannot be built on this machine")


def _cuda_library() -> str:
    found = glob.glob(os.path.join(ROOT, "vidsel", "_C_cuda.*.so"))
    assert found, "vidsel/_C_cuda*.so was not built although nvcc is present (see `make build`)"
    return found[0]


def _vidsel_ops() -> list[str]:
    names = torch._C._dispatch_get_all_op_names()
    utilities = {"vidsel_C::set_debug_fill", "vidsel_C::cpu_features"}  # no tensors, no device kernels
    # The CPU GEMM choice (csrc/cpu/gemm.h): its report / mode switches and its CPU-only test hook.
    utilities |= {"vidsel_C::cpu_gemm_report", "vidsel_C::set_cpu_gemm_mode", "vidsel_C::cpu_gemm_mode",
                  "vidsel_C::cpu_gemm_on_path"}
    return sorted(n for n in names if n.startswith("vidsel_C::") and n not in utilities)


def test_cuda_extension_is_built_from_current_sources():
    library_time = os.path.getmtime(_cuda_library())
    sources = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*"))
    assert sources
    stale = [s for s in sources if os.path.getmtime(s) > library_time]
    assert not stale, f"_C_cuda is older than {stale}: rebuild with `make build`"


def test_cuda_extension_loads_and_links():
    status = _backends.backend_status()["cuda"]
    assert status.built, status.reason


def test_every_op_has_a_cuda_kernel():
    ops = _vidsel_ops()
    assert "vidsel_C::bipartite_match" in ops
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    assert not missing, f"ops without a CUDA kernel: {missing}"


def test_device_code_targets_sm90():
    candidates = [os.path.join(os.path.dirname(os.path.realpath(NVCC)), "cuobjdump"), shutil.which("cuobjdump")]
    try:  # triton wheels ship one
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    cuobjdump = next((c for c in candidates if c and os.path.exists(c)), None)
    if cuobjdump is None:
        pytest.skip("no cuobjdump to list the device code")
    listing = subprocess.run([cuobjdump, "--list-elf", _cuda_library()], capture_output=True, text=True).stdout
    assert "sm_90" in listing, listing[:500]


def test_cuda_impl_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="cuda"):
        vidsel.ops.bipartite_match(torch.randn(1, 4, 3), 1, impl="cuda")
