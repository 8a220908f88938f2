"""`vidsel.patch` on the libraries' own models: clips/s patched vs unpatched, CPU, same run.

* transformers `TimesformerModel`, TimeSformer-B/16 8×224² (its default config), patched with
  `vidsel.patch.testa(model, r_frames=1, r_patches=12)`;
* transformers `VideoMAEModel`, VideoMAE-B 16×224² (its default config, 1568 tokens), patched with
  `vidsel.patch.tome(model, r=100)`.

Random weights from the default configs (nothing downloaded; speed does not depend on the weights).
Float32, batch 1, inference_mode, one thread (see bench_models_testa.py: on this shared 2-core
machine parallel regions wait for descheduled threads). The patched and unpatched model are the same
object: the handle is applied and removed between calls, so both contenders run round-robin in
one process after a warm-up round. GFLOPs from `vidsel.flops` on the meta device.
"""

from __future__ import annotations

import os

import torch

from benchmarks.harness import Table, interleaved_median_ms, one_thread
from vidsel import flops

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {  # name: (config class, model class, frames, patch function, arguments, label)
    "TimeSformer-B 8×224": ("TimesformerConfig", "TimesformerModel", 8, "testa", (1, 12), "TESTA R_T=1, R_S=12"),
    "VideoMAE-B 16×224": ("VideoMAEConfig", "VideoMAEModel", 16, "tome", (100,), "ToMe r=100"),
}


def _build(config_name: str, model_name: str, device: str = "cpu"):
    import transformers

    with torch.device(device):
        return getattr(transformers, model_name)(getattr(transformers, config_name)()).eval()


def _patch(model, method: str, args):
    import vidsel.patch

    return getattr(vidsel.patch, method)(model, *args)


def _gflops(config_name: str, model_name: str, frames: int, method: str, args) -> tuple[float, float]:
    """(unpatched, patched) GFLOPs of one clip, counted on the meta device."""
    model = _build(config_name, model_name, "meta")
    clip = torch.empty(1, frames, 3, 224, 224, device="meta")
    unpatched = flops.count(model, clip).gmacs
    _patch(model, method, args)
    return unpatched, flops.count(model, clip).gmacs


def speed_table(profile: str) -> Table:
    rounds = 5 if profile == "full" else 3
    table = Table(
        name="patch",
        title=f"vidsel.patch on transformers video models: CPU float32, batch 1, 1 thread (median of {rounds} "
              "round-robin runs)",
        columns=["model", "patch", "GFLOPs", "median s", "clips/s", "speedup vs unpatched"],
    )
    for name, (config_name, model_name, frames, method, args, label) in CASES.items():
        model = _build(config_name, model_name)
        clip = torch.randn(1, frames, 3, 224, 224)
        handle = _patch(model, method, args)
        handle.remove()

        def unpatched():
            with torch.inference_mode():
                model(clip)

        def patched():
            handle = _patch(model, method, args)
            try:
                with torch.inference_mode():
                    model(clip)
            finally:
                handle.remove()

        times = interleaved_median_ms({"unpatched": unpatched, "patched": patched}, rounds, warmup_rounds=1)
        gflops_before, gflops_after = _gflops(config_name, model_name, frames, method, args)
        for contender, gmacs, patch_label in (("unpatched", gflops_before, "—"), ("patched", gflops_after, label)):
            ms = times[contender]
            table.rows.append([name, patch_label, f"{gmacs:.1f}", f"{ms / 1e3:.2f}", f"{1e3 / ms:.3f}",
                               f"{times['unpatched'] / ms:.2f}"])
        del model
    table.notes.append(
        "Same model object for both contenders (patched and removed around each call; patching costs "
        "microseconds). TimeSformer's own attention is an explicit softmax and the TESTA patch keeps it, "
        "so the speed-up is the aggregation's; VideoMAE runs SDPA patched and unpatched."
    )
    return table


def run(profile: str) -> list[Table]:
    torch.manual_seed(0)
    with one_thread():
        return [speed_table(profile)]
