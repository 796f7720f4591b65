"""The CUDA plans' napkin model (csrc/cuda/plans.h): for one row of scaled logits, the warpers' full
reads, launches, the selection's mode, candidates and whether they fit (Note [Selection passes on
CUDA]); the full reads of a node's row by verify's positions kernel (Note [A node's row on chip]).
Test and benchmark code, kept out of syncfree._C: napkin.cpp alone, compiled by g++ without torch
(a few seconds, cached with the layer's objects) and called through ctypes, so that a benchmark
on a GPU machine needs no emulation build.

    from cuda_on_cpu.napkin import select_napkin        # tests/ on sys.path
    select_napkin(y, top_k, top_p, min_p, typical_p, rows=B, sm_count=132)
    positions_reads(vocab, element_bytes, shared_limit)
"""
import ctypes
import functools
import os
import subprocess

import torch

from . import build as _build


class _Row(ctypes.Structure):
    _fields_ = [("full_reads", ctypes.c_int64), ("launches", ctypes.c_int64), ("mode", ctypes.c_char_p),
                ("candidates", ctypes.c_int64), ("capacity", ctypes.c_int64), ("fits", ctypes.c_int64)]


@functools.cache
def _library():
    compiler = os.environ.get("CXX", "g++")
    csrc = _build.ROOT / "csrc"
    # The shared rounding flags, as syncfree._C compiles the same selection code.
    rounding = [f for f in _build.shared_flags(csrc, "CXX") if not f.startswith("-O")]
    flags = ["-std=c++20", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", *rounding, f"-I{csrc}"]
    source = _build.LAYER / "napkin.cpp"
    with _build.cache_lock():
        out = _build.CACHE / "napkin" / f"napkin-{_build.source_key(compiler, flags, source, 'napkin', csrc)}.so"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run([compiler, *flags, str(source), "-o", str(tmp)], check=True, env=_build.tool_env())
            os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    lib.syncfree_select_napkin.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_double,
                                           ctypes.c_double, ctypes.c_double, ctypes.c_int64, ctypes.c_int64,
                                           ctypes.POINTER(_Row)]
    lib.syncfree_select_napkin.restype = None
    lib.syncfree_positions_reads.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    lib.syncfree_positions_reads.restype = ctypes.c_double
    return lib


def select_napkin(y, top_k, top_p, min_p, typical_p, *, rows, sm_count):
    """The plan of a call of `rows` rows on `sm_count` SMs for y, a 1-D float32 CPU tensor of scaled
    logits: {full_reads, launches, mode, candidates, capacity, fits}."""
    if y.dim() != 1 or y.dtype != torch.float32 or y.device.type != "cpu":
        raise ValueError("select_napkin: y must be a 1-D float32 CPU tensor of scaled logits")
    row = y.contiguous()
    r = _Row()
    _library().syncfree_select_napkin(row.data_ptr(), row.numel(), int(top_k), float(top_p), float(min_p),
                                      float(typical_p), int(rows), int(sm_count), ctypes.byref(r))
    return dict(full_reads=r.full_reads, launches=r.launches, mode=r.mode.decode(), candidates=r.candidates,
                capacity=r.capacity, fits=bool(r.fits))


def positions_reads(vocab, element_bytes, shared_limit):
    """Full reads of a node's row by verify's positions kernel, whose block may use `shared_limit`
    bytes of dynamic shared memory: 1 for a row kept whole, up to 2 for one kept in part."""
    return _library().syncfree_positions_reads(int(vocab), int(element_bytes), int(shared_limit))
