"""`python -m benchmarks.run [--full] [--only NAME ...]`: run every benchmarks/bench_*.py module,
print the tables, rewrite their sections in README.md and write
benchmarks/results/results-<vendor>-<model>.{json,csv} with a machine header: one record per CPU model,
so a run on one machine keeps every other machine's. The README's "other machines" table puts the target
checks of every recorded CPU side by side.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
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
    from vidsel import _backends

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    import vidsel

    cpu = _backends.cpu_identity()
    load = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        git=sha, cpu=cpu["model"], vendor=cpu["vendor"], isa=cpu["isa"], cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(), load_1min=load, python=platform.python_version(),
        torch=torch.__version__, vidsel=vidsel.__version__,
        cpu_gemm=os.environ.get("VIDSEL_CPU_GEMM", "auto"), cpu_gemm_paths=_backends.cpu_gemm_paths(),
    )


def _load() -> float | None:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def _load_note(before: float | None, after: float | None, cores: int | None) -> str:
    """"load 0.3-0.5", with a warning when other processes wanted more cores than the machine has."""
    if before is None or after is None:
        return "load unknown"
    note = f"load {before}-{after}" if before != after else f"load {before}"
    if cores and max(before, after) > cores:
        note += (" (more runnable processes than cores: multi-threaded medians include scheduler stalls, "
                 "ratios are less reliable)")
    return note


_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def machine_slug(header: dict) -> str:
    """"amd-epyc", "intel-xeon-platinum-8488c": the file stem of this CPU model's record."""
    vendor = _VENDORS.get(header.get("vendor", ""), header.get("vendor", "unknown"))
    model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b", " ", header.get("cpu", "").lower())
    words = [w for w in re.split(r"[^a-z0-9]+", model) if w and w != vendor]
    return "-".join([re.sub(r"[^a-z0-9]+", "", vendor.lower()) or "unknown"] + words) or "unknown"


def results_path(header: dict, ext: str = "json") -> str:
    return os.path.join(RESULTS_DIR, f"results-{machine_slug(header)}.{ext}")


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
    with open(results_path(header), "w") as f:
        json.dump(record, f, indent=1, default=str)
    with open(results_path(header, "csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["# " + ", ".join(f"{k}={v}" for k, v in header.items())])
        for t in tables:
            writer.writerow([f"## {t.name}: {t.title}"])
            writer.writerow(t.columns)
            writer.writerows(t.rows)


def other_machines_table() -> Table:
    """Every recorded CPU's target checks side by side (one column per results-*.json)."""
    records = []
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "results-*.json"))):
        with open(path) as f:
            records.append(json.load(f))
    labels = [f"{r['machine'].get('cpu', '?')} ({r['machine'].get('date', '?')[:10]}, load "
              f"{r['machine'].get('load_1min') if r['machine'].get('load_1min') is not None else '?'})" for r in records]
    table = Table(name="other_machines", title="Target checks on every recorded CPU (measured, met / missed)",
                  columns=["check"] + labels)
    keys = []
    by_machine = []
    for record in records:
        checks = {}
        for t in record["tables"]:
            for c in t.get("checks", []):
                key = f"{t['name']}: {c['what']} (target {c['target']})"
                checks[key] = f"{c['measured']} {'met' if c['passed'] else '**missed**'}"
                if key not in keys:
                    keys.append(key)
        by_machine.append(checks)
    for key in keys:
        table.rows.append([key] + [checks.get(key, "not run") for checks in by_machine])
    paths = [f"{label}: {', '.join(f'{k}={v}' for k, v in r['machine'].get('cpu_gemm_paths', {}).items()) or 'n/a'}"
             for label, r in zip(labels, records)]
    table.notes.append("CPU GEMM path per shape class — " + "; ".join(paths))
    return table


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
        load_before = _load()
        module = importlib.import_module(f"benchmarks.{name}")
        produced = module.run(profile)
        for table in produced:  # every README table names the machine it was measured on
            table.notes.insert(0, f"Measured on {header['cpu']} ({header['vendor']}), {header['cores']} cores, "
                               f"{_load_note(load_before, _load(), header['cores'])}, {header['date'][:10]}.")
        for table in produced:
            print("\n" + table.to_markdown(), flush=True)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
        tables += produced
    if args.only:  # keep other benchmarks' records: merge into this machine's existing JSON
        previous = results_path(header)
        if os.path.exists(previous):
            old = json.load(open(previous))
            kept = [Table(**t) for t in old.get("tables", []) if t["name"] not in {t.name for t in tables}]
            tables = kept + tables
    write_records(header, tables)
    print("plots:", ", ".join(make_plots(tables, RESULTS_DIR)), flush=True)
    if not args.no_readme:
        update_readme(tables + [other_machines_table()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
