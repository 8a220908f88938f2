"""The one place a custom op's body turns its `impl` string into a backend call.

Every custom op declares its backends once, next to its schema::

    SCATTER_ROWS = OpBackends("scatter_rows", reference=reference.scatter_rows, triton="token_merging")

    @torch.library.custom_op("vidsel::scatter_rows", mutates_args=())
    def _scatter_rows(x, dst_index, weight, n_out, impl):
        return run_backend(SCATTER_ROWS, impl, x, dst_index, weight, n_out)

and the public function resolves `impl` against the ops it calls: `resolve("merge", impl, x.device,
SCATTER_ROWS, GATHER_ROWS)`. The routes, all called with the same arguments:
  reference  a PyTorch function (vidsel/reference, or a thin adapter beside the schema)
  cpu, cuda  the compiled library, torch.ops.vidsel_C.<name> (the dispatcher picks the CPU or CUDA kernel
             by device); every compiled op has both
  triton     the launcher <name> of vidsel.kernels.<module>, imported lazily (`import vidsel.ops` must not
             need triton), or a callable composing Triton launchers with PyTorch
Whatever every backend needs and can be derived from the arguments (e.g. the chunk layout of chunk
attention) is computed once in the op body and passed down, never re-derived per backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vidsel import _backends

REGISTRY: dict[str, "OpBackends"] = {}

# For GEMM-shaped ops: impl="auto" on CUDA tensors takes the Triton kernel (OpBackends(..., **PREFER_TRITON_ON_GPU)).
PREFER_TRITON_ON_GPU = dict(gpu_auto="triton",
                            gpu_auto_reason="Triton kernel: tensor-core tiles (the CUDA C++ kernel is SIMT fp32)")


@dataclass(frozen=True)
class OpBackends:
    """The backends of custom op `name` (torch.ops.vidsel.<name>, compiled as torch.ops.vidsel_C.<name>).

    reference: the PyTorch implementation, called with the op's arguments minus `impl`.
    triton: module of vidsel.kernels holding a launcher called `name`, a callable, or None (no Triton backend).
    compiled: whether csrc registers CPU and CUDA kernels for it.
    gpu_auto: the backend impl="auto" prefers for CUDA tensors, "cuda" or "triton"; gpu_auto_reason says why
        (shown by `python -m vidsel.info`). GEMM-shaped ops whose CUDA C++ kernel has no tensor-core path
        prefer the Triton kernel, which feeds fp16/bf16 (and tf32) tiles to the tensor cores.
    """

    name: str
    reference: Callable
    triton: str | Callable | None = None
    compiled: bool = True
    gpu_auto: str = "cuda"
    gpu_auto_reason: str = "the CUDA C++ kernel"

    def __post_init__(self):
        if self.gpu_auto not in ("cuda", "triton"):
            raise ValueError(f"custom op {self.name!r}: gpu_auto must be 'cuda' or 'triton', got {self.gpu_auto!r}")
        if self.name in REGISTRY:
            raise ValueError(f"custom op {self.name!r} declares its backends twice")
        REGISTRY[self.name] = self

    @property
    def supported(self) -> tuple[str, ...]:
        """Its backends, in the order of vidsel._backends.IMPLS."""
        has = {"reference": True, "cpu": self.compiled, "triton": self.triton is not None, "cuda": self.compiled}
        return tuple(impl for impl in _backends.IMPLS[1:] if has[impl])


def run_backend(op: OpBackends, impl: str, *args):
    """Calls custom op `op` on the concrete backend `impl` (already resolved) with `args`."""
    if impl not in op.supported:
        raise ValueError(f"{op.name}: impl={impl!r} is not one of its backends {op.supported}")
    if impl == "reference":
        return op.reference(*args)
    if impl in ("cpu", "cuda"):
        return getattr(torch.ops.vidsel_C, op.name)(*args)
    launcher = op.triton
    if isinstance(launcher, str):
        launcher = getattr(importlib.import_module(f"vidsel.kernels.{launcher}"), op.name)
    return launcher(*args)


def supported(*ops: OpBackends) -> tuple[str, ...]:
    """The backends every one of `ops` has (what a public function built on them supports)."""
    return tuple(impl for impl in _backends.IMPLS[1:] if all(impl in op.supported for op in ops))


def resolve(public_name: str, impl: str, device: torch.device, *ops: OpBackends) -> str:
    """The concrete backend a call of public function `public_name` runs, built on custom ops `ops`.

    See vidsel._backends.resolve_impl: explicit choices never fall back, "auto" picks by device (on CUDA
    tensors the Triton kernel first when any of `ops` declares gpu_auto="triton").
    """
    prefer_triton = any(op.gpu_auto == "triton" for op in ops)
    gpu_order = ("triton", "cuda", "reference") if prefer_triton else ("cuda", "triton", "reference")
    return _backends.resolve_impl(public_name, impl, device, supported(*ops), gpu_order=gpu_order)
