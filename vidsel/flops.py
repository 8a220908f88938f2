"""FLOP counting in the papers' convention: ``vidsel.flops.count(model, *inputs) -> FlopReport``.

The video papers (TESTA Tables 1–6, STTS Tables 1–7, TimeSformer) report "GFLOPs" as fvcore prints
them: **one multiply-add = 1 FLOP**, per view, batch 1. This module counts with
`torch.utils.flop_counter.FlopCounterMode` (whose formulas, like every vidsel op formula, count
2 FLOPs per multiply-add) and converts, so ``FlopReport.gmacs`` is directly comparable with the
papers' GFLOPs columns.

What is counted (fvcore's default handles, in multiply-adds):
  * linear / matmul / bmm / einsum / conv: m·n·k (bias adds are free);
  * attention: q·kᵀ and attn·v, explicitly. On the meta device SDPA decomposes into bmm's; on CPU
    tensors SDPA runs a fused flash kernel that torch's counter does not know (counts 0), so a
    formula is registered for it here;
  * LayerNorm / GroupNorm: 5 per element with affine, 4 without; BatchNorm: eval 2 (1 without
    affine), training 5 (4);
  * vidsel ops: their registered formulas (e.g. bipartite_match: the |A|×|B| key similarities;
    merge: one multiply-add per merged element);
  * softmax, GELU, residual adds, means, gathers: free (as in fvcore).

Typical use (no memory, no time: the model is built on the meta device)::

    from vidsel import flops
    report = flops.count_model("testa_f32")          # 420 GFLOPs in TESTA Table 1
    print(report.gmacs, report.params)
    print(report.table(depth=2))                     # per-module breakdown

    report = flops.count(model, clip)                # any nn.Module, on meta or CPU tensors

CLI: ``python -m vidsel.flops MODEL [--frames N] [--img-size S] [--depth D] [--set key=value ...]``.

Model convention used by `count_model` and the CLI: every vidsel model defines
``model.example_inputs(batch_size=1) -> tuple[Tensor, ...]`` (inputs on the model's device),
and configs that have a frame count / resolution call the fields ``num_frames`` / ``img_size``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import vidsel.ops  # noqa: F401  (registers the FLOP formulas of every vidsel op)

aten = torch.ops.aten

# `with torch.device("meta")` recognises factory functions through a cached set of the torch.*
# callables; fill the cache now, while torch.empty & co. are the real ones (a test harness that
# later wraps torch.empty would otherwise make meta-device construction allocate on the CPU).
try:
    from torch.utils._device import _device_constructors

    _device_constructors()
except ImportError:  # pragma: no cover - private helper moved; construction still works unpatched
    pass

__all__ = ["FlopReport", "count", "count_model", "main", "FORMULAS"]


# ---------------------------------------------------------------------------------------------
# Extra formulas. Units are FlopCounterMode's (2 per multiply-add); fvcore's per-element norm
# costs (5 with affine) are therefore doubled here so that the final halving gives fvcore's count.
# ---------------------------------------------------------------------------------------------


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The fused CPU flash-attention kernel (F.scaled_dot_product_attention on CPU tensors)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _overrideable_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _layer_norm_flops(input_shape, normalized_shape, weight_shape, bias_shape, eps, *args, **kwargs) -> int:
    """fvcore: 5 per element with an affine transform, 4 without (x2: FlopCounterMode units)."""
    return 2 * _numel(input_shape) * (5 if weight_shape is not None else 4)


def _group_norm_flops(input_shape, weight_shape, bias_shape, *args, **kwargs) -> int:
    return 2 * _numel(input_shape) * (5 if weight_shape is not None else 4)


def _batch_norm_eval_flops(input_shape, weight_shape, *args, **kwargs) -> int:
    """fvcore: a folded scale (+ shift) in eval: 2 per element with affine, 1 without."""
    return 2 * _numel(input_shape) * (2 if weight_shape is not None else 1)


def _batch_norm_train_flops(input_shape, weight_shape, *args, **kwargs) -> int:
    return 2 * _numel(input_shape) * (5 if weight_shape is not None else 4)


def _optional_op(name: str):
    return getattr(aten, name, None)


FORMULAS: dict[Any, Callable] = {
    op: formula
    for op, formula in (
        (_optional_op("_scaled_dot_product_flash_attention_for_cpu"), _cpu_sdpa_flops),
        (_optional_op("_scaled_dot_product_flash_attention_for_cpu_backward"), _cpu_sdpa_backward_flops),
        (_optional_op("_scaled_dot_product_fused_attention_overrideable"), _overrideable_sdpa_flops),
        (aten.native_layer_norm, _layer_norm_flops),
        (aten.native_group_norm, _group_norm_flops),
        (_optional_op("_native_batch_norm_legit_no_training"), _batch_norm_eval_flops),
        (_optional_op("_native_batch_norm_legit"), _batch_norm_train_flops),
    )
    if op is not None
}
"""Formulas added to torch's registry while counting (FlopCounterMode units: 2 per multiply-add)."""


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class FlopReport:
    """Result of `count`. All numbers in the papers' convention (1 multiply-add = 1 FLOP).

    gmacs      total, in G multiply-adds = the "GFLOPs" of the papers (per view, for the batch given)
    by_module  module path ("" = the whole model, "blocks.0.attn", ...) -> GMACs inside it
    by_op      operator name ("aten.addmm", "vidsel.bipartite_match", ...) -> GMACs
    module_ops module path -> {operator name -> GMACs}
    params     number of parameters of the model
    """

    gmacs: float
    by_module: dict[str, float] = field(default_factory=dict)
    by_op: dict[str, float] = field(default_factory=dict)
    module_ops: dict[str, dict[str, float]] = field(default_factory=dict)
    params: int = 0

    @property
    def gflops(self) -> float:
        """Alias of `gmacs`: what fvcore (and the papers) print as GFLOPs."""
        return self.gmacs

    def table(self, depth: int = 2) -> str:
        """Plain-text per-module breakdown down to `depth` dots in the module path."""
        lines = [f"{'module':<40} {'GFLOPs':>10} {'%':>6}"]
        total = self.gmacs or 1.0
        for name, value in self.by_module.items():
            if name and name.count(".") >= depth:
                continue
            indent = "  " * (name.count(".") + 1 if name else 0)
            lines.append(f"{indent + (name or '(model)'):<40} {value:>10.5g} {100 * value / total:>5.1f}%")
        lines.append(f"{'total':<40} {self.gmacs:>10.5g}   params {self.params / 1e6:.2f} M")
        return "\n".join(lines)


def _op_name(op) -> str:
    return str(op).replace("OpOverloadPacket(op='", "").replace("')", "").strip("<>")


def _relative_name(name: str, root: str) -> str | None:
    """FlopCounterMode names modules "<RootClass>.blocks.0"; report them as "blocks.0"."""
    if name == root:
        return ""
    if name.startswith(root + "."):
        return name[len(root) + 1 :]
    return None


def _untracked_containers(by_module: dict[str, float]) -> dict[str, float]:
    """Totals of modules whose forward never ran but whose children did (ModuleList "blocks",
    blocks driven stage by stage): each counted module adds to its ancestors up to the first
    counted one (which already includes it)."""
    extra: dict[str, float] = {}
    for name, value in by_module.items():
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in by_module:
                break
            extra[parent] = extra.get(parent, 0.0) + value
    extra.pop("", None)
    return extra


def _natural_key(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


def count(model: torch.nn.Module, *inputs, train: bool = False, **kwargs) -> FlopReport:
    """Counts one forward of `model(*inputs, **kwargs)` in the papers' convention.

    Args:
        model: any nn.Module. Build it under ``torch.device("meta")`` (and pass meta inputs) to
            count without memory or compute — how the GFLOPs tests count full-size models.
        inputs: the forward's positional inputs, batch 1 for the papers' per-view numbers.
        train: run the forward in training mode (default: eval, as the papers report).
        kwargs: keyword arguments of the forward.

    Returns:
        FlopReport (total GMACs = papers' GFLOPs, per-module and per-op breakdowns, params).
    """
    was_training = model.training
    model.train(train)
    counter = FlopCounterMode(display=False, custom_mapping=FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module: dict[str, float] = {}
    module_ops: dict[str, dict[str, float]] = {}
    for name, ops in counts.items():
        relative = _relative_name(name, root)
        if relative is None:
            continue
        by_module[relative] = sum(ops.values()) / 2e9
        module_ops[relative] = {_op_name(op): v / 2e9 for op, v in ops.items()}
    global_ops = counts.get("Global", {})
    by_module.update(_untracked_containers(by_module))
    return FlopReport(
        gmacs=sum(global_ops.values()) / 2e9,
        by_module=dict(sorted(by_module.items(), key=lambda kv: _natural_key(kv[0]))),
        by_op={_op_name(op): v / 2e9 for op, v in sorted(global_ops.items(), key=lambda kv: -kv[1])},
        module_ops=module_ops,
        params=sum(p.numel() for p in model.parameters()),
    )


def count_model(name: str, batch_size: int = 1, device: str | torch.device = "meta", **overrides) -> FlopReport:
    """Builds registered model `name` (with config `overrides`) on `device` and counts one forward.

    The input comes from ``model.example_inputs(batch_size)``. On the default meta device nothing
    is allocated or computed, so full-size 96-frame models count in well under a second.
    """
    from vidsel.models import create_model

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    with torch.device(device):
        model = create_model(name, **overrides)
    inputs = model.example_inputs(batch_size)
    return count(model, *inputs)


def _parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the per-module GFLOPs table of a registered model (meta device, batch 1)."""
    parser = argparse.ArgumentParser(prog="python -m vidsel.flops", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registered model name (see vidsel.list_models())")
    parser.add_argument("--frames", type=int, help="override config field num_frames")
    parser.add_argument("--img-size", type=int, help="override config field img_size")
    parser.add_argument("--depth", type=int, help="override config field depth (number of blocks)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other config overrides")
    parser.add_argument("--table-depth", type=int, default=3, help="module nesting shown in the table")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("num_frames", args.frames), ("img_size", args.img_size), ("depth", args.depth)) if v}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _parse_value(value)
    report = count_model(args.model, **overrides)
    print(f"{args.model} {overrides or ''}".strip())
    print(report.table(depth=args.table_depth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
