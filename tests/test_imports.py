"""Every module of vidsel imports on its own, first, in an interpreter that has imported no vidsel
module yet — so no module depends on another having been imported before it, and no two modules
import each other in a way that only works in one order (an import cycle).

One helper interpreter imports the third-party libraries once (torch, torchvision, triton, ...,
never vidsel), then forks one child per module (a few at a time): each child starts with no vidsel
module loaded and imports only its module. vidsel.kernels (the Triton kernels) is included when
triton imports.
"""

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = ("torch", "torchvision", "triton", "numpy", "einops", "av")

FORK_EACH = r"""
import importlib, json, os, sys, tempfile, time, traceback
for library in LIBRARIES:
    try:
        importlib.import_module(library)
    except ImportError:
        pass
assert not [m for m in sys.modules if m == "vidsel" or m.startswith("vidsel.")], "vidsel imported too early"
out_dir, running, results = tempfile.mkdtemp(), {}, []


def reap():
    pid, status = os.wait()
    name, path = running.pop(pid)
    if status or not os.path.exists(path):
        results.append({"module": name, "error": f"child exited with status {status}"})
    else:
        with open(path) as f:
            results.append(json.load(f))


for index, name in enumerate(MODULES):
    if len(running) >= CHILDREN:
        reap()
    path = os.path.join(out_dir, f"{index}.json")
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        error, start = None, time.perf_counter()
        try:
            importlib.import_module(name)
        except BaseException:
            error = traceback.format_exc()
        with open(path, "w") as f:
            json.dump({"module": name, "error": error, "seconds": time.perf_counter() - start}, f)
        os._exit(0)
    running[pid] = (name, path)
while running:
    reap()
print(json.dumps(results))
"""


def vidsel_modules() -> list[str]:
    """Every module under vidsel/ found by pkgutil without importing any of them (kernels only if
    triton is installed)."""
    with_kernels = importlib.util.find_spec("triton") is not None
    names, stack = ["vidsel"], [(ROOT / "vidsel", "vidsel.")]
    while stack:
        path, prefix = stack.pop()
        for info in pkgutil.iter_modules([str(path)], prefix):
            if info.name == "vidsel.kernels" and not with_kernels:
                continue
            origin = info.module_finder.find_spec(info.name).origin or ""
            if not (info.ispkg or origin.endswith(".py")):
                continue  # the compiled extensions (vidsel/_C*.so) are loaded by torch.ops.load_library
            if info.name.endswith(".__main__"):
                continue  # `python -m` entry points run their program when imported, by design
            names.append(info.name)
            if info.ispkg:
                stack.append((path / info.name.rsplit(".", 1)[1], info.name + "."))
    return sorted(names)


MODULES = vidsel_modules()


@pytest.fixture(scope="module")
def import_errors() -> dict[str, str | None]:
    """module -> None if it imported on its own, else the traceback."""
    children = max(1, min(4, os.cpu_count() or 1))
    script = f"LIBRARIES = {list(THIRD_PARTY)!r}\nMODULES = {MODULES!r}\nCHILDREN = {children}\n" + FORK_EACH
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    return {r["module"]: r["error"] for r in results}


def test_the_walk_finds_the_packages_and_their_modules():
    for name in ("vidsel.models._stts_backbones", "vidsel.models.stts", "vidsel.nn.stts_selectors", "vidsel.ops"):
        assert name in MODULES
    assert len(MODULES) >= 30


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_on_its_own(name, import_errors):
    assert name in import_errors, f"{name}: no result from the helper interpreter"
    assert import_errors[name] is None, f"import {name} in a fresh interpreter failed:\n{import_errors[name]}"
