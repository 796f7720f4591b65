"""WarperChain (LoRAX's StaticWarper): the warper chain, captured into CUDA graphs on CUDA.

A chain is built from scalar warper values; identity values are dropped at
construction. Calling it returns (warped_logits, logprobs), both float32, as
syncfree.warp does. On CUDA the first call for a (parameters, shape, dtype,
device) key captures syncfree.warp into a CUDA graph; later calls copy the new
logits into the graph's static input and replay. Captured graphs live in one
process-wide LRU cache (size 10 by default); eviction resets the graph and
drops its static tensors, returning its private memory pool.
"""
import collections
import threading
from typing import NamedTuple, Optional

import torch

from .sampling import warp

CacheInfo = NamedTuple("CacheInfo", [("hits", int), ("misses", int), ("evictions", int), ("size", int),
                                     ("maxsize", int)])


class _Captured:
    """One captured chain: the graph and the tensors it reads and writes."""

    def __init__(self, params, logits):
        self.static_logits = logits.clone()
        stream = torch.cuda.Stream(device=logits.device)
        stream.wait_stream(torch.cuda.current_stream(logits.device))
        with torch.cuda.stream(stream):
            warp(self.static_logits, **params)  # warm-up outside the capture
        torch.cuda.current_stream(logits.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.warped, self.logprobs = warp(self.static_logits, **params)

    def __call__(self, logits):
        self.static_logits.copy_(logits)
        self.graph.replay()
        return self.warped, self.logprobs

    def release(self):
        self.graph.reset()
        self.graph = self.static_logits = self.warped = self.logprobs = None


class _GraphCache:
    """Process-wide LRU of captured chains, with counters for tests and memory debugging."""

    def __init__(self, maxsize=10):
        self.maxsize = maxsize
        self.entries = collections.OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.hits += 1
                self.entries.move_to_end(key)
                return entry
            self.misses += 1
        entry = make()
        with self.lock:
            self.entries[key] = entry
            self._shrink()
        return entry

    def _shrink(self):
        while len(self.entries) > self.maxsize:
            _, evicted = self.entries.popitem(last=False)
            evicted.release()
            self.evictions += 1

    def resize(self, maxsize):
        if maxsize < 1:
            raise ValueError(f"maxsize: expected an int >= 1, got {maxsize}")
        with self.lock:
            self.maxsize = maxsize
            self._shrink()

    def clear(self):
        with self.lock:
            for entry in self.entries.values():
                entry.release()
            self.entries.clear()
            self.hits = self.misses = self.evictions = 0

    def info(self):
        with self.lock:
            return CacheInfo(self.hits, self.misses, self.evictions, len(self.entries), self.maxsize)


_CACHE = _GraphCache()


class WarperChain:
    """temperature -> top-k -> top-p -> min-p -> typical-p with identity values dropped.

    WarperChain(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, min_p=0.0);
    chain(logits) -> (warped_logits, logprobs). Temperature 0 scales nothing
    (greedy is the sampler's business). A chain with nothing left is the
    identity: it returns the logits unchanged and their log_softmax, with no
    graph and no warping.
    """

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, min_p=0.0):
        for name, value in (("temperature", temperature), ("top_p", top_p), ("typical_p", typical_p),
                            ("min_p", min_p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k: expected an int, got {type(top_k).__name__}")
        # The ranges, checked by syncfree.warp's own checks on a meta tensor (no data, no kernel).
        warp(torch.empty(1, 1, device="meta"), temperature, top_k, top_p, min_p, typical_p)
        params = {}
        if temperature not in (0, 1):
            params["temperature"] = float(temperature)
        if top_k != 0:
            params["top_k"] = top_k
        if top_p != 1:
            params["top_p"] = float(top_p)
        if min_p != 0:
            params["min_p"] = float(min_p)
        if typical_p != 1:
            params["typical_p"] = float(typical_p)
        self.params = params  # only the warpers that do something

    @property
    def is_identity(self):
        return not self.params

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"WarperChain({inner})"

    def __call__(self, logits: torch.Tensor):
        if self.is_identity:
            return logits, torch.log_softmax(logits.float(), -1)
        if logits.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return warp(logits, **self.params)
        key = (tuple(sorted(self.params.items())), tuple(logits.shape), logits.dtype, logits.device)
        captured = _CACHE.get(key, lambda: _Captured(self.params, logits))
        return captured(logits)

    # The process-wide graph cache.
    @staticmethod
    def cache_info() -> CacheInfo:
        return _CACHE.info()

    @staticmethod
    def set_cache_size(maxsize: int):
        _CACHE.resize(maxsize)

    @staticmethod
    def clear_cache():
        _CACHE.clear()


StaticWarper = WarperChain
