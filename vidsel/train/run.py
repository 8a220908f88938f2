"""Assembles a run from parsed `vidsel train` arguments: process group, datasets, model, optimizer, resume."""

from __future__ import annotations

import argparse
import os
import warnings

import torch

from vidsel.data import VideoFolder
from vidsel.data.video_folder import find_classes
from vidsel.train import checkpoint as ckpt
from vidsel.train import distributed
from vidsel.train.loop import JsonLog, Trainer
from vidsel.train.models import build_classifier, clip_geometry, has_sigma, input_mode, parameter_groups, uses_audio

# Arguments a resumed run must share with its checkpoint for the continuation to be exact.
RESUME_INVARIANTS = ("model", "epochs", "batch_size", "lr", "seed", "weight_decay", "warmup_steps", "min_lr",
                     "model_arg", "r_frames", "r_patches", "tome_r", "sigma0", "sigma_schedule", "num_samples",
                     "scorer_lr_mult", "frames", "size", "val_fraction", "augment", "grad_clip")


def datasets(args: argparse.Namespace, frames: int, size: int, mode: str = "rgb",
             audio: bool = False) -> tuple[VideoFolder, VideoFolder]:
    """(train, held-out): root/train + root/val when both exist, else a seeded per-class split of root.

    mode: the VideoFolder mode the model reads; audio: compressed clips with their audio segments (files
    without audio are then skipped as unreadable)."""
    train_root, val_root = os.path.join(args.data, "train"), os.path.join(args.data, "val")
    common = dict(frames=frames, size=size, mode=mode, seed=args.seed,
                  reader_kwargs=dict(audio=audio) if mode == "compressed" else None, require_audio=audio)
    if os.path.isdir(train_root) and os.path.isdir(val_root):
        train_set = VideoFolder(train_root, augment=args.augment, **common)
        return train_set, VideoFolder(val_root, classes=train_set.classes, **common)
    return VideoFolder(args.data, augment=args.augment, **common).split(args.val_fraction)


def check_resumable(saved: dict, args: argparse.Namespace, world_size: int, path: str) -> None:
    changed = [f"--{k.replace('_', '-')}" for k in RESUME_INVARIANTS if saved["args"].get(k) != getattr(args, k)]
    if changed:
        raise ValueError(f"{path} was written with different {', '.join(changed)}: resume with the same flags")
    if saved["world_size"] != world_size:
        warnings.warn(f"{path} was written by {saved['world_size']} process(es), resuming on {world_size}: "
                      "the data order per process differs from the original run", RuntimeWarning, stacklevel=2)


def run(args: argparse.Namespace) -> int:
    """Trains as `args` says; returns 0. Collective: under torchrun every rank runs it."""
    context = distributed.init(args.device)
    try:
        os.makedirs(args.out, exist_ok=True)
        log = JsonLog(os.path.join(args.out, "log.jsonl") if context.is_main else None)
        try:
            _run(args, context, log)
        finally:
            log.close()
        return 0
    finally:
        distributed.close(context)


def _build(args: argparse.Namespace, num_classes: int):
    from vidsel.train import model_overrides

    overrides = model_overrides(args)
    torch.manual_seed(args.seed)  # identical initial weights on every rank (FSDP2 does not broadcast)
    model = build_classifier(args.model, num_classes, overrides)
    if not has_sigma(model) and (args.sigma_schedule != "linear" or args.scorer_lr_mult != 1.0):
        raise ValueError(f"--sigma-schedule / --scorer-lr-mult apply to STTS models, not {args.model!r}")
    return model, overrides


def _run(args: argparse.Namespace, context: distributed.Context, log: JsonLog) -> None:
    resume_path = None
    if args.resume is not None:
        resume_path = os.path.join(args.out, "checkpoint.pt") if args.resume == "auto" else args.resume
        if args.resume == "auto" and not os.path.exists(resume_path):
            # Killed before its first checkpoint: the run starts over (an explicit path must exist).
            warnings.warn(f"--resume: no {resume_path} yet, starting from scratch", RuntimeWarning, stacklevel=2)
            resume_path = None
    saved = ckpt.load(resume_path) if resume_path else None
    if saved is not None:
        check_resumable(saved, args, context.world_size, resume_path)
    # The model's clip geometry (num_frames, img_size; --frames / --size set them) decides the dataset's.
    split = os.path.isdir(os.path.join(args.data, "train")) and os.path.isdir(os.path.join(args.data, "val"))
    model, overrides = _build(args, len(find_classes(os.path.join(args.data, "train") if split else args.data)))
    frames, size = clip_geometry(model)
    train_set, held_out = datasets(args, frames, size, input_mode(model), uses_audio(model))
    hard_selection = has_sigma(model) and args.sigma0 == 0  # scorers then get no gradient
    model = distributed.wrap(model.to(context.device), context, args.fsdp, find_unused_parameters=hard_selection)
    groups = parameter_groups(distributed.unwrap(model), args.lr, args.weight_decay, args.scorer_lr_mult)
    trainer = Trainer(args, context, model, groups, train_set, held_out, log)
    if saved is not None:
        trainer.resume(saved)
        del saved
    else:
        log.write("start", args=vars(args), world_size=context.world_size, classes=train_set.classes,
                  train_clips=len(train_set), held_out_clips=len(held_out), steps=trainer.total_steps,
                  parameters=sum(p.numel() for p in model.parameters()))
    trainer.fit()
    _save_final(args, context, trainer, overrides)


def _save_final(args, context, trainer: Trainer, overrides: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True,
                                                                         cpu_offload=context.distributed))
    if context.is_main:
        ckpt.save_atomic(dict(model=state, name=args.model, overrides=overrides, classes=trainer.train_set.classes,
                              num_classes=len(trainer.train_set.classes)), os.path.join(args.out, "model.pt"))
