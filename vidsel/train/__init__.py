"""`vidsel train` / `python -m vidsel.train`: fine-tune a vidsel model on a folder of labelled videos.

One machine::

    python -m vidsel.train --model testa_f16 --data videos/ --epochs 10 --batch-size 8 --lr 1e-4 --out runs/a

Many processes (one per GPU, or CPU processes with Gloo), same flags; --batch-size is per process::

    torchrun --nproc_per_node=4 -m vidsel.train --model testa_f16 --data videos/ --out runs/a [--fsdp]

`--data` holds ``<class>/<video>`` folders (then --val-fraction of each class is held out, seeded), or
``train/<class>/...`` and ``val/<class>/...``. The output folder receives log.jsonl (one JSON object per
line: train / eval / checkpoint / resume / skipped events), checkpoint.pt (atomic; `--resume` continues
from it exactly) and model.pt (final weights, class names and the model's arguments).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidsel train", description="Fine-tune a vidsel model on root/<class>/<video> folders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--model", required=True, help="a vidsel.list_models() name (STTS grammar names too)")
    run.add_argument("--data", required=True, help="dataset root: <class>/<video>, or train/ and val/ of those")
    run.add_argument("--out", required=True, help="output folder (log.jsonl, checkpoint.pt, model.pt)")
    run.add_argument("--epochs", type=int, default=10)
    run.add_argument("--batch-size", type=int, default=8, help="clips per process and step")
    run.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    run.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                     help="continue from CHECKPOINT (default: OUT/checkpoint.pt; from scratch if there is none yet)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--weight-decay", type=float, default=0.05)
    optim.add_argument("--warmup-steps", type=int, default=0)
    optim.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
    optim.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: off)")
    data = parser.add_argument_group("data")
    data.add_argument("--frames", type=int, default=None,
                      help="frames per clip; sets the model's num_frames (default: the config's)")
    data.add_argument("--size", type=int, default=None,
                      help="frame side; sets the model's img_size (default: the config's)")
    data.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of each class")
    data.add_argument("--augment", action="store_true", help="temporal jitter + horizontal flip in training")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: main process)")
    model = parser.add_argument_group("model knobs")
    model.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="config field override, repeatable (e.g. depth=4, embed_dim=384)")
    model.add_argument("--r-frames", type=int, default=None, help="TESTA R_T: frames merged per block")
    model.add_argument("--r-patches", type=int, default=None, help="TESTA R_S: patches merged per frame and block")
    model.add_argument("--tome-r", type=int, default=None, help="joint ViT + ToMe: tokens merged per block")
    model.add_argument("--sigma0", type=float, default=0.1, help="STTS: initial σ of the perturbed top-k")
    model.add_argument("--sigma-schedule", default="linear", choices=("linear", "constant"),
                       help="STTS: σ decays linearly to 0 over training (sigma_at) or stays at sigma0")
    model.add_argument("--num-samples", type=int, default=None, help="STTS: perturbed samples n")
    model.add_argument("--scorer-lr-mult", type=float, default=1.0, help="STTS: scorer lr = this × --lr")
    model.add_argument("--impl", default=None, help='backend of the vidsel ops ("auto", "cpu", "reference", ...)')
    out = parser.add_argument_group("output")
    out.add_argument("--log-every", type=int, default=10, help="steps per train log line")
    out.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: per epoch)")
    out.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for values argparse's types cannot rule out."""
    positive = ("epochs", "batch_size", "log_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("frames", "size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("workers", "checkpoint_every", "warmup_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("lr", "weight_decay", "min_lr", "grad_clip", "sigma0", "scorer_lr_mult"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not os.path.isdir(args.data):
        raise ValueError(f"--data {args.data!r} is not a folder")


def model_overrides(args: argparse.Namespace) -> dict:
    """Config overrides from --model-arg and the named knobs (only those given)."""
    from vidsel.train.models import parse_model_args

    overrides = parse_model_args(args.model_arg)
    named = dict(r_frames=args.r_frames, r_patches=args.r_patches, r=args.tome_r, num_samples=args.num_samples,
                 impl=args.impl, num_frames=args.frames, img_size=args.size)
    overrides.update({k: v for k, v in named.items() if v is not None})
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (default sys.argv[1:]), trains, returns the exit status (0 on success)."""
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        from vidsel.train.run import run

        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"vidsel train: error: {error}", file=sys.stderr)
        return 2
