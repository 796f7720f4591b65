"""Builds syncfree's extension: CUDA kernels plus the C++ CPU path, one module.

pip install --no-build-isolation .   builds against the torch already installed
pip install .                        builds in an isolated env against the torch in pyproject.toml
SYNCFREE_FORCE_CPU=1                 builds the CPU-only extension even where a CUDA toolkit exists
SYNCFREE_PTXAS_VERBOSE=1             prints ptxas register/spill reports
TORCH_CUDA_ARCH_LIST="9.0"           overrides the default architectures
"""
import glob
import os
import shutil
import sys

from setuptools import setup


def find_cuda_home():
    """The real toolkit, not the folder of an `nvcc` wrapper script on PATH."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            return home
    return None


CUDA_HOME = None if os.environ.get("SYNCFREE_FORCE_CPU") == "1" else find_cuda_home()
if CUDA_HOME:
    # cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = CUDA_HOME
    # Without a visible GPU cpp_extension cannot pick architectures itself.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def nvidia_wheel_includes():
    """Headers that torch's nvidia-* wheels carry (curand, nvtx, ...) but the toolkit here lacks."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def build_flags():
    """{"CXX": [...], "NVCC": [...]} from csrc/build_flags.txt, the flags every build shares."""
    flags = {}
    with open(os.path.join(ROOT, "csrc", "build_flags.txt")) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                name, value = line.split("=", 1)
                flags[name.strip()] = value.split()
    return flags


def extension():
    # Relative paths (setuptools asks for them): every csrc/*.cpp and csrc/cpu/*.cpp, and with CUDA csrc/cuda/*.cu.
    sources = sorted(glob.glob("csrc/*.cpp", root_dir=ROOT) + glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))
    flags = build_flags()  # same rounding as the GPU: See Note [Same bits on CPU and CUDA]
    cxx = flags["CXX"] + ["-fopenmp", f'-DSYNCFREE_TORCH_VERSION="{torch.__version__}"']
    kwargs = dict(name="syncfree._C", include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=["-fopenmp"])
    if not CUDA_HOME:
        why = "SYNCFREE_FORCE_CPU=1" if os.environ.get("SYNCFREE_FORCE_CPU") == "1" else \
            "no CUDA toolkit found (set CUDA_HOME to one)"
        print(f"syncfree: {why}; building the CPU-only extension", flush=True)
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    nvcc = flags["NVCC"] + ["-DSYNCFREE_WITH_CUDA", f'-DSYNCFREE_TORCH_VERSION="{torch.__version__}"']
    if os.environ.get("SYNCFREE_PTXAS_VERBOSE") == "1":
        nvcc.append("-Xptxas=-v")
    kwargs["include_dirs"] += nvidia_wheel_includes()
    return CUDAExtension(sources=sources + sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT)),
                         extra_compile_args={"cxx": cxx + ["-DSYNCFREE_WITH_CUDA"], "nvcc": nvcc}, **kwargs)


class Build(BuildExtension):
    """Records the torch this build is for, so that importing against another one explains itself."""

    def run(self):
        super().run()
        info = (f"TORCH_VERSION = {torch.__version__!r}\n"
                f"CUDA_VERSION = {torch.version.cuda if CUDA_HOME else None!r}\n")
        targets = [os.path.join(self.build_lib, "syncfree")]
        if self.inplace:
            targets.append(os.path.join(ROOT, "syncfree"))
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_info.py"), "w") as f:
                f.write(info)


setup(
    name="syncfree",
    version="0.1.0",
    description="Sync-free LLM token sampling for PyTorch (exponential race, CPU and CUDA)",
    packages=["syncfree"],
    ext_modules=[extension()],
    cmdclass={"build_ext": Build.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.10",
    # numpy: torch warns at import ("Failed to initialize NumPy") where it is missing.
    install_requires=["torch>=2.11", "numpy"],
    extras_require={"test": ["pytest", "numpy", "scipy", "hypothesis"], "bench": ["matplotlib", "numpy"]},
)
