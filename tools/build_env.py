"""Where syncfree's builds find the CUDA toolkit, the headers of torch's nvidia-* wheels and the
shared compiler flags: one description for setup.py, CMakeLists.txt and the CUDA execution layer
(tests/cuda_on_cpu). Plain Python, no torch import.

    python tools/build_env.py nvidia-includes   # ;-separated include folders (CMake reads this)
"""
import glob
import hashlib
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


def cuda_tool(name):
    """cuobjdump / nvdisasm: the toolkit's, else the copies in the triton wheel torch installs (found
    without importing triton), else one on PATH; None without one."""
    import importlib.util
    home = find_cuda_home()
    candidates = [os.path.join(home, "bin", name)] if home else []
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin", name))
    found = shutil.which(name)
    candidates += [found] if found else []
    return next((c for c in candidates if c and os.path.isfile(c)), None)


# Shared memory an sm_80+ block that uses any reserves for the system: cuobjdump's SHARED counts it,
# ptxas -v does not.
SHARED_RESERVED_PER_BLOCK = 1024


def nvidia_wheel_includes():
    """Headers that torch's nvidia-* wheels carry (curand, nvtx, ...) but a toolkit may lack."""
    dirs = []
    for site in sys.path:
        if site:
            dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def source_digest(csrc=os.path.join(ROOT, "csrc")):
    """A digest of every file under csrc (build_flags.txt included): what a build was made from.
    setup.py writes it beside the module it builds (SOURCES_STAMP), and the tests' nvcc report
    reads the module's own sm_90 code where it matches (tests/cuda_on_cpu/resources.py)."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(csrc, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, csrc).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


SOURCES_STAMP = "_C.sources.json"  # beside syncfree/_C*.so: {"csrc": source_digest, "torch": version, "arch": list}


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
