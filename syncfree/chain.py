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

from .params import FIELDS
from .sampling import _keywords, _params, warp

_NUMBERS = {f[0] for f in FIELDS if f[1] != "tensor"}

CacheInfo = NamedTuple("CacheInfo", [("hits", int), ("misses", int), ("evictions", int), ("size", int),
                                     ("maxsize", int)])


class _Captured:
    """One captured chain: the graph and the tensors it reads (the logits and the call's processing
    tensors, copied in before each replay) and writes."""

    def __init__(self, params, logits, inputs):
        self.static_logits = logits.clone()
        self.static_inputs = {name: t.clone() for name, t in inputs.items()}
        stream = torch.cuda.Stream(device=logits.device)
        stream.wait_stream(torch.cuda.current_stream(logits.device))
        with torch.cuda.stream(stream):
            warp(self.static_logits, **params, **self.static_inputs)  # warm-up outside the capture
        torch.cuda.current_stream(logits.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.warped, self.logprobs = warp(self.static_logits, **params, **self.static_inputs)

    def __call__(self, logits, inputs):
        self.static_logits.copy_(logits)
        for name, t in inputs.items():
            self.static_inputs[name].copy_(t)
        self.graph.replay()
        return self.warped, self.logprobs

    def release(self):
        self.graph.reset()
        self.graph = self.static_logits = self.static_inputs = self.warped = self.logprobs = None


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

    WarperChain(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, min_p=0.0, *,
    repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0), or
    WarperChain(params) with a SamplingParams of numbers;
    chain(logits, *, output_tokens=None, prompt_tokens=None, bias_tokens=None,
    bias_values=None, allowed_mask=None) -> (warped_logits, logprobs), as
    syncfree.warp with those arguments (README "Processing"): the penalties are
    the chain's, the history, bias and mask the call's (on CUDA they are
    static inputs of the graph, like the logits). Temperature 0 scales
    nothing (greedy is the sampler's business). A chain with nothing left and
    no processing tensors is the identity: it returns the logits unchanged and
    their log_softmax, with no graph and no warping.
    """

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, min_p=0.0, *, params=None,
                 repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0):
        params, _ = _params(params, _keywords(locals()), "WarperChain")
        for name in params.given():
            if isinstance(getattr(params, name), torch.Tensor):
                raise TypeError(f"{name}: a WarperChain holds numbers" + (
                    "" if name in _NUMBERS else "; pass the histories, bias and mask to each call"))
        # The ranges, checked by syncfree.warp's own checks on a meta tensor (no data, no kernel).
        warp(torch.empty(1, 1, device="meta"), params)
        # Only the warpers and penalties that do something; temperature 0 scales nothing.
        params = {name: getattr(params, name) if name == "top_k" else float(getattr(params, name))
                  for name in params.given() if not (name == "temperature" and params.temperature == 0)}
        self.params = params  # only the warpers and penalties that do something

    @property
    def is_identity(self):
        return not self.params

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"WarperChain({inner})"

    def __call__(self, logits: torch.Tensor, *, output_tokens: Optional[torch.Tensor] = None,
                 prompt_tokens: Optional[torch.Tensor] = None, bias_tokens: Optional[torch.Tensor] = None,
                 bias_values: Optional[torch.Tensor] = None, allowed_mask: Optional[torch.Tensor] = None):
        inputs = {name: t for name, t in (("output_tokens", output_tokens), ("prompt_tokens", prompt_tokens),
                                          ("bias_tokens", bias_tokens), ("bias_values", bias_values),
                                          ("allowed_mask", allowed_mask)) if t is not None}
        if self.is_identity and not inputs:
            return logits, torch.log_softmax(logits.float(), -1)
        tensors = isinstance(logits, torch.Tensor) and all(isinstance(t, torch.Tensor) for t in inputs.values())
        if not tensors or logits.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return warp(logits, **self.params, **inputs)  # which also explains bad arguments
        # The call's processing tensors are static inputs: their shapes, dtypes and devices key the graph.
        shapes = tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in inputs.items())
        key = (tuple(sorted(self.params.items())), tuple(logits.shape), logits.dtype, logits.device, shapes)
        captured = _CACHE.get(key, lambda: _Captured(self.params, logits, inputs))
        return captured(logits, inputs)

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
