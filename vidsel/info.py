"""`python -m vidsel.info`: versions, and per op which backends can run here and why not."""

from __future__ import annotations

import inspect
import platform
import sys

import torch

import vidsel
import vidsel.ops  # noqa: F401  (registers the ops)
from vidsel import _backends

def _collect_ops() -> dict[str, tuple[str, ...]]:
    """Public op (a function of vidsel.ops) -> the backends it implements (its module's SUPPORTED_IMPLS)."""
    ops = {}
    for name in vidsel.ops.__all__:
        function = getattr(vidsel.ops, name)
        if inspect.isfunction(function):
            ops[name] = getattr(sys.modules[function.__module__], "SUPPORTED_IMPLS", ("reference",))
    return ops


def report() -> str:
    lines = [
        f"vidsel {vidsel.__version__}",
        f"python {platform.python_version()} ({sys.platform}), torch {torch.__version__}, "
        f"CUDA device: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}",
        "",
        "backends:",
    ]
    status = _backends.backend_status()
    for name, st in status.items():
        lines.append(f"  {name:<10} {'yes' if st.built else 'no ':<4} {st.reason}")
    lines += ["", "ops (backends usable for CPU tensors here / implemented):"]
    for op, supported in sorted(_collect_ops().items()):
        usable = _backends.available_impls("cpu", supported)
        lines.append(f"  {op:<24} {', '.join(usable):<28} / {', '.join(supported)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
