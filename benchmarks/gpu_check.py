"""`python -m benchmarks.gpu_check [--dry-run] [--out DIR]`: the GPU benchmark of `make gpu-check`.

On a CUDA machine (one H100/H200): every fused op in fp16 / bf16 / fp32 against the GPU peer users
would otherwise run, timed with CUDA events (`triton.testing.do_bench`, medians), with the achieved
TFLOP/s and GB/s beside the device's peaks. Writes `<out>/gpu.json` and `<out>/gpu.md`.

    op                 contenders
    chunk attention    vidsel triton / cuda  vs  SDPA + dense eq. 8 mask, SDPA is_causal, FlexAttention
    token merging      vidsel match + merge  vs  ToMe-shaped eager, the same under torch.compile
    perturbed top-k    vidsel                vs  the STTS repository's formulation
    top-k gather       vidsel                vs  torch.topk + gather
    compressed embed   vidsel                vs  the Conv2d reference path

`--dry-run` runs the same code on CPU tensors with tiny shapes (Triton under the interpreter,
wall-clock medians), so every path of this script is exercised in `make test` without a GPU.
Without a CUDA device and without `--dry-run` it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# Dense tensor-core and memory peaks (SXM parts, no sparsity), used for the "% of peak" columns.
DEVICE_PEAKS = {
    "H100": dict(tflops={torch.float16: 989.0, torch.bfloat16: 989.0, torch.float32: 494.7}, gbps=3350.0),
    "H200": dict(tflops={torch.float16: 989.0, torch.bfloat16: 989.0, torch.float32: 494.7}, gbps=4800.0),
}


@dataclass
class Shapes:
    """Problem sizes of one run: production-like on a GPU, tiny for the dry run."""

    batch: int
    heads: int
    length: int
    head_dim: int
    chunk: int
    tokens: int
    metric_dim: int
    dim: int
    merge_r: int
    topk_length: int
    topk_k: int
    samples: int
    frames: int
    size: int
    patch: int


GPU_SHAPES = Shapes(batch=4, heads=12, length=4096, head_dim=64, chunk=256, tokens=1568, metric_dim=64, dim=768,
                    merge_r=392, topk_length=1568, topk_k=392, samples=500, frames=8, size=224, patch=16)
DRY_SHAPES = Shapes(batch=1, heads=2, length=24, head_dim=16, chunk=8, tokens=18, metric_dim=8, dim=16,
                    merge_r=4, topk_length=18, topk_k=5, samples=8, frames=2, size=32, patch=16)


@dataclass
class Row:
    op: str
    dtype: str
    contender: str
    ms: float
    speedup_vs_peer: float
    tflops: float | None
    flops_pct_peak: float | None
    gbps: float | None
    bandwidth_pct_peak: float | None


class Timer:
    """Median milliseconds of a callable: CUDA events on a GPU, wall clock on CPU (dry run)."""

    def __init__(self, device: str, dry_run: bool):
        self.device, self.dry_run = device, dry_run

    def __call__(self, fn) -> float:
        if self.device == "cuda":
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        fn()
        samples = []
        for _ in range(1 if self.dry_run else 20):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e3


def _peaks(device: str) -> dict | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in DEVICE_PEAKS.items() if key in name), None)


def _rows(op, dtype, times: dict, peer: str, flops: float, bytes_moved: float, peaks) -> list[Row]:
    """One row per contender; the rates are the op's useful work over each contender's time."""
    rows = []
    for name, ms in times.items():
        tflops = flops / (ms * 1e-3) / 1e12 if flops else None
        gbps = bytes_moved / (ms * 1e-3) / 1e9 if bytes_moved else None
        flops_pct = 100 * tflops / peaks["tflops"][dtype] if peaks and tflops else None
        bw_pct = 100 * gbps / peaks["gbps"] if peaks and gbps else None
        rows.append(Row(op, str(dtype).removeprefix("torch."), name, ms, times[peer] / ms, tflops, flops_pct, gbps,
                        bw_pct))
    return rows


def _fused_impls(device: str) -> list[str]:
    """vidsel's GPU backends that can run here (the dry run: Triton under the interpreter)."""
    from vidsel import _backends

    return [impl for impl in ("triton", "cuda") if impl in _backends.available_impls(device)]


def _counted_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _tensor_bytes(*tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors))


def bench_chunk_attention(device, dtype, s: Shapes, timer, peaks) -> list[Row]:
    import vidsel.ops as ops
    from vidsel.reference.chunk_attention import block_causal_mask

    make = lambda: torch.randn(s.batch, s.heads, s.length, s.head_dim, device=device, dtype=dtype)  # noqa: E731
    q, k, v = make(), make(), make()
    chunk_lens = [s.chunk] * (s.length // s.chunk) + ([s.length % s.chunk] if s.length % s.chunk else [])
    mask = block_causal_mask(chunk_lens, s.length, device=device)
    contenders = {f"vidsel {impl}": (lambda impl=impl: ops.chunk_causal_attention(q, k, v, chunk_size=s.chunk,
                                                                                  impl=impl))
                  for impl in _fused_impls(device)}
    contenders["SDPA, dense bool mask (peer)"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    contenders["SDPA is_causal (floor)"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    flex = _flex_attention(q, k, v, s.chunk) if device == "cuda" else None
    if flex is not None:
        contenders["FlexAttention, block mask"] = flex
    times = {name: timer(fn) for name, fn in contenders.items()}
    flops = _counted_flops(next(iter(contenders.values())))
    return _rows("chunk attention fwd", dtype, times, "SDPA, dense bool mask (peer)", flops,
                 _tensor_bytes(q, k, v, q), peaks)


def _flex_attention(q, k, v, chunk):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    chunk_id = torch.arange(q.shape[2], device=q.device) // chunk
    block_mask = create_block_mask(lambda b, h, qi, ki: chunk_id[qi] >= chunk_id[ki], None, None, q.shape[2],
                                   k.shape[2], device=q.device)
    compiled = torch.compile(flex_attention)
    return lambda: compiled(q, k, v, block_mask=block_mask)


def bench_token_merging(device, dtype, s: Shapes, timer, peaks) -> list[Row]:
    import vidsel.ops as ops
    from benchmarks.bench_token_merging import tome_style_baseline

    metric = torch.randn(s.batch, s.tokens, s.metric_dim, device=device, dtype=dtype)
    x = torch.randn(s.batch, s.tokens, s.dim, device=device, dtype=dtype)
    size = torch.ones(s.batch, s.tokens, 1, device=device, dtype=dtype)
    contenders = {f"vidsel {impl}": (lambda impl=impl: ops.merge(x, ops.bipartite_match(metric, s.merge_r, impl=impl),
                                                                 size, impl=impl))
                  for impl in _fused_impls(device)}
    contenders["ToMe-shaped eager (peer)"] = lambda: tome_style_baseline(metric, x, size, s.merge_r)
    if not os.environ.get("TRITON_INTERPRET") == "1":
        compiled = torch.compile(tome_style_baseline)
        contenders["ToMe-shaped torch.compile"] = lambda: compiled(metric, x, size, s.merge_r)
    times = {name: timer(fn) for name, fn in contenders.items()}
    half = s.tokens // 2
    flops = 2.0 * s.batch * half * half * s.metric_dim
    return _rows("bipartite match + merge", dtype, times, "ToMe-shaped eager (peer)", flops,
                 _tensor_bytes(metric, x, x), peaks)


def bench_perturbed_topk(device, dtype, s: Shapes, timer, peaks) -> list[Row]:
    import vidsel.ops as ops
    from benchmarks.bench_perturbed_topk import stts_perturbed_topk

    scores = torch.randn(s.batch, s.topk_length, device=device, dtype=dtype)
    contenders = {f"vidsel {impl}": (lambda impl=impl: ops.perturbed_topk(scores, s.topk_k, num_samples=s.samples,
                                                                          seed=1, impl=impl))
                  for impl in _fused_impls(device)}
    contenders["STTS formulation (peer)"] = lambda: stts_perturbed_topk(scores, s.topk_k, s.samples, 0.1)
    times = {name: timer(fn) for name, fn in contenders.items()}
    out_bytes = s.batch * s.topk_k * s.topk_length * scores.element_size()
    return _rows("perturbed top-k fwd", dtype, times, "STTS formulation (peer)", 0.0, float(out_bytes), peaks)


def bench_topk_gather(device, dtype, s: Shapes, timer, peaks) -> list[Row]:
    import vidsel.ops as ops
    from benchmarks.bench_topk_gather import torch_topk_gather

    x = torch.randn(s.batch, s.tokens, s.dim, device=device, dtype=dtype)
    scores = torch.randn(s.batch, s.tokens, device=device, dtype=dtype)
    contenders = {f"vidsel {impl}": (lambda impl=impl: ops.topk_gather(x, scores, s.topk_k, impl=impl))
                  for impl in _fused_impls(device)}
    contenders["torch.topk + gather (peer)"] = lambda: torch_topk_gather(x, scores, s.topk_k)
    times = {name: timer(fn) for name, fn in contenders.items()}
    moved = 2.0 * s.batch * s.topk_k * s.dim * x.element_size() + _tensor_bytes(scores)
    return _rows("top-k gather", dtype, times, "torch.topk + gather (peer)", 0.0, moved, peaks)


def bench_compressed_patch_embed(device, dtype, s: Shapes, timer, peaks) -> list[Row]:
    from vidsel.nn import CompressedPatchEmbed
    from vidsel.ops import compressed_patch_embed
    from vidsel.reference import compressed_patch_embed as reference

    block = 16 if s.size % 16 == 0 else 1
    layer = CompressedPatchEmbed(s.dim, patch=s.patch, num_frames=s.frames, size=s.size, motion_block=block)
    layer = layer.to(device, dtype)
    params = layer.params()
    shape = (s.batch, s.frames)
    iframe = torch.randn(*shape, 3, s.size, s.size, device=device, dtype=dtype)
    motion = torch.randn(*shape, 2, s.size // block, s.size // block, device=device, dtype=dtype)
    residual = torch.randn(*shape, 3, s.size, s.size, device=device, dtype=dtype)
    audio = torch.randn(*shape, params.audio_weight.shape[1], device=device, dtype=dtype)
    inputs = (iframe, motion, residual, audio)
    contenders = {f"vidsel {impl}": (lambda impl=impl: compressed_patch_embed(*inputs, params, patch=s.patch,
                                                                              impl=impl))
                  for impl in _fused_impls(device)}
    contenders["Conv2d reference path (peer)"] = lambda: reference.compressed_patch_embed(*inputs, params, s.patch,
                                                                                          True)
    times = {name: timer(fn) for name, fn in contenders.items()}
    tokens = s.batch * s.frames * (s.size // s.patch) ** 2
    flops = 2.0 * tokens * s.dim * (8 * s.patch * s.patch)
    return _rows("compressed patch embed fwd", dtype, times, "Conv2d reference path (peer)", flops,
                 _tensor_bytes(*inputs) + 4.0 * tokens * s.dim * iframe.element_size(), peaks)


BENCHMARKS = (bench_chunk_attention, bench_token_merging, bench_perturbed_topk, bench_topk_gather,
              bench_compressed_patch_embed)


def to_markdown(rows: list[Row], header: dict) -> str:
    def fmt(v):
        return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    columns = ["op", "dtype", "contender", "ms", "× vs peer", "TFLOP/s", "% peak FLOP/s", "GB/s", "% peak BW"]
    lines = [f"GPU check on {header['device']} ({header['mode']}), torch {header['torch']}", "",
             "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in asdict(row).values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(dry_run: bool, out_dir: str, dtypes: list[torch.dtype]) -> list[Row]:
    device = "cpu" if dry_run else "cuda"
    shapes = DRY_SHAPES if dry_run else GPU_SHAPES
    timer, peaks = Timer(device, dry_run), _peaks(device)
    torch.manual_seed(0)
    rows = []
    for dtype in dtypes:
        for bench in BENCHMARKS:
            rows += bench(device, dtype, shapes, timer, peaks)
    header = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run, Triton interpreter)",
                  mode="dry run" if dry_run else "CUDA events, medians", torch=torch.__version__)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu.json"), "w") as f:
        json.dump(dict(machine=header, rows=[asdict(r) for r in rows]), f, indent=1)
    with open(os.path.join(out_dir, "gpu.md"), "w") as f:
        f.write(to_markdown(rows, header))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (Triton interpreter)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to measure (DRY=1 runs it on CPU).")
        return 0
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu-check --dry-run needs TRITON_INTERPRET=1 set before Python starts", file=sys.stderr)
        return 2
    dtypes = [torch.float32, torch.bfloat16] if args.dry_run else [torch.float16, torch.bfloat16, torch.float32]
    rows = run(args.dry_run, args.out, dtypes)
    print(to_markdown(rows, dict(device="cpu" if args.dry_run else torch.cuda.get_device_name(),
                                 mode="dry run" if args.dry_run else "CUDA events", torch=torch.__version__)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
