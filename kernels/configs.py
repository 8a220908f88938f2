"""Launch configurations of the Triton kernels, fixed at import time (no autotuning).

On CUDA tensors the launchers take Hopper-sized tiles from `GPU`, keyed on the one size that sets
register and shared-memory pressure (head dim, feature dim or row length, rounded up to a power of
two). Under the Triton interpreter (or on CPU tensors) they keep the small `INTERPRETER` tiles, so
the interpreter tests cross many tile boundaries quickly. `python -m vidsel.kernels.aot` compiles
every GPU entry for sm_90 and reports registers, spills, shared memory and tensor-core use.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl


@dataclasses.dataclass(frozen=True)
class Launch:
    """Tile sizes (constexpr BLOCK_* arguments) plus num_warps / num_stages of one launch."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    def __getitem__(self, name: str) -> int:
        return dict(self.blocks)[name]

    def kwargs(self) -> dict:
        """Keyword arguments of a kernel launch: the tiles, num_warps and num_stages."""
        return dict(self.blocks, num_warps=self.num_warps, num_stages=self.num_stages)

    def label(self) -> str:
        tiles = ",".join(f"{name.removeprefix('BLOCK_')}={size}" for name, size in self.blocks)
        return f"{tiles} w{self.num_warps} s{self.num_stages}"


def _launch(num_warps=4, num_stages=2, **blocks) -> Launch:
    return Launch(tuple(blocks.items()), num_warps, num_stages)


# Interpreter tiles: small, so the CPU tests exercise partial tiles and multi-tile loops.
INTERPRETER = {
    "chunk_attention_fwd": _launch(BLOCK_M=16, BLOCK_N=16),
    "chunk_attention_dkdv": _launch(BLOCK_M=16, BLOCK_N=16),
    "chunk_attention_dq": _launch(BLOCK_M=16, BLOCK_N=16),
    "best_partner": _launch(BLOCK_A=16, BLOCK_B=32, BLOCK_C=32),
    "rows": _launch(BLOCK_N=16, BLOCK_D=64),
    "patch_project": _launch(BLOCK_M=32, BLOCK_D=32, BLOCK_K=32),
    "topk_rank": _launch(BLOCK_I=32, BLOCK_J=64),
    "topk_place": _launch(BLOCK=128),
    "copy_rows": _launch(BLOCK_ROWS=16, BLOCK_D=64),
    "perturbed_topk": _launch(BLOCK_I=64, BLOCK_J=64),
    "gumbel_topk": _launch(BLOCK_L=16),
    "summed_area": _launch(BLOCK_R=4),
    "anchor_mean": _launch(BLOCK_G=32),
    "anchor_pixels": _launch(BLOCK_P=16, BLOCK_D=64),
    "anchor_dot": _launch(BLOCK=256),
    "philox": _launch(BLOCK=64),
}

# Hopper (sm_90) tiles keyed on a power-of-two size; a size above the largest key uses the largest.
# GEMM-shaped kernels use 64-128 tiles so tl.dot maps onto wgmma; every entry compiles without spills
# (python -m vidsel.kernels.aot checks it), with and without 16-divisible feature dims.
GPU = {
    # key: head dim (BLOCK_D). Head dim 256 holds twice the registers per row: 32-wide tiles there.
    "chunk_attention_fwd": {
        32: _launch(8, 3, BLOCK_M=128, BLOCK_N=64),
        64: _launch(8, 3, BLOCK_M=128, BLOCK_N=64),
        128: _launch(8, 3, BLOCK_M=128, BLOCK_N=64),
        256: _launch(8, 1, BLOCK_M=64, BLOCK_N=32),
    },
    "chunk_attention_dkdv": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        128: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        256: _launch(8, 2, BLOCK_M=32, BLOCK_N=64),
    },
    "chunk_attention_dq": {
        32: _launch(8, 2, BLOCK_M=128, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=128, BLOCK_N=64),
        128: _launch(8, 2, BLOCK_M=128, BLOCK_N=64),
        256: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
    },
    # channels and embedding dims are looped over (BLOCK_C / BLOCK_K): one entry each
    "best_partner": {1: _launch(8, 3, BLOCK_A=64, BLOCK_B=128, BLOCK_C=32)},
    "patch_project": {1: _launch(8, 2, BLOCK_M=128, BLOCK_D=64, BLOCK_K=32)},
    "rows": {1: _launch(4, 2, BLOCK_N=16, BLOCK_D=128)},
    "topk_rank": {1: _launch(8, 1, BLOCK_I=128, BLOCK_J=64)},
    "topk_place": {1: _launch(4, 2, BLOCK=1024)},
    "copy_rows": {1: _launch(8, 2, BLOCK_ROWS=16, BLOCK_D=128)},
    "perturbed_topk": {1: _launch(8, 2, BLOCK_I=128, BLOCK_J=64)},
    # key: row length (next power of two); a row is walked in BLOCK_L blocks, so any length runs
    "gumbel_topk": {256: _launch(2, 1, BLOCK_L=256), 512: _launch(8, 1, BLOCK_L=512)},
    # key: map width (BLOCK_W)
    "summed_area": {128: _launch(8, 1, BLOCK_R=16)},
    "anchor_mean": {1: _launch(4, 1, BLOCK_G=128)},
    "anchor_pixels": {1: _launch(4, 1, BLOCK_P=16, BLOCK_D=64)},
    "anchor_dot": {1: _launch(4, 2, BLOCK=1024)},
    "philox": {1: _launch(4, 1, BLOCK=1024)},
}

# float32 with tf32: 4-byte operands hold twice the registers and shared memory of a 16-bit tile.
GPU_TF32 = {
    "chunk_attention_fwd": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        128: _launch(8, 1, BLOCK_M=64, BLOCK_N=32),
        256: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
    },
    "chunk_attention_dkdv": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=32, BLOCK_N=64),
        128: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        256: _launch(8, 1, BLOCK_M=16, BLOCK_N=32),
    },
    "chunk_attention_dq": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        128: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        256: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
    },
}
# float32 ieee (torch's default, TF32 off) runs tl.dot on FMA units, which hold whole head-dim rows
# of both operands per thread: the tiles shrink with the head dim. No tensor cores in this mode.
GPU_IEEE = {
    "chunk_attention_fwd": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        128: _launch(4, 1, BLOCK_M=32, BLOCK_N=16),
        256: _launch(4, 1, BLOCK_M=16, BLOCK_N=16),
    },
    "chunk_attention_dkdv": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(4, 1, BLOCK_M=16, BLOCK_N=32),
        128: _launch(4, 1, BLOCK_M=16, BLOCK_N=16),
        256: _launch(8, 1, BLOCK_M=16, BLOCK_N=16),
    },
    "chunk_attention_dq": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=64),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        128: _launch(4, 1, BLOCK_M=32, BLOCK_N=16),
        256: _launch(8, 1, BLOCK_M=32, BLOCK_N=16),  # 2 warps at 16x16 spill at head dim 192
    },
    "best_partner": {1: _launch(8, 2, BLOCK_A=64, BLOCK_B=64, BLOCK_C=32)},
}
# float64 (DMMA, 8-byte operands): the smallest tiles.
GPU_FP64 = {
    "chunk_attention_fwd": {
        32: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        64: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        128: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        256: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
    },
    "chunk_attention_dkdv": {
        32: _launch(8, 2, BLOCK_M=32, BLOCK_N=64),
        64: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        128: _launch(8, 1, BLOCK_M=16, BLOCK_N=32),
        256: _launch(8, 1, BLOCK_M=16, BLOCK_N=16),
    },
    "chunk_attention_dq": {
        32: _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
        64: _launch(8, 1, BLOCK_M=32, BLOCK_N=32),
        128: _launch(8, 1, BLOCK_M=32, BLOCK_N=16),
        256: _launch(8, 1, BLOCK_M=16, BLOCK_N=16),
    },
    "best_partner": {1: _launch(8, 2, BLOCK_A=64, BLOCK_B=64, BLOCK_C=32)},
    "patch_project": {1: _launch(8, 2, BLOCK_M=64, BLOCK_D=64, BLOCK_K=32)},
}

# The exact pass of chunk attention (EXACT=True in kernels/chunk_attention.py) runs only on blocks whose
# fast-pass results hold a NaN, and masks its second dot operand in registers. Where that would spill,
# it takes fewer rows (forward, dQ) or keys (dK/dV) per program or more warps, but always the fast
# pass's reduction tile (EXACT_REDUCTION), so the order of every sum and the bits of unreached results
# stay the same. Key: (kernel, AOT dtype label, head-dim key); other entries reuse the fast pass's launch.
EXACT_REDUCTION = {"chunk_attention_fwd": "BLOCK_N", "chunk_attention_dq": "BLOCK_N", "chunk_attention_dkdv": "BLOCK_M"}
EXACT_PASS = {
    # one more pipeline stage: the masked V tile no longer spills (same tiles and warps)
    ("chunk_attention_fwd", "fp32 tf32", 256): _launch(8, 2, BLOCK_M=32, BLOCK_N=32),
    ("chunk_attention_fwd", "fp32 ieee", 64): _launch(8, 3, BLOCK_M=64, BLOCK_N=32),
    ("chunk_attention_fwd", "fp32 ieee", 128): _launch(4, 2, BLOCK_M=32, BLOCK_N=16),
    ("chunk_attention_fwd", "fp32 ieee", 256): _launch(4, 2, BLOCK_M=16, BLOCK_N=16),
    # half the keys per program (dK/dV reduce over query rows: BLOCK_M stays)
    ("chunk_attention_dkdv", "fp32 ieee", 32): _launch(8, 2, BLOCK_M=64, BLOCK_N=32),
    ("chunk_attention_dkdv", "fp64", 32): _launch(8, 1, BLOCK_M=32, BLOCK_N=64),  # one stage fewer
    # dQ reduces over keys (BLOCK_N stays): another stage, fewer query rows or other warps
    ("chunk_attention_dq", "fp32 tf32", 128): _launch(8, 3, BLOCK_M=32, BLOCK_N=32),
    ("chunk_attention_dq", "fp32 ieee", 64): _launch(8, 2, BLOCK_M=32, BLOCK_N=32),
    ("chunk_attention_dq", "fp32 ieee", 128): _launch(4, 3, BLOCK_M=32, BLOCK_N=16),
    ("chunk_attention_dq", "fp32 ieee", 256): _launch(8, 2, BLOCK_M=32, BLOCK_N=16),
    ("chunk_attention_dq", "fp16", 256): _launch(8, 3, BLOCK_M=64, BLOCK_N=32),
    ("chunk_attention_dq", "bf16", 256): _launch(8, 3, BLOCK_M=64, BLOCK_N=32),
    ("chunk_attention_dq", "fp64", 256): _launch(8, 2, BLOCK_M=16, BLOCK_N=16),
}


def interpreting() -> bool:
    """True when kernels run under the Triton interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_gpu(device) -> bool:
    """Whether launches on `device` are compiled GPU launches (not the interpreter)."""
    return torch.device(device).type == "cuda" and not interpreting()


def gpu_key(table: dict, size: int) -> int:
    """The table key serving `size`: the smallest key >= size, else the largest."""
    fitting = [key for key in table if key >= size]
    return min(fitting) if fitting else max(table)


def gpu_table(kernel: str, dtype: torch.dtype | None = None, precision: str = "ieee") -> dict:
    """The GPU table of `kernel` for inputs of `dtype` and tl.dot `precision` (float32 / float64 may
    have their own; 16-bit inputs and the kernels without an entry there use GPU)."""
    if dtype == torch.float64:
        override = GPU_FP64
    elif dtype == torch.float32:
        override = GPU_TF32 if precision == "tf32" else GPU_IEEE
    else:
        override = {}
    return override.get(kernel, GPU[kernel])


def launch(kernel: str, size: int, device, dtype: torch.dtype | None = None) -> Launch:
    """The launch configuration of `kernel` for a problem of `size` (see GPU's keys) on `device`
    with inputs of `dtype` (their tl.dot precision follows torch's TF32 flag, see dot_precision)."""
    if not on_gpu(device):
        return INTERPRETER[kernel]
    precision = dot_precision(dtype, device) if dtype is not None else "ieee"
    table = gpu_table(kernel, dtype, precision)
    return table[gpu_key(table, size)]


def precision_label(dtype: torch.dtype, precision: str) -> str:
    """"fp16", "fp32 tf32", "fp32 ieee", ...: the dtype and, for float32, the tl.dot precision."""
    return TL_NAMES[dtype] + (f" {precision}" if dtype == torch.float32 else "")


def exact_pass(kernel: str, dtype: torch.dtype, precision: str, key: int) -> Launch:
    """The GPU launch of chunk attention's exact pass for the GPU table entry `key` (see EXACT_PASS)."""
    fast = gpu_table(kernel, dtype, precision)[key]
    return EXACT_PASS.get((kernel, precision_label(dtype, precision), key), fast)


def exact_launch(kernel: str, size: int, device, dtype: torch.dtype) -> Launch:
    """Like launch, for chunk attention's exact pass (the interpreter keeps the fast pass's tiles)."""
    if not on_gpu(device):
        return INTERPRETER[kernel]
    precision = dot_precision(dtype, device)
    return exact_pass(kernel, dtype, precision, gpu_key(gpu_table(kernel, dtype, precision), size))


def dot_precision(dtype: torch.dtype, device) -> str:
    """tl.dot input_precision: tf32 for float32 on a GPU when torch allows TF32 matmuls, else ieee.

    float16 / bfloat16 operands always run on tensor cores (the precision applies to float32 only);
    float64 is ieee (DMMA)."""
    if dtype == torch.float32 and on_gpu(device) and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}


def dot_operand(dtype: torch.dtype, device):
    """tl dtype the operands of tl.dot are cast to: the input's own dtype, except bfloat16 under the
    interpreter (it multiplies bfloat16 bit patterns as integers), which is widened to float32."""
    if dtype == torch.bfloat16 and not on_gpu(device):
        return tl.float32
    return _TL_DTYPES[dtype]


def accumulator(dtype: torch.dtype):
    """(torch dtype, tl dtype) of accumulators: float64 for float64 inputs, float32 otherwise."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def scalar(value: float, dtype: torch.dtype, device) -> torch.Tensor:
    """A 1-element tensor carrying a Python float into a kernel at full `dtype` precision.

    Compiled kernels receive Python floats as float32 (the interpreter keeps doubles); loading the
    value from memory keeps float64 paths float64 on both."""
    return torch.full((1,), value, dtype=dtype, device=device)


def next_power_of_2(size: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(size))


# ---- ahead-of-time specs (read by vidsel.kernels.aot) ----

TL_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One GPU launch signature to compile ahead of time.

    Pointer arguments (names ending in _ptr) default to `data`'s element type; `types` overrides
    any argument ("*i32", "i64", "fp64", ...); other runtime arguments are i32. Pointers are taken
    16-byte aligned (fresh torch allocations), as are the ints named in `aligned` (feature dims:
    the JIT specialises multiples of 16). `tensor_cores`: whether the kernel's tl.dot must map onto
    tensor-core instructions in this configuration."""

    fn: object
    module: str
    dtype: str
    config: Launch
    constexprs: dict
    types: dict = dataclasses.field(default_factory=dict)
    data: str = "fp32"
    tensor_cores: bool = False
    variant: str = ""
    aligned: tuple = ()


def gemm_variants(dtype: torch.dtype) -> list[tuple[str, str]]:
    """(input_precision, label suffix) the GPU launchers can use for `dtype`: float32 has tf32 and ieee."""
    if dtype == torch.float32:
        return [("tf32", "tf32"), ("ieee", "ieee")]
    return [("ieee", "")]


def requires_tensor_cores(dtype: torch.dtype, precision: str) -> bool:
    """fp16 / bf16 always, fp32 with tf32: the configurations that must run on tensor cores."""
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and precision == "tf32")
