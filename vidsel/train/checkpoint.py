"""Checkpoints written atomically: a temporary file in the same folder, fsync, then os.replace.

A reader (or a resume after SIGKILL) therefore sees either the previous complete checkpoint or the new
complete one, never a partial file. Model and optimizer states are gathered as full (unsharded) tensors
with `torch.distributed.checkpoint.state_dict`, so DDP, FSDP2 and single-process runs write the same
format and any of them can resume from it (every rank reads the file: a shared or local filesystem).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vidsel.train.distributed import Context, all_gather_objects

FORMAT_VERSION = 1


def save_atomic(obj, path: str) -> None:
    """torch.save to `path` through `path.tmp-<pid>` + fsync + rename (+ fsync of the folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rng_state() -> dict:
    """This process's generators: torch CPU (+ every CUDA device), NumPy's global, Python's random."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _options(context: Context, **kwargs) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=context.distributed, **kwargs)


def gather(model: nn.Module, optimizer, scheduler, progress: dict, context: Context) -> dict | None:
    """The checkpoint dictionary on rank 0 (None elsewhere); a collective: every rank must call it."""
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(context))
    rng = all_gather_objects(rng_state(), context)
    if not context.is_main:
        return None
    return dict(
        format=FORMAT_VERSION, model=model_state, optimizer=optimizer_state, scheduler=scheduler.state_dict(),
        rng=rng, world_size=context.world_size, **progress,
    )


def load(path: str) -> dict:
    """Reads a checkpoint (on CPU) and checks its format."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"{path}: no checkpoint to resume from", path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a vidsel train checkpoint (format {FORMAT_VERSION})")
    return checkpoint


def restore(model: nn.Module, optimizer, scheduler, checkpoint: dict, context: Context) -> None:
    """Loads model, optimizer, scheduler and this rank's generators from `checkpoint` (every rank)."""
    set_state_dict(
        model, optimizer, model_state_dict=checkpoint["model"], optim_state_dict=checkpoint["optimizer"],
        options=_options(context),
    )
    scheduler.load_state_dict(checkpoint["scheduler"])
    rng = checkpoint["rng"]
    set_rng_state(rng[context.rank] if context.rank < len(rng) else rng[0])
