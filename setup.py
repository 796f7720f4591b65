"""Builds syncfree's extension: CUDA kernels plus the C++ CPU path, one module.

pip install --no-build-isolation .   builds against the torch already installed
pip install .                        builds in an isolated env against the torch in pyproject.toml
SYNCFREE_FORCE_CPU=1                 builds the CPU-only extension even where a CUDA toolkit exists
SYNCFREE_PTXAS_VERBOSE=1             prints ptxas register/spill reports
TORCH_CUDA_ARCH_LIST="9.0"           overrides the default architectures
"""
import glob
import json
import os
import shutil
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from build_env import SOURCES_STAMP, build_flags, find_cuda_home, nvidia_wheel_includes, source_digest  # noqa: E402


CUDA_HOME = None if os.environ.get("SYNCFREE_FORCE_CPU") == "1" else find_cuda_home()
if CUDA_HOME:
    # cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = CUDA_HOME
    # Without a visible GPU cpp_extension cannot pick architectures itself.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


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


class BuildExt(BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)):
    """Also writes, beside a CUDA build's module (and its in-place copy), what it was built from
    (tools/build_env.py SOURCES_STAMP): the tests' nvcc report then reads the module's own sm_90
    code instead of compiling the kernels a second time."""

    def stamp(self, module_path):
        if CUDA_HOME:
            with open(os.path.join(os.path.dirname(module_path), SOURCES_STAMP), "w") as f:
                json.dump({"csrc": source_digest(os.path.join(ROOT, "csrc")), "torch": torch.__version__,
                           "arch": os.environ.get("TORCH_CUDA_ARCH_LIST", "")}, f)

    def build_extension(self, ext):
        super().build_extension(ext)
        self.stamp(self.get_ext_fullpath(ext.name))

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            self.stamp(self._get_inplace_equivalent(build_py, ext)[0])


setup(
    name="syncfree",
    version="0.1.0",
    description="Sync-free LLM token sampling for PyTorch (exponential race, CPU and CUDA)",
    packages=["syncfree", "syncfree.integrations"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.10",
    # numpy: torch warns at import ("Failed to initialize NumPy") where it is missing.
    install_requires=["torch>=2.11", "numpy"],
    extras_require={"test": ["pytest", "numpy", "scipy", "hypothesis"], "bench": ["matplotlib", "numpy"]},
    # vLLM calls it in each of its processes; it does nothing unless SYNCFREE_VLLM=1 (README "Using syncfree
    # in vLLM"). Declared here, not in pyproject.toml: a [project] table there would take over the metadata.
    entry_points={"vllm.general_plugins": ["syncfree = syncfree.integrations.vllm:register"]},
)
