"""`python -m vidsel.info`: versions, the CPU and its GEMM path per shape class, and per op which
backends can run here and why not."""

from __future__ import annotations

import os
import platform
import re
import sys

import torch

import vidsel
import vidsel.ops  # noqa: F401  (registers the ops)
from vidsel import _backends
from vidsel.ops._dispatch import REGISTRY


def _collect_ops() -> dict[str, tuple[str, ...]]:
    """Custom op (torch.ops.vidsel.<name>) -> the backends it implements, as declared beside its schema."""
    return {name: op.supported for name, op in REGISTRY.items()}


def torch_blas_name() -> str:
    """The BLAS / oneDNN builds torch links, e.g. "MKL 2024.2, oneDNN v3.12.0" (from torch.__config__)."""
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    dnnl = re.search(r"MKL-DNN (v[\d.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    names = [f"MKL {mkl.group(1)}" if mkl else (blas.group(1) if blas else "unknown BLAS")]
    if dnnl:
        names.append(f"oneDNN {dnnl.group(1)}")
    return ", ".join(names)


def report() -> str:
    lines = [
        f"vidsel {vidsel.__version__}",
        f"python {platform.python_version()} ({sys.platform}), torch {torch.__version__}, "
        f"CUDA device: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}",
        "",
        "backends:",
    ]
    cpu = _backends.cpu_identity()
    lines[2:2] = [f"CPU: {cpu['model']} (vendor {cpu['vendor']}; ISA: {cpu['isa'] or 'unknown'})"]
    gemm = _backends.cpu_gemm_report()
    if gemm:
        mode = os.environ.get("VIDSEL_CPU_GEMM", "auto")
        lines[3:3] = [f"CPU GEMM path per shape class (VIDSEL_CPU_GEMM={mode}; vidsel = its AVX-512 register tiles, "
                      f"blas = torch's sgemm; torch links {torch_blas_name()}):"] + [f"  {line}" for line in gemm]
    status = _backends.backend_status()
    for name, st in status.items():
        lines.append(f"  {name:<10} {'yes' if st.built else 'no ':<4} {st.reason}")
    lines += ["", "custom ops (backends usable for CPU tensors here / implemented):"]
    for op, supported in sorted(_collect_ops().items()):
        usable = _backends.available_impls("cpu", supported)
        lines.append(f"  {op:<32} {', '.join(usable):<28} / {', '.join(supported)}")
    lines += ["", "impl='auto' on CUDA tensors (first usable of the order; why):"]
    for name, op in sorted(REGISTRY.items()):
        order = ("triton", "cuda") if op.gpu_auto == "triton" else ("cuda", "triton")
        chosen = next((b for b in order if b in op.supported), "reference")
        reason = op.gpu_auto_reason if chosen == op.gpu_auto else "its only GPU backend"
        lines.append(f"  {name:<32} {chosen:<8} {reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
