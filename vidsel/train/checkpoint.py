"""Checkpoints written atomically: a temporary file in the same folder, fsync, then os.replace.

A reader (or a resume after SIGKILL) therefore sees either the previous complete checkpoint or the new
complete one, never a partial file. Model and optimizer states are gathered as full (unsharded) tensors,
so DDP, FSDP2 and single-process runs write the same format and any of them can resume from it (every
rank reads the file: a shared or local filesystem).

The model part is keyed by parameter and buffer names (`named_parameters`), not by `state_dict()` keys:
a model whose state_dict hooks rename keys (the STTS TimeSformer writes its checkpoint's names,
patch_embed.weight for patch_embed.proj.weight) would otherwise be restored only in part, because
`torch.distributed.checkpoint.state_dict.set_state_dict` fills the keys it cannot match to a parameter
with the parameter's current value, and the load hook then lets that value win. The optimizer part goes
through `torch.distributed.checkpoint.state_dict`, whose optimizer keys are those same parameter names.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from vidsel.train.distributed import Context, all_gather_objects, unwrap

FORMAT_VERSION = 2


def save_atomic(obj, path: str) -> None:
    """torch.save to `path` through `path.tmp-<pid>` + fsync + rename (+ fsync of the folder).

    `path` is never partly written: a failure (or a kill) before the rename leaves the previous file; a
    failure inside the process also removes the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
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


def model_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and persistent buffer, in `named_parameters` / `named_buffers`
    order and naming (DDP's "module." prefix dropped; FSDP2 parameters are their sharded DTensors).

    FSDP2 leaves the root's parameters unsharded after a forward (an evaluation pass, say) and registers
    the full tensors in their place until the next reshard; resharding first gives the sharded
    parameters the optimizer holds."""
    model = unwrap(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    tensors = list(model.named_parameters())
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                tensors.append((f"{module_name}.{name}" if module_name else name, buffer))
    return tensors


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: full CPU copy} of `model_tensors` (a collective under FSDP2: every rank must call it)."""
    state = {}
    for name, tensor in model_tensors(model):
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        state[name] = full.detach().to("cpu", copy=True)
    return state


@torch.no_grad()
def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copies `state` (from `full_model_state`) into the model's parameters and buffers, shards included.

    Raises ValueError when a name is missing or extra, or a shape differs (another model or config)."""
    tensors = model_tensors(model)
    names = {name for name, _ in tensors}
    missing, extra = sorted(names - state.keys()), sorted(state.keys() - names)
    if missing or extra:
        raise ValueError(f"checkpoint model state does not fit this model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for name, tensor in tensors:
        source = state[name]
        if tuple(source.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(source.shape)}, "
                             f"the model's is {tuple(tensor.shape)}")
        if isinstance(tensor, DTensor):
            local = distribute_tensor(source.to(tensor.device), tensor.device_mesh, tensor.placements).to_local()
            tensor.to_local().copy_(local)
        else:
            tensor.copy_(source)


def gather(model: nn.Module, optimizer, scheduler, progress: dict, context: Context) -> dict | None:
    """The checkpoint dictionary on rank 0 (None elsewhere); a collective: every rank must call it."""
    model_state = full_model_state(model)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_options(context))
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
    """Loads optimizer, model, scheduler and this rank's generators from `checkpoint` (every rank).

    The optimizer first: loading into an optimizer without state runs one zero-learning-rate step to create
    it, and that step must not touch the restored weights."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=checkpoint["optimizer"], options=_options(context))
    load_full_model_state(model, checkpoint["model"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    rng = checkpoint["rng"]
    set_rng_state(rng[context.rank] if context.rank < len(rng) else rng[0])
