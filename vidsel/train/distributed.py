"""torch.distributed plumbing for `vidsel train`: one process per device, launched by torchrun.

Under ``torchrun --nproc_per_node=N`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the process
group uses NCCL on GPUs and Gloo on CPUs; the model is wrapped in DistributedDataParallel, or sharded
with FSDP2 (`torch.distributed.fsdp.fully_shard`, the layers of each transformer block, then the root)
for configs too big to replicate. A plain ``python -m vidsel.train`` is the world of one and wraps nothing.

The sampling ops draw their Philox seed from torch's default generator when no seed is passed
(`vidsel.ops.perturbed_topk`, `gumbel_topk`), so the loop reseeds that generator before every step with
`noise_seed(seed, step, rank)`: the noise of each rank is a function of the step, identical across
restarts, and nothing random is carried from one step to the next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    """Where this process sits: rank of world_size, its device, and whether a process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "auto") -> Context:
    """Joins the torchrun process group (if launched so) and picks this process's device.

    device: "auto" (the local GPU when CUDA is available, else CPU), "cpu" or "cuda".
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f'device must be "auto", "cpu" or "cuda", got {device!r}')
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    if not launched_by_torchrun():
        return Context(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=target if use_cuda else None)
    return Context(rank, world_size, local_rank, target, distributed=True)


def close(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def noise_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the default generator for optimizer step `step` on `rank` (63 bits, SeedSequence hash)."""
    state = np.random.SeedSequence((int(seed), 0x5EED, int(step), int(rank))).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def seed_step(seed: int, step: int, rank: int) -> None:
    """Reseeds torch's default generators (CPU and every GPU) for this rank's step."""
    torch.manual_seed(noise_seed(seed, step, rank))


def shard_units(model: nn.Module) -> list[nn.Module]:
    """FSDP2 units: the parametrised children of every member of a ModuleList named "blocks" (TESTA,
    TimeSformer, STTS backbones). Children, not blocks: TESTA runs a block as three stage methods
    (temporal, spatial, MLP) around its merges, and FSDP2 gathers a unit's parameters only around
    `forward` calls, which every child (norm, attention, linear, MLP) gets."""
    units = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            for block in module:
                units += [child for child in block.children() if any(True for _ in child.parameters())]
    return units


def wrap(model: nn.Module, context: Context, fsdp: bool = False, find_unused_parameters: bool = False) -> nn.Module:
    """DDP (or FSDP2 with `fsdp`) around `model`, already on context.device; unchanged in a world of one
    unless `fsdp` (fully_shard needs a process group). find_unused_parameters: for DDP, when some parameters
    get no gradient (STTS selectors in hard mode, σ = 0, give their scorers none)."""
    if fsdp:
        if not context.distributed:
            raise ValueError("--fsdp needs a process group: launch with torchrun --nproc_per_node=N")
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units(model):
            fully_shard(unit)
        fully_shard(model)
        return model
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (FSDP2 modules are their own module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Sum over ranks (in place on a copy); identity in a world of one."""
    values = values.detach().clone()
    if context.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj, context: Context) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a list of one in a world of one)."""
    if not context.distributed:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()
