"""Ahead-of-time sm_90 compile report of every GPU launch: ``python -m vidsel.kernels.aot``.

No GPU is needed. Each Triton kernel is compiled with `triton.compile` for every dtype its launcher
accepts in the configurations the launchers use on CUDA tensors (kernels/configs.py); Triton's
bundled ``ptxas -v`` gives registers, spill bytes and stack frame, the compiled metadata the shared
memory, and the PTX whether tl.dot became tensor-core instructions (``wgmma`` / ``mma``). The CUDA
C++ kernels of ``vidsel/_C_cuda*.so`` are read with ``cuobjdump`` (resource usage and SASS).

    python -m vidsel.kernels.aot [--arch 90] [--json PATH] [--jobs N] [--no-cuda]

Results are cached per PTX (hash) next to Triton's own cache, so a repeated run recompiles nothing.
Must run without TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

MODULES = ("philox", "perturbed_topk", "gumbel_topk", "topk_gather", "anchor_select", "compressed_patch_embed",
           "token_merging", "chunk_attention")
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one H100 block may use
KEYS = ("kernel", "module", "dtype", "config", "ok", "error", "regs", "spill_bytes", "smem_bytes", "tensor_cores")
_TENSOR_CORE_PTX = re.compile(r"\b(wgmma\.mma_async|mma\.sync)\b")
_TENSOR_CORE_SASS = re.compile(r"\s(HGMMA|HMMA|DMMA|IMMA)\.")


def specs():
    """Every AotSpec of every kernel module (each module's `aot_specs()`)."""
    from vidsel.kernels import configs

    if configs.interpreting():
        raise RuntimeError("vidsel.kernels.aot must run without TRITON_INTERPRET (unset it)")
    out = []
    for name in MODULES:
        module = importlib.import_module(f"vidsel.kernels.{name}")
        for spec in module.aot_specs():
            out.append(dataclasses.replace(spec, aligned=()))
            if spec.aligned:  # the JIT's specialisation for 16-divisible feature dims, compiled too
                label = " ".join(filter(None, (spec.variant, ",".join(f"{arg}%16" for arg in spec.aligned))))
                out.append(dataclasses.replace(spec, variant=label))
    return out


def signature(spec) -> dict:
    """Triton signature of `spec`: constexprs, pointers of the data type, i32 scalars, overrides."""
    sig = {}
    for arg in spec.fn.arg_names:
        if arg in spec.constexprs:
            sig[arg] = "constexpr"
        elif arg in spec.types:
            sig[arg] = spec.types[arg]
        elif arg.endswith("_ptr"):
            sig[arg] = "*" + spec.data
        else:
            sig[arg] = "i32"
    missing = set(spec.types) - set(sig)
    if missing:
        raise ValueError(f"{spec.fn.__name__}: no argument named {sorted(missing)}")
    return sig


def _cache_dir() -> str:
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    path = os.path.join(root, "vidsel-aot")
    os.makedirs(path, exist_ok=True)
    return path


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """registers, spill bytes (stores + loads) and stack frame of the PTX's kernel, by ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas

    key = hashlib.sha256(f"{arch}\n{ptx}".encode()).hexdigest()
    cached = os.path.join(_cache_dir(), key + ".json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"-arch=sm_{arch}a", src,
               "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    usage = dict(
        regs=int(re.search(r"Used (\d+) registers", log).group(1)),
        spill_bytes=sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)),
        stack_bytes=int(re.search(r"(\d+) bytes stack frame", log).group(1)),
    )
    with open(cached, "w") as f:
        json.dump(usage, f)
    return usage


def compile_spec(spec, arch: int = 90) -> dict:
    """Compiles one spec for sm_`arch`; returns its report row (KEYS plus stack_bytes, variant)."""
    import triton
    from triton.backends.compiler import GPUTarget

    sig = signature(spec)
    row = dict(kernel=spec.fn.__name__, module=f"kernels/{spec.module}.py", dtype=spec.dtype,
               config=spec.config.label() + (f" {spec.variant}" if spec.variant else ""), ok=False, error="",
               regs=None, spill_bytes=None, smem_bytes=None, tensor_cores=None, stack_bytes=None,
               tensor_cores_required=spec.tensor_cores)
    aligned = [i for i, arg in enumerate(spec.fn.arg_names) if sig[arg].startswith("*") or arg in spec.aligned]
    source = triton.compiler.ASTSource(fn=spec.fn, signature=sig, constexprs=spec.constexprs,
                                       attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                options=dict(num_warps=spec.config.num_warps, num_stages=spec.config.num_stages))
        ptx = kernel.asm["ptx"]
        usage = _ptxas_usage(ptx, arch)
    except Exception as error:  # noqa: BLE001 - the report records every failure
        lines = [line for line in str(error).splitlines() if line.strip()]  # first line names the failure
        row["error"] = f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
        return row
    found = sorted(set(_TENSOR_CORE_PTX.findall(ptx)))
    row.update(usage, ok=True, smem_bytes=int(kernel.metadata.shared),
               tensor_cores="wgmma" if "wgmma.mma_async" in found else ("mma" if found else ""))
    return row


def triton_rows(arch: int = 90, jobs: int = 1) -> list[dict]:
    """One row per Triton kernel x dtype x config."""
    all_specs = specs()
    if jobs <= 1:
        return [compile_spec(spec, arch) for spec in all_specs]
    # Workers re-import the kernels by module name: pass indices, not functions.
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_index, range(len(all_specs)), [arch] * len(all_specs)))


def _compile_index(index: int, arch: int) -> dict:
    return compile_spec(specs()[index], arch)


def _cuobjdump() -> str:
    from triton.backends.nvidia.compiler import knobs

    return knobs.nvidia.cuobjdump.path


def cuda_rows(pattern: str = "vidsel/_C_cuda*.so") -> list[dict]:
    """Resource usage of the CUDA C++ kernels (cuobjdump on the built extension); [] without one."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    libraries = sorted(glob.glob(os.path.join(here, os.path.basename(pattern)))) or sorted(glob.glob(pattern))
    rows = []
    for library in libraries:
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", library], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", library], capture_output=True, text=True, check=True).stdout
        tensor_ops = _sass_tensor_ops(sass)
        arch = "sm_?"
        for line in usage.splitlines():
            found_arch = re.match(r"\s*arch = (sm_\w+)", line)
            if found_arch:
                arch = found_arch.group(1)
            match = re.match(r"\s*Function (\S+):", line)
            if match:
                mangled = match.group(1)
                continue
            res = re.match(r"\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
            if res:
                name, dtype = _demangle(mangled)
                rows.append(dict(kernel=name, module="csrc/cuda", dtype=dtype, config=arch, ok=True, error="",
                                 regs=int(res.group(1)), spill_bytes=int(res.group(4)),
                                 smem_bytes=int(res.group(3)), stack_bytes=int(res.group(2)),
                                 tensor_cores=tensor_ops.get(mangled, ""), tensor_cores_required=False))
    return rows


def _sass_tensor_ops(sass: str) -> dict:
    """mangled kernel name -> comma-joined tensor-core SASS opcodes it contains."""
    found, current = {}, None
    for line in sass.splitlines():
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            current = match.group(1)
            found.setdefault(current, set())
        elif current:
            found[current].update(_TENSOR_CORE_SASS.findall(line))
    return {name: ",".join(sorted(ops)) for name, ops in found.items()}


_CXX_DTYPES = {"float": "fp32", "double": "fp64", "__half": "fp16", "__nv_bfloat16": "bf16", "c10::Half": "fp16",
               "c10::BFloat16": "bf16"}


def _demangle(mangled: str) -> tuple[str, str]:
    """(short kernel name, dtype of its first template argument or '-')."""
    try:
        full = subprocess.run(["c++filt", mangled], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return mangled, "-"
    head = full.replace("(anonymous namespace)::", "").split("(")[0]
    template = re.search(r"<([^<>,]+)", head)
    name = re.sub(r"<.*", "", head).split("::")[-1]
    dtype = _CXX_DTYPES.get(template.group(1).strip(), template.group(1).strip()) if template else "-"
    return name, dtype


def problems(rows: list[dict]) -> list[str]:
    """Every failed compile, spill, stack frame, shared memory over the H100 limit, missing tensor core."""
    out = []
    for row in rows:
        what = f"{row['module']}:{row['kernel']} [{row['dtype']}, {row['config']}]"
        if not row["ok"]:
            out.append(f"{what}: does not compile: {row['error']}")
            continue
        if row["spill_bytes"]:
            out.append(f"{what}: {row['spill_bytes']} spill bytes")
        if row["smem_bytes"] > SMEM_LIMIT:
            out.append(f"{what}: {row['smem_bytes']} bytes shared memory > {SMEM_LIMIT}")
        if row["tensor_cores_required"] and not row["tensor_cores"]:
            out.append(f"{what}: no tensor-core instruction (wgmma/mma) in the PTX")
    return out


def format_table(rows: list[dict]) -> str:
    header = ("kernel", "module", "dtype", "config", "ok", "regs", "spill", "stack", "smem", "tensor cores")
    body = [(r["kernel"], r["module"], r["dtype"], r["config"], "ok" if r["ok"] else "ERROR " + r["error"],
             str(r["regs"]), str(r["spill_bytes"]), str(r["stack_bytes"]), str(r["smem_bytes"]),
             (r["tensor_cores"] or "-") + (" (required)" if r["tensor_cores_required"] else "")) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidsel.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list to PATH")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile processes (default 1)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA C++ kernels of vidsel/_C_cuda*.so")
    args = parser.parse_args(argv)
    rows = triton_rows(args.arch, args.jobs) + ([] if args.no_cuda else cuda_rows())
    print(format_table(rows))
    issues = problems(rows)
    triton_ok = sum(r["ok"] for r in rows if r["module"] != "csrc/cuda")
    triton_total = sum(r["module"] != "csrc/cuda" for r in rows)
    print(f"\n{triton_ok}/{triton_total} Triton launch signatures compile for sm_{args.arch}; "
          f"{len(rows) - triton_total} CUDA C++ kernels; {len(issues)} problems")
    for line in issues:
        print("  " + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
