"""Triton kernels of vidsel, one module per op (shipped as ``vidsel.kernels``).

GPU fast path; in tests they run under the Triton interpreter (``TRITON_INTERPRET=1`` set before
importing triton) on CPU tensors. Modules here import triton; ``vidsel.ops`` imports them lazily,
so ``import vidsel`` works without triton. Launch configurations come from the import-time table of
``configs.py`` (no autotune): Hopper tiles on CUDA tensors, small tiles under the interpreter. Loads
are masked; GEMM operands enter tl.dot in the input dtype with float32 (float64) accumulation, other
arithmetic widens half/bfloat16 to float32. ``python -m vidsel.kernels.aot`` compiles every GPU launch
for sm_90 and reports registers, spills, shared memory and tensor-core use.
"""
