"""Which backends exist on this machine, why the others do not, and which one an op call uses.

Backends of every op:
  reference  pure PyTorch (vidsel/reference), any device, the ground truth in tests
  cpu        C++ kernels from csrc/cpu (extension ``vidsel._C``), CPU tensors
  triton     Triton kernels from kernels/ (``vidsel.kernels``); CUDA tensors, or CPU tensors
             when the Triton interpreter is on (``TRITON_INTERPRET=1`` before importing triton)
  cuda       CUDA C++ kernels from csrc/cuda (extension ``vidsel._C_cuda``), CUDA tensors

``impl="auto"`` picks cuda, then triton, for CUDA tensors (triton first for the ops that declare it,
see ``OpBackends.gpu_auto``) and cpu for CPU tensors, falling back to
the reference only when no compiled backend exists (with a warning at import). The environment
variable ``VIDSEL_IMPL`` replaces ``"auto"``. An explicit choice never falls back: when it cannot
run, the error says why.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import warnings
from dataclasses import dataclass

import torch

# The first eager call of any torch.library custom op imports torch._dynamo (the op's backend dispatch
# is wrapped in torch._disable_dynamo): seconds on a loaded machine, paid by whichever op runs first.
# Importing it with vidsel moves that one-time cost out of the first op call.
import torch._dynamo  # noqa: E402,F401

IMPLS = ("auto", "reference", "cpu", "triton", "cuda")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class BackendStatus:
    name: str
    built: bool
    reason: str  # why it is not usable, or what it is when it is


def _load_extension(module_name: str) -> tuple[bool, str]:
    """Loads a compiled torch-library extension (a shared object registering vidsel_C ops)."""
    matches = sorted(glob.glob(os.path.join(_PACKAGE_DIR, f"{module_name}.*.so")))
    if not matches:
        return False, f"vidsel/{module_name}.*.so not built (run `make build`)"
    try:
        torch.ops.load_library(matches[0])
    except OSError as error:  # missing symbol, wrong torch, missing CUDA runtime ...
        return False, f"{os.path.basename(matches[0])} failed to load: {error}"
    return True, os.path.basename(matches[0])


def _probe_triton() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as error:  # triton import can fail on exotic setups; report, never crash
        return False, f"import triton failed: {error}"
    mode = "interpreter (TRITON_INTERPRET=1)" if interpreter_enabled() else "compiled (needs a CUDA GPU)"
    return True, f"triton {triton.__version__}, {mode}"


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_CPU_BUILT, _CPU_REASON = _load_extension("_C")
if _CPU_BUILT:
    _CUDA_BUILT, _CUDA_REASON = _load_extension("_C_cuda")
else:
    _CUDA_BUILT, _CUDA_REASON = False, "needs vidsel._C (the op schemas) which is not built"
_TRITON_OK, _TRITON_REASON = _probe_triton()
_CUDA_DEVICE = torch.cuda.is_available()
_ENV_IMPL = os.environ.get("VIDSEL_IMPL", "auto")

if _ENV_IMPL not in IMPLS:
    raise ValueError(f"VIDSEL_IMPL={_ENV_IMPL!r} is not one of {IMPLS}")
if not _CPU_BUILT:
    warnings.warn(
        f"vidsel: C++ CPU kernels unavailable ({_CPU_REASON}); impl='auto' uses the PyTorch reference",
        RuntimeWarning,
        stacklevel=2,
    )
if _CPU_BUILT:
    torch.ops.vidsel_C.set_debug_fill(os.environ.get("VIDSEL_DEBUG_FILL", "0") == "1")


def cpu_features() -> str:
    """What the C++ CPU kernels were compiled for, e.g. "avx512 (vidsel GEMM), avx2, openmp"; "" if not built."""
    return torch.ops.vidsel_C.cpu_features() if _CPU_BUILT else ""


_ISA_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_tile", "avx2", "fma", "sse4_2")


def cpu_identity() -> dict[str, str]:
    """{"vendor", "model", "isa"} of this CPU, e.g. AuthenticAMD / "AMD EPYC" / "avx512f avx2 fma ..."."""
    info = {"vendor": "unknown", "model": platform.processor() or platform.machine(), "isa": ""}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    info["vendor"] = fields.get("vendor_id", info["vendor"])
    info["model"] = fields.get("model name", info["model"])
    info["isa"] = " ".join(flag for flag in _ISA_FLAGS if flag in flags)
    return info


def cpu_gemm_report() -> list[str]:
    """Per GEMM shape class of the CPU kernels, the path chosen here ("<class>: vidsel|blas (why)"), then
    (unless forced) "calibration: <ms> of the 50 ms budget".

    Calibrates (once per process, <= 50 ms) the classes not used yet. [] without the C++ extension.
    """
    if not _CPU_BUILT or not hasattr(torch.ops.vidsel_C, "cpu_gemm_report"):
        return []
    return list(torch.ops.vidsel_C.cpu_gemm_report())


def cpu_gemm_paths() -> dict[str, str]:
    """{shape class: "vidsel" | "blas"} as chosen on this machine (see cpu_gemm_report)."""
    lines = [line for line in cpu_gemm_report() if not line.startswith("calibration:")]
    return {line.split(":")[0]: line.split(":")[1].split()[0] for line in lines}


def set_cpu_gemm_mode(mode: str) -> str:
    """Forces the CPU kernels' GEMM path ("auto" | "vidsel" | "blas", as VIDSEL_CPU_GEMM); returns the previous mode."""
    if mode not in ("auto", "vidsel", "blas"):
        raise ValueError(f"mode must be 'auto', 'vidsel' or 'blas', got {mode!r}")
    if not _CPU_BUILT:
        raise RuntimeError(f"the C++ CPU extension is not available: {_CPU_REASON}")
    previous = torch.ops.vidsel_C.cpu_gemm_mode()
    torch.ops.vidsel_C.set_cpu_gemm_mode(mode)
    return previous


def backend_status() -> dict[str, BackendStatus]:
    """Per backend: whether it can run here and why (not)."""
    cuda_reason = _CUDA_REASON if not _CUDA_BUILT else f"{_CUDA_REASON}; " + (
        "CUDA device present" if _CUDA_DEVICE else "built and linked, but no CUDA device to run on"
    )
    return {
        "reference": BackendStatus("reference", True, f"PyTorch {torch.__version__}"),
        "cpu": BackendStatus("cpu", _CPU_BUILT, f"{_CPU_REASON}; compiled for: {cpu_features()}" if _CPU_BUILT else _CPU_REASON),
        "triton": BackendStatus("triton", _TRITON_OK, _TRITON_REASON),
        "cuda": BackendStatus("cuda", _CUDA_BUILT, cuda_reason),
    }


def _unusable_reason(impl: str, device: torch.device) -> str | None:
    """None when `impl` can run on tensors of `device`, else the reason it cannot."""
    if impl == "reference":
        return None
    if impl == "cpu":
        if not _CPU_BUILT:
            return _CPU_REASON
        return None if device.type == "cpu" else f"the cpu backend takes CPU tensors, got {device}"
    if impl == "triton":
        if not _TRITON_OK:
            return _TRITON_REASON
        if device.type == "cuda" or interpreter_enabled():
            return None
        return "triton needs CUDA tensors, or TRITON_INTERPRET=1 set before importing triton for CPU tensors"
    if impl == "cuda":
        if not _CUDA_BUILT:
            return _CUDA_REASON
        return None if device.type == "cuda" else f"the cuda backend takes CUDA tensors, got {device}"
    return f"unknown impl {impl!r}"


def resolve_impl(op_name: str, impl: str, device: torch.device, supported: tuple[str, ...],
                 gpu_order: tuple[str, ...] = ("cuda", "triton", "reference")) -> str:
    """The concrete backend an op call runs: `impl` itself when explicit, else the auto choice.

    Raises ValueError for an unknown name and RuntimeError when an explicit backend cannot run
    (naming the op and the reason) — an explicit request never silently falls back.
    """
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{op_name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = _ENV_IMPL
    if impl != "auto":
        if impl not in supported:
            raise RuntimeError(f"{op_name}: impl={impl!r} is not implemented (has {supported})")
        reason = _unusable_reason(impl, device)
        if reason is not None:
            raise RuntimeError(f"{op_name}: impl={impl!r} cannot run here: {reason}")
        return impl
    preferred = gpu_order if device.type == "cuda" else ("cpu", "reference")
    for candidate in preferred:
        if candidate in supported and _unusable_reason(candidate, device) is None:
            return candidate
    return "reference"


def available_impls(device: torch.device | str = "cpu", supported: tuple[str, ...] = IMPLS[1:]) -> list[str]:
    """Backends that can run on `device` here (used by tests to parametrise)."""
    device = torch.device(device)
    return [name for name in supported if _unusable_reason(name, device) is None]
