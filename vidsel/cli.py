"""The `vidsel` command: ``vidsel COMMAND [ARGS]`` (``vidsel COMMAND --help`` for each).

  vidsel info                          backends built here and the ops they run (= python -m vidsel.info)
  vidsel flops MODEL [--frames N]      GFLOPs per view of a registered model, per-module table
  vidsel bench [--only NAME ...]       the benchmarks (make bench): tables, README sections, plots
  vidsel viz VIDEO --model NAME -o OUT.png   what a model merged / selected on a real video

Every subcommand is a ``main(argv) -> int`` named in `COMMANDS` as "module:function"; the module is
imported only when its command runs. Errors print one line ``vidsel CMD: error: ...`` and exit 2
(set VIDSEL_TRACEBACK=1 for the traceback).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys

# name -> ("module:function" taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("vidsel.cli:info_main", "backends built here and the ops they run"),
    "flops": ("vidsel.cli:flops_main", "GFLOPs per view of a registered model (meta device, no compute)"),
    "bench": ("vidsel.cli:bench_main", "run the benchmarks (tables, README sections, plots)"),
    "viz": ("vidsel.cli:viz_main", "draw what a model merged or selected on a video, as PNG or GIF"),
    "train": ("vidsel.train:main", "fine-tune a registered model on a video folder (one machine or torchrun)"),
}

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, ImportError, OSError)


def info_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vidsel info", description="Backends built here and the ops they run.")
    parser.parse_args(argv)
    from vidsel import info

    print(info.report())
    return 0


def flops_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vidsel flops", description="GFLOPs per view (1 multiply-add = 1 FLOP, batch 1) of a registered model."
    )
    parser.add_argument("model", help="registered model name (vidsel.list_models()), e.g. testa_f16")
    parser.add_argument("--frames", type=int, help="number of frames (config field num_frames)")
    parser.add_argument("--img-size", type=int, help="input resolution (config field img_size)")
    parser.add_argument("--table-depth", type=int, default=2, help="module nesting shown in the table (default 2)")
    args = parser.parse_args(argv)
    from vidsel import flops

    overrides = {}
    for flag, key, value in (("--frames", "num_frames", args.frames), ("--img-size", "img_size", args.img_size)):
        if value is not None:
            if value <= 0:
                raise ValueError(f"{flag} must be a positive int, got {value}")
            overrides[key] = value
    report = flops.count_model(args.model, **overrides)
    print(f"{args.model} {overrides or ''}".strip())
    print(report.table(depth=args.table_depth))
    return 0


def _source_root() -> str:
    """The checkout holding benchmarks/ (vidsel is installed editable, or run from the checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "run.py")):
        raise FileNotFoundError(f"vidsel bench runs from a source checkout; no benchmarks/run.py under {root}")
    return root


def bench_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vidsel bench", description="Run the benchmarks (what `make bench` runs).")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="benchmark names, e.g. token_merging patch")
    parser.add_argument("--full", action="store_true", help="the long profile (bigger configs)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args(argv)
    root = _source_root()
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import run as runner

    if args.only:
        known = [name.removeprefix("bench_") for name in runner.discover(None)]
        unknown = [name for name in args.only if name.removeprefix("bench_") not in known]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(known)}")
    forwarded = (["--full"] if args.full else []) + (["--no-readme"] if args.no_readme else [])
    forwarded += ["--only", *args.only] if args.only else []
    return runner.main(forwarded)


def viz_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vidsel viz",
        description="Draw what a vidsel model merged (TESTA, ToMe) or selected (STTS) on a video, or its "
                    "motion vectors (--model motion). Random weights unless --weights is given.",
    )
    parser.add_argument("video", help="video file (anything FFmpeg decodes)")
    parser.add_argument("--model", required=True, help="registered model, e.g. testa_f16, tome_joint_f16, "
                                                       "mvit_b16-T0.6@0-S0.9@4, or 'motion'")
    parser.add_argument("-o", "--output", required=True, help="output file: .png (one picture) or .gif (per frame)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled from the video (default 8)")
    parser.add_argument("--img-size", type=int, default=224, help="model input resolution (default 224)")
    parser.add_argument("--weights", help="state_dict file (torch.save) to load into the model")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    args = parser.parse_args(argv)
    from vidsel.viz import render_video

    overrides = dict(_parse_setting(item) for item in args.set)
    path = render_video(args.video, args.model, args.output, num_frames=args.frames, img_size=args.img_size,
                        weights=args.weights, overrides=overrides, progress=True)
    print(path)
    return 0


def _parse_setting(item: str):
    """"KEY=VALUE" -> (key, value): Python literals (3, 0.5, (1, 2, 2), 'x'), true/false/none, else the text."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
    lowered = {"true": True, "false": False, "none": None}
    if text.lower() in lowered:
        return key, lowered[text.lower()]
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text


def _load(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidsel", description="vidsel: efficient video transformer kernels.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {n:<8} {h}" for n, (_, h) in COMMANDS.items()))
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (COMMAND --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vidsel` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0 if argv else 2
    parsed = _parser().parse_args(argv[:1])
    try:
        return int(_load(COMMANDS[parsed.command][0])(argv[1:]) or 0)
    except USER_ERRORS as error:
        if os.environ.get("VIDSEL_TRACEBACK") == "1":
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"vidsel {parsed.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
