"""Per-kernel resources from nvcc, for the layer's launch checks (Note [Launch validation]).

Each csrc/cuda/*.cu is compiled to PTX for sm_90 with the extension's nvcc flags; the PTX
gives each kernel's __launch_bounds__ (.maxntid), and ptxas -v on it the registers and the
static shared memory. Results are cached by the sources' content. Needs a CUDA toolkit
(nvcc, ptxas, c++filt); without one report() returns None and launches go unchecked.
"""
import concurrent.futures
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess

from .build import CACHE, ROOT, project_files, shared_flags, tool_env, write_whole
from build_env import find_cuda_home, nvidia_wheel_includes  # tools/, on sys.path through .build

ARCH = "sm_90"


def _nvcc_flags(csrc):
    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    wheel_includes = nvidia_wheel_includes()
    return ([f"-arch={ARCH}", "-std=c++20", *shared_flags(csrc, "NVCC"), "-DSYNCFREE_WITH_CUDA",
             f'-DSYNCFREE_TORCH_VERSION="{torch.__version__}"', f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *COMMON_NVCC_FLAGS, f"-I{csrc}"]
            + [f"-I{p}" for p in include_paths() + wheel_includes])


def _demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True,
                         env=tool_env()).stdout
    return out.splitlines()


def _kernel_name(demangled):
    """'void ns::k<float, true>(args)' -> 'ns::k<float, true>'."""
    name = demangled
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return name[5:] if name.startswith("void ") else name


def parse_ptx(ptx):
    """{mangled entry: max threads a block (0 without __launch_bounds__)}."""
    entries = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)\s*((?:\.\w+[^{]*)?)\{", ptx, re.S):
        bounds = re.search(r"\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", m.group(3))
        entries[m.group(1)] = int(bounds.group(1)) * int(bounds.group(2)) * int(bounds.group(3)) if bounds else 0
    return entries


def parse_ptxas(log):
    """{mangled function: (registers, static shared bytes, spill bytes)} from ptxas -v."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)'?", line)
        if m and "Compiling entry function" in line:
            current = m.group(1)
            continue
        m = re.search(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?", line)
        if m and current:
            regs, smem = int(m.group(1)), int(m.group(2) or 0)
            spills = out.get(current, (0, 0, 0))[2]
            out[current] = (regs, smem, spills)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            regs, smem, _ = out.get(current, (0, 0, 0))
            out[current] = (regs, smem, int(m.group(1)) + int(m.group(2)))
    return out


def compile_all(csrc=None):
    """{source stem: (ptx path, ptxas log path, cubin path)} for every csrc/cuda/*.cu, compiled for
    sm_90 with the extension's flags (cached by content), or None without nvcc."""
    home = find_cuda_home()
    if home is None or shutil.which("c++filt") is None:
        return None
    home = pathlib.Path(home)
    csrc = pathlib.Path(csrc or ROOT / "csrc").resolve()
    flags = _nvcc_flags(csrc)
    cache = CACHE / "ptx"
    cache.mkdir(parents=True, exist_ok=True)

    def compile_one(source):
        project = sorted({str(f) for f in project_files([str(home / "bin" / "nvcc"), *flags, "-M"], source, csrc,
                                                        under_csrc=True)})
        h = hashlib.sha256(" ".join(flags[:6]).encode())
        for f in project:
            h.update(pathlib.Path(f).name.encode() + pathlib.Path(f).read_bytes())
        key = h.hexdigest()[:24]
        ptx_path, log_path = cache / f"{source.stem}-{key}.ptx", cache / f"{source.stem}-{key}.ptxas"
        cubin_path = cache / f"{source.stem}-{key}.cubin"
        # One compile a file: the background build's report and the compiled-code tests may ask at once.
        with open(cache / f"{source.stem}-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (log_path.exists() and cubin_path.exists()):
                print(f"cuda_on_cpu: nvcc resource report for {source.name}", flush=True)
                subprocess.run([str(home / "bin" / "nvcc"), *flags, "-ptx", str(source), "-o", str(ptx_path)],
                               check=True, env=tool_env())
                log = subprocess.run([str(home / "bin" / "ptxas"), f"-arch={ARCH}", "-v", str(ptx_path), "-o",
                                      str(cubin_path)], check=True, capture_output=True, text=True, env=tool_env())
                write_whole(log_path, log.stdout + log.stderr)
        return source.stem, (ptx_path, log_path, cubin_path)

    # The largest first, as many at once as there are cores: the last to finish is a small one.
    sources = sorted((csrc / "cuda").glob("*.cu"), key=lambda f: -f.stat().st_size)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        return dict(sorted(pool.map(compile_one, sources)))


def report(csrc=None, verbose=False):
    """{kernel name: (registers, static shared bytes, max threads)}, or None without nvcc."""
    compiled = compile_all(csrc)
    if compiled is None:
        return None
    table, details = {}, {}
    for ptx_path, log_path, _ in compiled.values():
        bounds = parse_ptx(ptx_path.read_text())
        resources = parse_ptxas(log_path.read_text())
        names = list(bounds)
        for mangled, demangled in zip(names, _demangle(names)):
            regs, smem, spills = resources.get(mangled, (0, 0, 0))
            table[_kernel_name(demangled)] = (regs, smem, bounds[mangled])
            details[_kernel_name(demangled)] = spills
    if verbose:
        for name, (regs, smem, threads) in sorted(table.items()):
            print(f"{regs:4d} regs {smem:6d} B smem  maxntid {threads:4d}  spills {details[name]:4d} B  {name}")
    return table


if __name__ == "__main__":
    report(verbose=True)
