"""Triton kernels of vidsel, one module per op (shipped as ``vidsel.kernels``).

GPU fast path; in tests they run under the Triton interpreter (``TRITON_INTERPRET=1`` set before
importing triton) on CPU tensors. Modules here import triton; ``vidsel.ops`` imports them lazily,
so ``import vidsel`` works without triton. Launch configurations are pinned (no autotune), loads are
masked, and half/bfloat16 inputs are widened to float32 right after loading.
"""
