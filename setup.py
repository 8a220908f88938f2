"""Build vidsel: the C++ CPU extension (always) and the CUDA extension (when nvcc is found).

Environment knobs:
  VIDSEL_SKIP_EXT=1      install the pure-Python package only (vidsel then uses the references)
  VIDSEL_NO_CUDA=1       never build csrc/cuda
  VIDSEL_CPU_ARCH=...    value for -march on the CPU extension (default: native)
  VIDSEL_CUDA_ARCH=90    SM architecture for csrc/cuda (default: 90, i.e. sm_90)
  MAX_JOBS               parallel compile jobs (ninja)
  VIDSEL_SANITIZE=1      csrc/cpu only, with AddressSanitizer + UndefinedBehaviorSanitizer (`make test-asan`,
                         tools/test_asan.sh, which builds it into build/asan, never over vidsel/_C*.so)
"""

import glob
import os
import shutil
import site
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The toolkit folder that holds lib64/libcudart.so (torch's own guess may miss it)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "lib64", "libcudart.so")) and os.path.exists(
            os.path.join(home, "bin", "nvcc")
        ):
            return home
    return None


def _nvidia_wheel_includes():
    """Headers shipped by the nvidia-* wheels (cusparse.h etc. needed by ATen/cuda headers)."""
    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(sp, "nvidia", "cu*", "include"))
    return dirs


def _extensions():
    if os.environ.get("VIDSEL_SKIP_EXT") == "1":
        return [], {}
    sanitize = os.environ.get("VIDSEL_SANITIZE") == "1"
    cuda_home = None if sanitize or os.environ.get("VIDSEL_NO_CUDA") == "1" else _find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    march = os.environ.get("VIDSEL_CPU_ARCH", "native")
    cpu_flags = ["-O3", "-fopenmp", "-std=c++20", f"-march={march}", "-ffp-contract=fast", "-Wno-unused-parameter"]
    cpu_link = ["-fopenmp"]
    if sanitize:
        checks = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        cpu_flags = [f for f in cpu_flags if f != "-O3"] + ["-O1", "-g", "-fno-omit-frame-pointer"] + checks
        cpu_link += checks
    cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    exts = [
        CppExtension(
            "vidsel._C",
            cpu_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cpu_flags},
            extra_link_args=cpu_link,
        )
    ]
    if cuda_home:
        arch = os.environ.get("VIDSEL_CUDA_ARCH", "90")
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        exts.append(
            CUDAExtension(
                "vidsel._C_cuda",
                cuda_sources,
                include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_wheel_includes(),
                extra_compile_args={
                    "cxx": ["-O2", "-std=c++20"],
                    "nvcc": ["-O3", "-std=c++20", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                },
            )
        )
    elif not sanitize:
        print("vidsel setup: nvcc/CUDA toolkit not found, csrc/cuda is not built", file=sys.stderr)
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="vidsel",
    version="0.1.0",
    description="Fused kernels for efficient video transformers (TESTA, STTS, MIST, Mirasol3B, MM-ViT)",
    python_requires=">=3.10",
    packages=find_packages(include=["vidsel", "vidsel.*"]) + ["vidsel.kernels"],
    package_dir={"vidsel": "vidsel", "vidsel.kernels": "kernels"},
    install_requires=["torch==2.14.1", "numpy", "einops"],
    entry_points={"console_scripts": ["vidsel = vidsel.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
