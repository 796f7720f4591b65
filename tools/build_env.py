"""Where syncfree's builds find the CUDA toolkit, the headers of torch's nvidia-* wheels and the
shared compiler flags: one description for setup.py, CMakeLists.txt and the CUDA execution layer
(tests/cuda_on_cpu). Plain Python, no torch import.

    python tools/build_env.py nvidia-includes   # ;-separated include folders (CMake reads this)
"""
import glob
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_cuda_home():
    """The real toolkit, not the folder of an `nvcc` wrapper script on PATH; None without one."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
                os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def nvidia_wheel_includes():
    """Headers that torch's nvidia-* wheels carry (curand, nvtx, ...) but a toolkit may lack."""
    dirs = []
    for site in sys.path:
        if site:
            dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def build_flags(csrc=os.path.join(ROOT, "csrc")):
    """{"CXX": [...], "NVCC": [...]}: the lines of csrc/build_flags.txt."""
    flags = {}
    with open(os.path.join(csrc, "build_flags.txt")) as f:
        for line in f:
            if " = " in line and not line.startswith("#"):
                name, value = line.split(" = ", 1)
                flags[name.strip()] = value.split()
    return flags


if __name__ == "__main__":
    if sys.argv[1:] == ["nvidia-includes"]:
        print(";".join(nvidia_wheel_includes()))
    else:
        sys.exit(__doc__)
