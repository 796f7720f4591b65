"""syncfree's CUDA kernels, run on the CPU (see README.md beside this file).

    import cuda_on_cpu
    layer = cuda_on_cpu.load()              # builds (cached) and imports the module, loads the ops
    with cuda_on_cpu.emulating():           # torch.ops.syncfree -> torch.ops.syncfree_emulated
        tokens = syncfree.sample(cpu_logits, ...)   # runs the real CUDA launchers and kernels

The variant is SYNCFREE_EMULATION_VARIANT (plain, asan or tsan; a sanitizer variant
needs its runtime preloaded: see run_variant). One variant per process.
"""
import atexit
import contextlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import torch

from . import build as _build
from . import resources as _resources

_module = None
_background = None


def build_in_background():
    """Starts building the module (and nvcc's resource report) in a subprocess, which load()
    waits for: pytest starts it at collection when emulated tests are selected (tests/conftest.py),
    so the build overlaps the CPU tests. Its output goes to build/cuda_on_cpu/background.log; if it
    fails, load() builds again in the foreground and shows the error."""
    global _background
    if _background is not None or _module is not None:
        return
    _build.CACHE.mkdir(parents=True, exist_ok=True)
    code = ("import os, cuda_on_cpu.build as b, cuda_on_cpu.resources as r; "
            "csrc = os.environ.get('SYNCFREE_EMULATION_CSRC'); "
            "b.build(os.environ.get('SYNCFREE_EMULATION_VARIANT', 'plain'), csrc=csrc)\n"
            "r.report(csrc=os.environ.get('SYNCFREE_EMULATION_RESOURCES_CSRC') or csrc)")
    with open(_build.CACHE / "background.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=pathlib.Path(__file__).resolve().parent.parent,
                                   stdout=log, stderr=subprocess.STDOUT, env=_build.tool_env())
    atexit.register(lambda: process.poll() is None and process.terminate())  # a run cut short
    _background = process


def load(variant=None, csrc=None):
    """The layer's module, built and imported once per process, with the resource report loaded."""
    global _module, _background
    if _module is None:
        if _background is not None:
            _background.wait()
            _background = None
        variant = variant or os.environ.get("SYNCFREE_EMULATION_VARIANT", "plain")
        # run_variant builds in its own (uninstrumented) process: a sanitized one forking compilers
        # from a thread pool can deadlock inside ThreadSanitizer's fork handling.
        path = os.environ.get("SYNCFREE_EMULATION_MODULE") or _build.build(variant, csrc=csrc)
        spec = importlib.util.spec_from_file_location("_cuda_on_cpu", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # Not under the cache's lock (resources.py locks each file it compiles): a mutant's tests
        # need not wait for another mutant's build. A mutant may take its unmutated sources' report.
        report = _resources.report(csrc=os.environ.get("SYNCFREE_EMULATION_RESOURCES_CSRC") or csrc)
        if report is not None:
            module.set_kernel_resources(report)
            module.configure(require_resources=True)
        module.has_resource_report = report is not None
        _module = module
    return _module


@contextlib.contextmanager
def emulating():
    """Routes syncfree's Python API to the emulated ops (CPU tensors take the CUDA path); fresh CPU
    tensors (device memory in this model: the ops' outputs) hold garbage meanwhile."""
    module = load()
    real = torch.ops.syncfree
    torch.ops.syncfree = torch.ops.syncfree_emulated
    module.garbage_host_tensors(True)
    try:
        yield
    finally:
        module.garbage_host_tensors(False)
        torch.ops.syncfree = real


@contextlib.contextmanager
def capture(graph):
    """Records the kernel launches and memsets of the block into graph (replay runs them)."""
    graph.capture_begin()
    try:
        yield graph
    finally:
        graph.capture_end()


def run_variant(variant, pytest_args, timeout, env=None, fresh_opt=None):
    """Runs pytest in a subprocess over the given variant's build (sanitizer runtime preloaded);
    env: variables for it on top of os.environ (SYNCFREE_EMULATION_CSRC picks the sources);
    fresh_opt: see build.build."""
    env = dict(os.environ, **(env or {}))
    module = _build.build(variant, csrc=env.get("SYNCFREE_EMULATION_CSRC"), quiet=True, fresh_opt=fresh_opt)
    env.update(SYNCFREE_EMULATION_VARIANT=variant, PYTHONUNBUFFERED="1", SYNCFREE_EMULATION_MODULE=str(module))
    runtime = _build.sanitizer_runtime(variant) if variant != "plain" else None
    if variant != "plain":
        if runtime is None:
            return None
        env["LD_PRELOAD"] = runtime
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_odr_violation=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        env["TSAN_OPTIONS"] = "halt_on_error=1:report_signal_unsafe=0"
    if variant == "tsan":
        # ThreadSanitizer cannot see libgomp's barriers: torch's (and the CPU path's) parallel
        # regions would report races that are not there. The emulated kernels' threads are
        # fibers on one OS thread either way, and they are what this variant checks.
        env["OMP_NUM_THREADS"] = "1"
    # --capture=sys: a sanitizer report written to fd 2 as the process dies must reach us.
    # cwd tests/: `python -m` puts the cwd first on sys.path, and the repository root would
    # shadow the installed syncfree with its unbuilt source tree.
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--capture=sys", *pytest_args],
                          env=env, cwd=pathlib.Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=timeout)
