"""Two Gloo processes under DistributedDataParallel (and under FSDP2) take the same optimizer step as one
process on the concatenated batch (tiny TESTA and tiny STTS), per-rank seeded noise reproduces, and a
checkpoint of the sharded model restores into a fresh sharded one that continues bit for bit.

In float64: AdamW's first update is ≈ lr·sign(g), so in float32 the summation-order noise of gradients
that are zero in exact arithmetic (attention key biases: softmax ignores a shift shared by all keys)
would be amplified to lr-sized differences that say nothing about the distributed step.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vidsel.train import checkpoint as ckpt
from vidsel.train.distributed import Context, unwrap, wrap
from vidsel.train.loop import make_optimizer, prepare_step, train_step
from vidsel.train.models import build_classifier, parameter_groups

WORLD, PER_RANK, STEPS, LR = 2, 3, 10, 1e-3
TINY_VIT = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
CASES = {
    "testa": ("testa_f16", dict(TINY_VIT, r_frames=1, r_patches=2), 0.0),
    "stts": ("timesformer_8x224-T0.5@0-S0.7@1", dict(TINY_VIT, num_samples=20), 0.0),
    "stts_noisy": ("timesformer_8x224-T0.5@0-S0.7@1", dict(TINY_VIT, num_samples=20), 0.1),
}
FSDP_CASES = ("testa", "stts_noisy")


def setup(name, overrides, distributed_context=None, sigma=0.0, fsdp=False):
    torch.manual_seed(0)
    model = build_classifier(name, 4, overrides).double()
    if distributed_context is not None:  # hard selection (σ = 0) leaves the STTS scorers without gradient
        model = wrap(model, distributed_context, fsdp, find_unused_parameters="timesformer" in name and sigma == 0)
    groups = parameter_groups(unwrap(model), LR, 0.05, scorer_lr_mult=10.0 if "timesformer" in name else 1.0)
    optimizer, scheduler = make_optimizer(groups, LR, STEPS, 0, 0.0)
    return model, optimizer, scheduler


def batch():
    generator = torch.Generator().manual_seed(1)
    clips = torch.rand(WORLD * PER_RANK, 3, 4, 32, 32, generator=generator, dtype=torch.float64)
    return clips, torch.tensor([0, 1, 2, 3, 1, 2])


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    context = Context(rank, WORLD, rank, torch.device("cpu"), distributed=True)
    clips, labels = batch()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for case, (name, overrides, sigma) in CASES.items():
        model, optimizer, scheduler = setup(name, overrides, context, sigma)
        prepare_step(model, 0, STEPS, seed=0, rank=rank, sigma_schedule="constant", sigma0=sigma)
        train_step(model, optimizer, scheduler, clips[mine], labels[mine])
        if rank == 0:
            torch.save(unwrap(model).state_dict(), os.path.join(out_dir, f"{case}.pt"))
    for case in FSDP_CASES:  # FSDP2: parameters sharded over the two ranks, gathered back for the check
        name, overrides, sigma = CASES[case]
        model, optimizer, scheduler = setup(name, overrides, context, sigma, fsdp=True)
        prepare_step(model, 0, STEPS, seed=0, rank=rank, sigma_schedule="constant", sigma0=sigma)
        train_step(model, optimizer, scheduler, clips[mine], labels[mine])
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(state, os.path.join(out_dir, f"{case}_fsdp.pt"))
        fsdp_resume_check(case, context, model, optimizer, scheduler, clips[mine], labels[mine], out_dir)
    dist.destroy_process_group()


def fsdp_resume_check(case, context, model, optimizer, scheduler, clips, labels, out_dir) -> None:
    """Checkpoint of the sharded run, restored into a fresh sharded model: both take step 1 from there;
    rank 0 writes the largest difference of the full weights after it (the test asserts 0)."""
    name, overrides, sigma = CASES[case]
    path = os.path.join(out_dir, f"{case}_fsdp_checkpoint.pt")
    saved = ckpt.gather(model, optimizer, scheduler, dict(progress={}), context)
    main = context.rank == 0
    if main:
        ckpt.save_atomic(saved, path)
    dist.barrier()
    fresh, fresh_optimizer, fresh_scheduler = setup(name, overrides, context, sigma, fsdp=True)
    ckpt.restore(fresh, fresh_optimizer, fresh_scheduler, ckpt.load(path), context)
    for net, opt, sched in ((model, optimizer, scheduler), (fresh, fresh_optimizer, fresh_scheduler)):
        prepare_step(net, 1, STEPS, seed=0, rank=context.rank, sigma_schedule="constant", sigma0=sigma)
        train_step(net, opt, sched, clips, labels)
    after, restored = ckpt.full_model_state(model), ckpt.full_model_state(fresh)
    if main:
        diff = max((after[k] - restored[k]).abs().max().item() for k in after)
        torch.save(dict(diff=diff, moved=sum(not torch.equal(after[k], saved["model"][k]) for k in after)),
                   os.path.join(out_dir, f"{case}_fsdp_resume.pt"))


def single_process_step(case: str) -> dict:
    """The reference: one process, the whole batch (σ = 0); with noise (σ > 0) each rank's half under
    that rank's seed, losses averaged — what DDP's gradient averaging computes."""
    name, overrides, sigma = CASES[case]
    model, optimizer, scheduler = setup(name, overrides)
    clips, labels = batch()
    if sigma == 0:
        prepare_step(model, 0, STEPS, seed=0, rank=0, sigma_schedule="constant", sigma0=sigma)
        train_step(model, optimizer, scheduler, clips, labels)
        return model.state_dict()
    optimizer.zero_grad()
    for rank in range(WORLD):
        prepare_step(model, 0, STEPS, seed=0, rank=rank, sigma_schedule="constant", sigma0=sigma)
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        (torch.nn.functional.cross_entropy(model(clips[mine]), labels[mine]) / WORLD).backward()
    optimizer.step()
    return model.state_dict()


def test_ddp_and_fsdp_steps_equal_single_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    runs = [(case, f"{case}.pt") for case in CASES] + [(case, f"{case}_fsdp.pt") for case in FSDP_CASES]
    for case, saved in runs:
        reference = single_process_step(case)
        distributed_state = torch.load(tmp_path / saved)
        initial = setup(*CASES[case][:2])[0].state_dict()
        assert reference.keys() == distributed_state.keys()
        moved = 0
        for key, expected in reference.items():
            diff = (distributed_state[key] - expected).abs().max().item()
            assert diff <= 1e-6, f"{case}: {key} differs by {diff:.3g}"
            moved += int(not torch.equal(expected, initial[key]))
        assert moved > len(reference) // 2, f"{case}: the step left most parameters unchanged"
    for case in FSDP_CASES:  # a sharded checkpoint restored into a fresh sharded model continues exactly
        resumed = torch.load(tmp_path / f"{case}_fsdp_resume.pt")
        assert resumed["diff"] == 0.0 and resumed["moved"] > 0, (case, resumed)
