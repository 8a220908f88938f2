"""Backend selection: auto choice, VIDSEL_IMPL, explicit choices never falling back, import without builds."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import vidsel
import vidsel.ops
from vidsel import _backends

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL = ("reference", "cpu", "triton", "cuda")


def _python(code: str, env_updates: dict, cwd=ROOT, pythonpath=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_updates)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_auto_picks_cpu_backend_for_cpu_tensors():
    expected = "cpu" if _backends.backend_status()["cpu"].built else "reference"
    assert _backends.resolve_impl("op", "auto", torch.device("cpu"), ALL) == expected


def test_auto_prefers_cuda_then_triton_for_cuda_tensors():
    # Decided from build status only: no CUDA device is needed to ask the question.
    choice = _backends.resolve_impl("op", "auto", torch.device("cuda"), ALL)
    assert choice == ("cuda" if _backends.backend_status()["cuda"].built else "triton")
    assert _backends.resolve_impl("op", "auto", torch.device("cuda"), ("reference", "triton")) == "triton"


def test_explicit_choice_never_falls_back():
    with pytest.raises(RuntimeError, match="cuda backend takes CUDA tensors"):
        _backends.resolve_impl("my_op", "cuda", torch.device("cpu"), ALL)
    with pytest.raises(RuntimeError, match="my_op: impl='triton' is not implemented"):
        _backends.resolve_impl("my_op", "triton", torch.device("cpu"), ("reference", "cpu"))
    with pytest.raises(ValueError, match="impl must be one of"):
        _backends.resolve_impl("my_op", "fast", torch.device("cpu"), ALL)


def test_info_lists_every_backend_and_op():
    result = _python("import vidsel.info as i; print(i.report())", {})
    assert result.returncode == 0, result.stderr
    for word in ("reference", "cpu", "triton", "cuda", "bipartite_match", "scatter_rows", "gather_rows",
                 "chunk_attention_backward", "compressed_patch_embed"):
        assert word in result.stdout


def test_vidsel_impl_environment_overrides_auto():
    code = (
        "import torch, vidsel.ops as ops\n"
        "from vidsel import _backends\n"
        "print(_backends.resolve_impl('op', 'auto', torch.device('cpu'), ('reference', 'cpu')))\n"
    )
    result = _python(code, {"VIDSEL_IMPL": "reference"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"


def test_triton_on_cpu_tensors_needs_the_interpreter():
    code = (
        "import torch, vidsel.ops as ops\n"
        "try:\n"
        "    ops.bipartite_match(torch.randn(1, 6, 3), 1, impl='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    result = _python(code, {"TRITON_INTERPRET": "0"})
    assert "TRITON_INTERPRET=1" in result.stdout, result.stdout + result.stderr


def test_import_works_with_nothing_compiled(tmp_path):
    """A copy of the package without the built extensions: import warns, auto uses the reference,
    an explicit compiled backend raises saying why."""
    package = tmp_path / "vidsel"
    # vidsel/kernels may be a development symlink to kernels/: the copy takes kernels/ itself, as setup.py does.
    shutil.copytree(os.path.join(ROOT, "vidsel"), package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "kernels"))
    shutil.copytree(os.path.join(ROOT, "kernels"), package / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import vidsel, vidsel.ops as ops\n"
        "assert vidsel.__file__.startswith(%r), vidsel.__file__\n"
        "print('WARN', [str(w.message) for w in caught if 'vidsel' in str(w.message)])\n"
        "m = ops.bipartite_match(torch.randn(1, 8, 3), 2)\n"
        "print('AUTO', m.dst_index.tolist())\n"
        "try:\n"
        "    ops.bipartite_match(torch.randn(1, 8, 3), 2, impl='cpu')\n"
        "except RuntimeError as e:\n"
        "    print('EXPLICIT', e)\n"
    ) % str(tmp_path)
    result = _python(code, {"TRITON_INTERPRET": "0"}, cwd=str(tmp_path), pythonpath=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "C++ CPU kernels unavailable" in result.stdout
    assert "AUTO" in result.stdout
    assert "EXPLICIT bipartite_match: impl='cpu' cannot run here" in result.stdout and "not built" in result.stdout


def test_backend_status_reports_reasons():
    status = vidsel.backend_status()
    assert set(status) == set(ALL)
    assert all(isinstance(s.reason, str) and s.reason for s in status.values())


def _host_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not _backends.backend_status()["cpu"].built, reason="needs the C++ CPU backend")
def test_cpu_kernels_report_what_they_were_compiled_for():
    """A default build (-march=native) on an AVX-512 host must take the AVX-512 GEMM path: losing it (build flags,
    a compiler change) silently costs the attention / patch-embedding kernels 2x here."""
    features = _backends.cpu_features()
    assert features in vidsel.backend_status()["cpu"].reason
    if _host_has_avx512() and os.environ.get("VIDSEL_CPU_ARCH", "native") == "native":
        assert features.startswith("avx512 (vidsel GEMM)")
    else:
        assert features.startswith(("avx512", "no avx512"))


def test_every_custom_op_declares_its_backends_once():
    from vidsel.ops._dispatch import REGISTRY, OpBackends

    names = torch._C._dispatch_get_all_op_names()
    custom = {n.split("::")[1] for n in names if n.startswith("vidsel::")}
    assert custom == set(REGISTRY), f"custom ops without OpBackends: {custom - set(REGISTRY)}"
    if _backends.backend_status()["cpu"].built:
        compiled = {n.split("::")[1] for n in names if n.startswith("vidsel_C::")}
        declared = {name for name, op in REGISTRY.items() if op.compiled}
        assert declared <= compiled, f"declared compiled but not in vidsel_C: {declared - compiled}"
    with pytest.raises(ValueError, match="declares its backends twice"):
        OpBackends("scatter_rows", reference=lambda *args: None)


def test_run_backend_refuses_a_backend_the_op_does_not_have():
    from vidsel.ops._dispatch import OpBackends, REGISTRY, run_backend, supported

    op = OpBackends("test_only_reference_op", reference=lambda x: x + 1, compiled=False)
    try:
        assert op.supported == ("reference",)
        assert supported(op, REGISTRY["scatter_rows"]) == ("reference",)
        assert run_backend(op, "reference", 1) == 2
        with pytest.raises(ValueError, match=r"test_only_reference_op: impl='triton' is not one of its backends"):
            run_backend(op, "triton", 1)
    finally:
        del REGISTRY["test_only_reference_op"]


def test_moved_module_paths_still_import_with_a_deprecation_warning():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import vidsel.ops as ops\n"
        "for old, name in (('vidsel.ops.merge', 'merge'), ('vidsel.ops.bipartite_match', 'Matching'),\n"
        "                  ('vidsel.reference.selection', 'topk_gather')):\n"
        "    try:\n"
        "        exec(f'from {old} import {name}')\n"
        "    except DeprecationWarning as warning:\n"
        "        assert old in str(warning), warning\n"
        "    else:\n"
        "        raise AssertionError(f'{old} did not warn')\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from vidsel.ops.merge import merge\n"
        "from vidsel.ops.bipartite_match import Matching, bipartite_match\n"
        "assert merge is ops.merge and Matching is ops.Matching and bipartite_match is ops.bipartite_match\n"
        "assert callable(ops.merge) and callable(ops.bipartite_match)  # the package keeps the functions\n"
        "print('ok')\n"
    )
    result = _python(code, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
