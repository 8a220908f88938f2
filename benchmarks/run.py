"""`python -m benchmarks.run [--full] [--only NAME ...]`: run every benchmarks/bench_*.py module,
print the tables, rewrite their sections in README.md and write benchmarks/results/results.{json,csv}
with a machine header.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import json
import os
import pkgutil
import platform
import re
import subprocess
import sys
import time

import torch
from tqdm import tqdm

import benchmarks
from benchmarks.harness import Table
from benchmarks.plots import make_plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")


def machine_header() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    import vidsel

    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        git=sha, cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
        python=platform.python_version(), torch=torch.__version__, vidsel=vidsel.__version__,
    )


def discover(only: list[str] | None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only or n in only]
    return names


def update_readme(tables: list[Table]) -> None:
    if not os.path.exists(README):
        return
    text = open(README).read()
    for table in tables:
        pattern = re.compile(rf"(<!-- bench:{re.escape(table.name)} -->\n).*?(<!-- /bench:{re.escape(table.name)} -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + table.to_markdown() + "\n" + m.group(2), text)
        else:
            print(f"note: README has no <!-- bench:{table.name} --> markers; table not inserted", file=sys.stderr)
    open(README, "w").write(text)


def write_records(header: dict, tables: list[Table]) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    record = dict(machine=header, tables=[t.__dict__ for t in tables])
    with open(os.path.join(RESULTS_DIR, "results.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    with open(os.path.join(RESULTS_DIR, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["# " + ", ".join(f"{k}={v}" for k, v in header.items())])
        for t in tables:
            writer.writerow([f"## {t.name}: {t.title}"])
            writer.writerow(t.columns)
            writer.writerows(t.rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the long profile (bigger configs)")
    parser.add_argument("--only", nargs="*", help="benchmark names, e.g. token_merging")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args(argv)
    profile = "full" if args.full else "quick"
    header = machine_header()
    print("machine:", ", ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    tables: list[Table] = []
    for name in tqdm(discover(args.only), desc="benchmarks", unit="module", disable=None):
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        produced = module.run(profile)
        for table in produced:
            print("\n" + table.to_markdown(), flush=True)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
        tables += produced
    if args.only:  # keep other benchmarks' records: merge into the existing JSON
        previous = os.path.join(RESULTS_DIR, "results.json")
        if os.path.exists(previous):
            old = json.load(open(previous))
            kept = [Table(**t) for t in old.get("tables", []) if t["name"] not in {t.name for t in tables}]
            tables = kept + tables
    write_records(header, tables)
    print("plots:", ", ".join(make_plots(tables, RESULTS_DIR)), flush=True)
    if not args.no_readme:
        update_readme(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
