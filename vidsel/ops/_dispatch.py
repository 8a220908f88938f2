"""The one place a custom op's body turns its `impl` string into a backend call.

Every vidsel custom op has the same three routes: the PyTorch reference, the compiled library
(`torch.ops.vidsel_C.<name>`, whose CPU or CUDA kernel the dispatcher picks by device) and a Triton
launcher in `vidsel.kernels.<module>` (imported lazily: `import vidsel.ops` must not need triton).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch


def run_backend(impl: str, name: str, reference_fn: Callable, triton_module: str | None, *args):
    """Calls op `name` on backend `impl` with `args` (the same arguments for every backend).

    triton_module: module of vidsel.kernels holding a launcher called `name`, or None when the
    Triton backend reuses the reference for this (small) step.
    """
    if impl == "reference" or (impl == "triton" and triton_module is None):
        return reference_fn(*args)
    if impl in ("cpu", "cuda"):
        return getattr(torch.ops.vidsel_C, name)(*args)
    if impl == "triton":
        return getattr(importlib.import_module(f"vidsel.kernels.{triton_module}"), name)(*args)
    raise ValueError(f"{name}: unknown impl {impl!r}")
