"""Per-kernel resources from nvcc, for the layer's launch checks (Note [Launch validation]).

Each csrc/cuda/*.cu is compiled to PTX for sm_90 with the extension's nvcc flags; the PTX
gives each kernel's __launch_bounds__ (.maxntid), and ptxas -v on it the registers and the
static shared memory. Where the installed syncfree._C was built from the same sources (setup.py's
stamp, tools/build_env.py SOURCES_STAMP) with sm_90 code and PTX (the default architectures), its
own code is read instead (cuobjdump: the same PTX, cubin and resources, without compiling the
kernels a second time). Results are cached by the sources' content. Needs a CUDA toolkit
(nvcc, ptxas, c++filt); without one report() returns None and launches go unchecked.
"""
import concurrent.futures
import fcntl
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading

from .build import CACHE, ROOT, project_files, shared_flags, tool_env, write_whole
from build_env import (SHARED_RESERVED_PER_BLOCK, SOURCES_STAMP, cuda_tool, find_cuda_home,  # tools/, on sys.path
                       nvidia_wheel_includes, source_digest)  # through .build

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


def _shipped_code(csrc, cuobjdump):
    """{source stem: (ptx name, cubin name)} inside the installed syncfree._C, where setup.py's stamp
    says it was built from these sources against this torch and it holds sm_90 code and PTX (the
    default architectures, "8.0;9.0+PTX") for the file; else {}: the report then compiles."""
    try:
        import torch
        module = pathlib.Path(importlib.util.find_spec("syncfree._C").origin)
        stamp = json.loads(module.with_name(SOURCES_STAMP).read_text())
        if stamp["csrc"] != source_digest(str(csrc)) or stamp["torch"] != torch.__version__:
            return {}
        listing = subprocess.run([cuobjdump, "-lelf", "-lptx", str(module)], check=True, capture_output=True,
                                 text=True, env=tool_env()).stdout
    except (AttributeError, ImportError, OSError, ValueError, KeyError, subprocess.CalledProcessError):
        return {}
    names = set(re.findall(r"(?:ELF|PTX) file\s+\d+: (\S+)", listing))
    found = {}
    for source in (csrc / "cuda").glob("*.cu"):
        ptx, cubin = f"{source.stem}.{ARCH}.ptx", f"{source.stem}.{ARCH}.cubin"
        if ptx in names and cubin in names:
            found[source.stem] = (module, ptx, cubin)
    return found


def _extract(cuobjdump, module, ptx, cubin, ptx_path, cubin_path, log_path):
    """The module's PTX and sm_90 code of one file into the cache, and its resources (cuobjdump
    -res-usage) in the lines of ptxas -v that parse_ptxas reads."""
    tmp = cubin_path.with_name(f"{cubin_path.stem}.{os.getpid()}.{threading.get_ident()}.x")
    tmp.mkdir()
    for option, name, path in (("-xptx", ptx, ptx_path), ("-xelf", cubin, cubin_path)):
        subprocess.run([cuobjdump, option, name, str(module)], cwd=tmp, check=True, capture_output=True,
                       env=tool_env())
        os.replace(tmp / name, path)
    tmp.rmdir()
    usage = subprocess.run([cuobjdump, "-res-usage", str(cubin_path)], check=True, capture_output=True, text=True,
                           env=tool_env()).stdout
    lines = [f"# cuobjdump -res-usage of {module.name}'s {cubin} (its stamp matched), as ptxas -v lines"]
    for m in re.finditer(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage):
        name, regs, stack, shared, local = m.group(1), *map(int, m.group(2, 3, 4, 5))
        shared = max(0, shared - SHARED_RESERVED_PER_BLOCK) if shared > 0 else 0  # as ptxas counts it
        lines += [f"ptxas info    : Compiling entry function '{name}' for '{ARCH}'",
                  f"ptxas info    : Used {regs} registers, {shared} bytes smem",
                  f"ptxas info    : {stack} bytes stack frame, {max(0, local - stack)} bytes spill stores, "
                  "0 bytes spill loads"]
    write_whole(log_path, "\n".join(lines) + "\n")


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
    cuobjdump = cuda_tool("cuobjdump")
    shipped = _shipped_code(csrc, cuobjdump) if cuobjdump else {}

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
            if not (log_path.exists() and cubin_path.exists()) and source.stem in shipped:
                print(f"cuda_on_cpu: resource report for {source.name} from the installed module", flush=True)
                _extract(cuobjdump, *shipped[source.stem], ptx_path, cubin_path, log_path)
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
