"""The training loop of `vidsel train`: AdamW + warm-up/cosine schedule, per-step noise seeding, held-out
evaluation every epoch, JSON-lines log, atomic checkpoints every `checkpoint_every` steps and per epoch.

Resuming is exact: the data order of an epoch is a function of (seed, epoch) (DistributedSampler), each
item's augmentation of (seed, epoch, index) (VideoFolder), each step's noise of (seed, step, rank), and the
checkpoint holds the model, the AdamW moments, the schedule and the generators; a resumed run skips the
batches its checkpoint had already consumed and continues with the same arithmetic as an unbroken run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from vidsel.data import VideoFolder, collate_clips
from vidsel.train import checkpoint as ckpt
from vidsel.train.distributed import Context, all_reduce_sum, seed_step, unwrap
from vidsel.train.models import apply_sigma


class WarmupCosine:
    """lr factor at scheduler step s: linear warm-up over `warmup` steps, then cosine from 1 to
    min_factor at `total` (a class, not a lambda, so LambdaLR's state_dict keeps it)."""

    def __init__(self, total: int, warmup: int = 0, min_factor: float = 0.0):
        self.total, self.warmup, self.min_factor = int(total), int(warmup), float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def to_device(batch, device: torch.device):
    """A collated batch on `device`: a (B, ...) tensor, or a dict of them (compressed clips; other values kept)."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def make_optimizer(groups: list[dict], lr: float, total_steps: int, warmup: int, min_lr: float):
    """AdamW over the parameter groups and its LambdaLR(WarmupCosine) schedule (stepped per batch)."""
    optimizer = torch.optim.AdamW(groups, lr=lr)
    schedule = WarmupCosine(total_steps, warmup, min_lr / lr if lr > 0 else 0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def prepare_step(model: nn.Module, step: int, total: int, *, seed: int, rank: int, sigma_schedule: str,
                 sigma0: float) -> float | None:
    """Before optimizer step `step`: reseed this rank's noise, set the selectors' σ. Returns σ (or None)."""
    seed_step(seed, step, rank)
    return apply_sigma(unwrap(model), sigma_schedule, sigma0, step, total)


def train_step(model: nn.Module, optimizer, scheduler, clips: torch.Tensor, labels: torch.Tensor,
               grad_clip: float = 0.0) -> torch.Tensor:
    """One AdamW step on cross-entropy of model(clips) vs labels (B,); returns the loss.

    clips: (B, 3, T, H, W) RGB, or the dict of a compressed-clip batch (see `to_device`)."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(clips), labels)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach()


class ResumedSampler(Sampler):
    """The indices of `sampler` from position `skip` on (the batches a checkpoint already consumed)."""

    def __init__(self, sampler: Sampler, skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class ShardSampler(Sampler):
    """Evaluation shard of `rank`: indices rank, rank + world, ... padded with index 0 to the same count on
    every rank (FSDP forwards are collectives); the first `valid` positions are real."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))
        self.valid = len(self.indices)
        self.indices += [0] * (math.ceil(size / world_size) - self.valid)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader(dataset, sampler, batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate_clips, pin_memory=torch.cuda.is_available())


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoFolder, context: Context, batch_size: int, workers: int,
             fsdp: bool = False) -> dict:
    """Held-out accuracy and mean cross-entropy over every item of `dataset` (sharded over ranks)."""
    sampler = ShardSampler(len(dataset), context.rank, context.world_size)
    net = model if fsdp else unwrap(model)  # DDP's forward would broadcast buffers: ranks must match calls
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # correct, loss sum, count
    seen = 0
    for clips, labels in loader(dataset, sampler, batch_size, workers, drop_last=False):
        logits = net(to_device(clips, context.device)).float().cpu()
        keep = max(0, min(len(labels), sampler.valid - seen))
        seen += len(labels)
        logits, labels = logits[:keep], labels[:keep]
        totals += torch.tensor([(logits.argmax(1) == labels).sum().item(),
                                F.cross_entropy(logits, labels, reduction="sum").item() if keep else 0.0, keep],
                               dtype=torch.float64)
    net.train(was_training)
    correct, loss, count = all_reduce_sum(totals.to(context.device), context).cpu().tolist()
    return dict(accuracy=correct / max(count, 1), loss=loss / max(count, 1), clips=int(count))


class JsonLog:
    """Appends one JSON object per line (flushed), on rank 0 only."""

    def __init__(self, path: str | None):
        self.handle = open(path, "a", encoding="utf-8") if path else None

    def write(self, event: str, **fields) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(dict(event=event, time=round(time.time(), 3), **fields)) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class Trainer:
    """Holds the run's state; `fit()` trains from `progress` (epoch, batch in epoch, step) to the end.

    groups: AdamW parameter groups of the (wrapped) model's parameters.
    """

    def __init__(self, args, context: Context, model, groups: list[dict], train_set: VideoFolder,
                 held_out: VideoFolder, log: JsonLog):
        self.args, self.context, self.model, self.log = args, context, model, log
        self.train_set, self.held_out = train_set, held_out
        self.sampler = DistributedSampler(train_set, num_replicas=context.world_size, rank=context.rank,
                                          shuffle=True, seed=args.seed, drop_last=False)
        self.steps_per_epoch = len(self.sampler) // args.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {args.batch_size} exceeds the {len(self.sampler)} training clips "
                             f"of each of the {context.world_size} process(es)")
        self.total_steps = self.steps_per_epoch * args.epochs
        self.optimizer, self.scheduler = make_optimizer(groups, args.lr, self.total_steps, args.warmup_steps,
                                                        args.min_lr)
        self.progress = dict(epoch=0, batch=0, step=0)
        self.reported: set[str] = set()

    def fit(self) -> dict:
        """Runs the remaining epochs; returns the last held-out evaluation."""
        result = {}
        while self.progress["epoch"] < self.args.epochs:
            self._train_epoch(self.progress["epoch"])
            result = evaluate(self.model, self.held_out, self.context, self.args.batch_size, self.args.workers,
                              self.args.fsdp)
            self.log.write("eval", epoch=self.progress["epoch"], step=self.progress["step"], **result)
            if self.context.is_main and not self.args.no_progress:
                tqdm.write(f"epoch {self.progress['epoch']}: held-out accuracy {result['accuracy']:.3f} "
                           f"({result['clips']} clips), loss {result['loss']:.4f}")
            self.progress = dict(epoch=self.progress["epoch"] + 1, batch=0, step=self.progress["step"])
            self.save()
        return result

    def _train_epoch(self, epoch: int) -> None:
        args, context = self.args, self.context
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        skip = self.progress["batch"]
        batches = loader(self.train_set, ResumedSampler(self.sampler, skip * args.batch_size), args.batch_size,
                         args.workers, drop_last=True)
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch}", unit="batch",
                   disable=not context.is_main or args.no_progress, dynamic_ncols=True)
        # The loss stays on the device between log lines: no host sync per step.
        window_loss = torch.zeros((), dtype=torch.float64, device=context.device)
        window_steps, window_start = 0, time.perf_counter()
        self.model.train()
        for clips, labels in batches:
            step = self.progress["step"]
            sigma = prepare_step(self.model, step, self.total_steps, seed=args.seed, rank=context.rank,
                                 sigma_schedule=args.sigma_schedule, sigma0=args.sigma0)
            lr = self.scheduler.get_last_lr()[0]
            loss = train_step(self.model, self.optimizer, self.scheduler, to_device(clips, context.device),
                              labels.to(context.device), args.grad_clip)
            window_loss += loss.double()
            window_steps += 1
            self.progress = dict(epoch=epoch, batch=self.progress["batch"] + 1, step=step + 1)
            bar.update(1)
            if self.progress["step"] % args.log_every == 0 or self.progress["batch"] == self.steps_per_epoch:
                mean_loss = all_reduce_sum(window_loss, context).item() / (window_steps * context.world_size)
                rate = window_steps * args.batch_size * context.world_size / (time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{mean_loss:.4f}", clips_per_s=f"{rate:.1f}")
                self.log.write("train", epoch=epoch, step=step + 1, batch=self.progress["batch"], loss=mean_loss,
                               lr=lr, clips_per_s=rate, **({} if sigma is None else dict(sigma=sigma)))
                window_loss, window_steps, window_start = window_loss * 0, 0, time.perf_counter()
            if args.checkpoint_every and self.progress["step"] % args.checkpoint_every == 0 \
                    and self.progress["batch"] < self.steps_per_epoch:
                self.save()
        bar.close()
        self._report_unreadable()

    def _report_unreadable(self) -> None:
        for path in self.train_set.unreadable() + self.held_out.unreadable():
            if path not in self.reported:
                self.reported.add(path)
                self.log.write("skipped", path=path, rank=self.context.rank)

    def save(self) -> None:
        """Atomic checkpoint of the current progress (collective; rank 0 writes)."""
        state = ckpt.gather(self.model, self.optimizer, self.scheduler,
                            dict(progress=dict(self.progress), args=vars(self.args),
                                 classes=self.train_set.classes), self.context)
        if state is not None:
            path = os.path.join(self.args.out, "checkpoint.pt")
            ckpt.save_atomic(state, path)
            self.log.write("checkpoint", path=path, **self.progress)

    def resume(self, checkpoint: dict) -> None:
        ckpt.restore(self.model, self.optimizer, self.scheduler, checkpoint, self.context)
        self.progress = dict(checkpoint["progress"])
        self.log.write("resume", **self.progress)
