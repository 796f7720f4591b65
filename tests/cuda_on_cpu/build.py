"""Builds the CPU execution layer: syncfree's real sources, compiled by g++, as one Python module.

csrc/*.cpp (the op files, not the Python bindings) and csrc/cpu/*.cpp as they are; csrc/cuda/*.cu as C++ with cuda_on_cpu.h
force-included and the stand-in headers of include/ ahead of torch's; the layer's runtime
and its Python face. Objects are cached by the content of their sources and project
headers, so a mutant (a copy of csrc/ with one file changed) recompiles only what it
touches. Variants: "plain" (-O2), "asan" (AddressSanitizer + UndefinedBehaviorSanitizer),
"tsan" (ThreadSanitizer; the runtime itself is left uninstrumented and annotates).

    python tests/cuda_on_cpu/build.py [plain|asan|tsan]     # prints the module's path
"""
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import threading

LAYER = pathlib.Path(__file__).resolve().parent
ROOT = LAYER.parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_env import build_flags  # noqa: E402
CACHE = ROOT / "build" / "cuda_on_cpu"
MODULE = "_cuda_on_cpu"

VARIANTS = {
    "plain": ["-O2"],
    "asan": ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
             "-fno-sanitize-recover=undefined"],
    "tsan": ["-O1", "-g", "-fsanitize=thread", "-DCUDA_ON_CPU_TSAN"],
}


def shared_flags(csrc, name):
    """A line of csrc/build_flags.txt (the flags every build of syncfree shares), as a list."""
    return build_flags(str(csrc))[name]


def tool_env():
    """The environment for compilers and binutils: without a sanitizer runtime preloaded into them."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _torch_flags():
    import torch
    from torch.utils.cpp_extension import include_paths, library_paths
    defines = [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               "-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={MODULE}",
               f'-DSYNCFREE_TORCH_VERSION="{torch.__version__}"']
    includes = [f for p in include_paths() + [sysconfig.get_paths()["include"]] for f in ("-isystem", p)]
    return defines, includes, library_paths()[0], torch.__version__


def _sources(csrc):
    """(source, kind): kind "cuda" compiles as C++ through the layer; "layer" is the layer's own;
    "cpu" is the CPU path, which the emulated ops link but never run (-O0: a quicker build)."""
    return ([(p, "cxx") for p in sorted(csrc.glob("*.cpp")) if p.name != "bindings.cpp"]
            + [(p, "cpu") for p in sorted((csrc / "cpu").glob("*.cpp"))]
            + [(p, "cuda") for p in sorted((csrc / "cuda").glob("*.cu"))]
            + [(LAYER / f"{name}.cpp", "layer") for name in ("fibers", "blocks", "runtime", "faults", "module")])


def object_variant(variant, kind):
    """The variant a source of `kind` is compiled as in a build of `variant`: the sanitizers
    instrument the code they check and link the plain objects for the rest, which the plain
    build (the quick tier's) has already compiled. ASan: all but the CPU path, which the
    emulated ops never run. TSan: the emulated kernels and launchers (the races it looks for are
    between their threads, fibers of one OS thread) and the layer (uninstrumented, but built
    with its annotations); the op files run on the host thread alone."""
    if variant == "asan" and kind == "cpu" or variant == "tsan" and kind in ("cpu", "cxx"):
        return "plain"
    return variant


def _flags(variant, kind, csrc, defines, includes):
    # The shared rounding flags, at the variant's own optimisation level (compile time, sanitizers).
    rounding = [f for f in shared_flags(csrc, "CXX") if not f.startswith("-O")]
    flags = ["-std=c++20", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", *rounding,
             "-fopenmp", "-DSYNCFREE_WITH_CUDA", "-DSYNCFREE_CUDA_ON_CPU",
             *defines, f"-I{csrc}", f"-I{LAYER / 'include'}", f"-I{LAYER}", *includes]
    variant_flags = VARIANTS[variant]
    if kind == "cpu":
        variant_flags = [f for f in variant_flags if not f.startswith("-O")] + ["-O0"]
    if variant == "tsan" and kind == "layer":  # the runtime's own bookkeeping is not a data race
        variant_flags = [f for f in variant_flags if f != "-fsanitize=thread"]
    flags += variant_flags
    if kind == "cuda":
        flags += ["-x", "c++", "-include", str(LAYER / "cuda_on_cpu.h"), "-fdata-sections"]
        if variant != "asan":  # every typed access checked (Note [Alignment] in faults.cpp); asan's UBSan has it
            flags += ["-fsanitize=alignment"]
    return flags


def write_whole(path, text):
    """Writes a cache file so that a reader sees all of it or none (another process may be reading)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Deps:
    """The project files a source includes, itself first, as the dependency scan `scan` (g++ -MM,
    nvcc -M; `source` is appended) lists them; with under_csrc, only those under csrc. A scan
    preprocesses torch's headers, a second or two a file, so the list is remembered by source, scan
    and the digest of its files, and reused while none of them changed (a mutant's copy of csrc/
    rescans only the files that include what it changed; ccache's direct mode does the same). Where
    none was ever remembered, a compile writes the list as it goes (g++ -MMD): no scan of its own."""

    def __init__(self, scan, source, csrc, under_csrc=False):
        self.scan, self.source, self.under_csrc = scan, source, under_csrc
        self.roots = {"csrc": pathlib.Path(csrc).resolve(), "layer": LAYER.resolve()}
        entry_key = hashlib.sha256(" ".join([self._portable(source), pathlib.Path(scan[0]).name]
                                            + [f for f in scan[1:] if not f.startswith(("-I", "/", "-O"))])
                                   .encode()).hexdigest()[:24]
        self.entry = CACHE / "deps" / f"{entry_key}.json"

    def _portable(self, f):
        f = pathlib.Path(f).resolve()
        for name, root in self.roots.items():
            if f.is_relative_to(root):
                return f"{name}:{f.relative_to(root)}"
        return str(f)

    def _local(self, name):
        root, _, rel = name.partition(":")
        return self.roots[root] / rel if root in self.roots and rel else pathlib.Path(name)

    def _digest(self, files):
        h = hashlib.sha256()
        for f in files:
            h.update(f.encode() + b"\0" + self._local(f).read_bytes())
        return h.hexdigest()

    def remembered(self):
        """The list, if remembered and none of its files changed since; else None."""
        try:
            saved = json.loads(self.entry.read_text())
            if self._digest(saved["files"]) == saved["digest"]:
                return [self._local(f) for f in saved["files"]]
        except (OSError, ValueError, KeyError):
            pass
        return None

    def remember(self, make_rule):
        """Remembers, and returns, the list that a make rule (a scan's output, a -MMD file) gives."""
        files = [self._portable(d) for d in make_rule.replace("\\\n", " ").split()[1:]]
        if self.under_csrc:
            files = [f for f in files if f.startswith("csrc:")]
        files = list(dict.fromkeys(files))  # the source first, then its headers, once each
        self.entry.parent.mkdir(parents=True, exist_ok=True)
        write_whole(self.entry, json.dumps({"files": files, "digest": self._digest(files)}))
        return [self._local(f) for f in files]

    def files(self):
        """The list: remembered, or scanned now."""
        found = self.remembered()
        if found is None:
            found = self.remember(subprocess.run([*self.scan, str(self.source)], check=True, capture_output=True,
                                                 text=True, env=tool_env()).stdout)
        return found


def project_files(scan, source, csrc, under_csrc=False):
    """The project files `source` includes, itself first (_Deps)."""
    return _Deps(scan, source, csrc, under_csrc).files()


def source_key(compiler, flags, source, version, csrc):
    """_key of `source` compiled with `flags`, its project files scanned (or remembered)."""
    return _key(project_files([compiler, *flags, "-MM"], source, csrc), flags, version)


def _key(files, flags, version):
    """Hash of the flags (minus paths), the source and every project header it includes (files)."""
    h = hashlib.sha256()
    h.update(version.encode())
    h.update(" ".join(f for f in flags if not f.startswith(("-I", "/"))).encode())
    for f in sorted({str(f) for f in files}):
        h.update(pathlib.Path(f).name.encode())
        h.update(pathlib.Path(f).read_bytes())
    return h.hexdigest()[:24]


def _gather_shared(obj):
    """Moves every __shared__ variable's section into the section cuda_on_cpu_shared.

    cuda_on_cpu.h gives each an alignment nothing else uses (g++ ignores a section
    attribute on a static in a function template) and -fdata-sections a section of its own.
    """
    align = "2**13"  # CUDA_ON_CPU_SHARED_ALIGN = 8192
    listing = subprocess.run(["objdump", "-h", "-w", str(obj)], check=True, capture_output=True, text=True,
                             env=tool_env()).stdout
    renames = []
    for line in listing.splitlines():
        cols = line.split()
        if len(cols) >= 7 and cols[0].isdigit() and cols[6] == align and cols[1] != "cuda_on_cpu_shared":
            renames += ["--rename-section", f"{cols[1]}=cuda_on_cpu_shared"]
    if renames:
        subprocess.run(["objcopy", *renames, str(obj)], check=True, env=tool_env())


@contextlib.contextmanager
def cache_lock():
    """One builder at a time over the cache (a background build, pytest, the fuzz suite's
    subprocesses): the others wait, then find its objects."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(variant="plain", csrc=None, jobs=None, quiet=False, fresh_opt=None):
    """Compiles (or finds in the cache) the layer's module for `variant`; returns its path.
    fresh_opt ("-O1"): the optimisation level of an object the cache lacks at the variant's own
    (Note [A mutant's build] in mutations.py)."""
    with cache_lock():
        return _build(variant, csrc, jobs, quiet, fresh_opt)


def _build(variant, csrc, jobs, quiet, fresh_opt):
    csrc = pathlib.Path(csrc or ROOT / "csrc").resolve()
    compiler = os.environ.get("CXX", "g++")
    defines, includes, torch_lib, version = _torch_flags()
    objects_dir = CACHE / "objects"
    objects_dir.mkdir(parents=True, exist_ok=True)

    def compile_one(source, kind):
        own = object_variant(variant, kind)
        flags = _flags(own, kind, csrc, defines, includes)
        deps = _Deps([compiler, *flags, "-MM"], source, csrc)
        # A list remembered for other contents (a mutant's copy, an edit) is scanned again: the
        # object may be cached. With none at all (a fresh clone) the compile writes it.
        files = deps.files() if deps.entry.exists() else None
        if files is not None:
            obj = objects_dir / f"{source.stem}-{own}-{_key(files, flags, version)}.o"
            if obj.exists():
                return obj
        if fresh_opt and kind != "cpu":
            flags = [fresh_opt if f.startswith("-O") else f for f in flags]
            if files is not None:
                obj = objects_dir / f"{source.stem}-{own}-{_key(files, flags, version)}.o"
                if obj.exists():
                    return obj
        if not quiet:
            print(f"cuda_on_cpu: compiling {source.name} ({own})", flush=True)
        tmp = objects_dir / f"{source.stem}-{own}.{os.getpid()}.{threading.get_ident()}.tmp"
        depfile = tmp.with_suffix(".d")
        subprocess.run([compiler, *flags, "-MMD", "-MF", str(depfile), "-c", str(source), "-o", str(tmp)],
                       check=True, env=tool_env())
        if files is None:  # the compile's own list of what it read
            files = deps.remember(depfile.read_text())
        depfile.unlink()
        obj = objects_dir / f"{source.stem}-{own}-{_key(files, flags, version)}.o"
        if kind == "cuda":
            _gather_shared(tmp)
        os.replace(tmp, obj)
        return obj

    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        objects = list(pool.map(lambda s: compile_one(*s), _sources(csrc)))
    link = hashlib.sha256(" ".join(o.name for o in objects).encode()).hexdigest()[:16]
    out = CACHE / variant / link / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, "-shared", *map(str, objects), "-o", str(tmp), *VARIANTS[variant],
                        "-fopenmp", f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch_python",
                        f"-Wl,-rpath,{torch_lib}"], check=True, env=tool_env())
        os.replace(tmp, out)
    return out


def sanitizer_runtime(variant):
    """The sanitizer runtime a non-instrumented python must preload for `variant`."""
    name = {"asan": "libasan.so", "tsan": "libtsan.so"}[variant]
    path = subprocess.run([os.environ.get("CXX", "g++"), f"-print-file-name={name}"], check=True,
                          capture_output=True, text=True, env=tool_env()).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def clean():
    shutil.rmtree(CACHE, ignore_errors=True)


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "plain"))
