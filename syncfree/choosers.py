"""Next-token choosers with LoRAX/TGI semantics, on top of syncfree.sample.

Greedy when do_sample is False or the temperature is 0 (the latter with
do_sample=True warns once, at construction); otherwise the warper chain and
the exponential race, fused in one syncfree.sample call with per-row values,
so a heterogeneous batch needs no Python loop, no sync and no recompilation.
Each request has a seed; its noise at step s depends only on (seed, s), so a
request gets the same tokens whatever batch it shares (RNG contract, README).
"""
import warnings
from typing import Optional, Sequence, Union

import torch

from .sampling import sample, verify_draft

_GREEDY_WARNING = ("temperature 0 with do_sample=True means greedy decoding; the other warpers are ignored "
                   "(pass do_sample=False to say so)")


def _as_list(value, n, name):
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: expected {n} values (one per request), got {len(value)}")
        return list(value)
    return [value] * n


class HeterogeneousNextTokenChooser:
    """Per-request parameters for a batch: lists (or tensors) of length B.

    chooser(logits [B, V]) -> (next_ids [B] int64, logprobs [B] float32 of the
    chosen tokens under the warped law; greedy rows: under softmax(logits)).
    filter(indices) keeps some requests; concatenate([a, b]) joins choosers.
    """

    def __init__(self, temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float],
                 typical_p: Sequence[float], min_p: Optional[Sequence[float]] = None,
                 do_sample: Optional[Sequence[bool]] = None, seeds: Optional[Sequence[int]] = None,
                 device: Union[str, torch.device] = "cpu"):
        n = len(temperature)
        temperature = [float(t) for t in temperature]
        do_sample = _as_list(True if do_sample is None else do_sample, n, "do_sample")
        seeds = _as_list(0 if seeds is None else seeds, n, "seeds")
        if any(d and t == 0 for d, t in zip(do_sample, temperature)):
            warnings.warn(_GREEDY_WARNING, UserWarning, stacklevel=2)
        # Greedy rows: temperature 0 (syncfree.sample's greedy).
        temps = [t if d else 0.0 for t, d in zip(temperature, do_sample)]
        self.device = torch.device(device)
        self._set(torch.tensor(temps, dtype=torch.float32),
                  torch.tensor(_as_list(top_k, n, "top_k"), dtype=torch.int64),
                  torch.tensor(_as_list(top_p, n, "top_p"), dtype=torch.float32),
                  torch.tensor(_as_list(0.0 if min_p is None else min_p, n, "min_p"), dtype=torch.float32),
                  torch.tensor(_as_list(typical_p, n, "typical_p"), dtype=torch.float32),
                  torch.tensor([s % (1 << 64) - (1 << 64) if s % (1 << 64) >= 1 << 63 else s % (1 << 64)
                                for s in seeds], dtype=torch.int64),
                  torch.zeros(n, dtype=torch.int64))

    def _set(self, temperature, top_k, top_p, min_p, typical_p, seeds, steps):
        d = self.device
        self.temperature, self.top_k, self.top_p = temperature.to(d), top_k.to(d), top_p.to(d)
        self.min_p, self.typical_p = min_p.to(d), typical_p.to(d)
        self.seeds, self.steps = seeds.to(d), steps.to(d)

    def _tensors(self):
        return (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p, self.seeds, self.steps)

    def __len__(self):
        return self.temperature.numel()

    def __call__(self, logits: torch.Tensor):
        ids, logprobs = sample(logits, self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p,
                               seed=self.seeds, offset=self.steps, return_logprobs=True)
        self.steps += 1  # in place, on the device: no sync, graph-safe
        return ids, logprobs

    def verify(self, target_logits: torch.Tensor, draft_ids: torch.Tensor, draft_probs: Optional[torch.Tensor] = None):
        """A speculative step: syncfree.verify_draft with each request's parameters and seed.
        target_logits [B, n + 1, V], draft_ids [B, n], draft_probs [B, n, V] or None ->
        (tokens [B, n + 1]: accepted, one more, then -1; num_accepted [B]; logprobs [B, n + 1]).
        Position j of a request draws at its step + j, and its step advances by the tokens
        emitted, num_accepted + 1 (on the device: no sync, graph-safe)."""
        tokens, accepted, logprobs = verify_draft(target_logits, draft_ids, draft_probs, self.temperature,
                                                  self.top_k, self.top_p, self.min_p, self.typical_p,
                                                  seed=self.seeds, offset=self.steps, return_logprobs=True)
        self.steps += accepted + 1
        return tokens, accepted, logprobs

    def filter(self, indices):
        """Keeps the requests at `indices`, in that order: a list of ints in [-B, B), or a 1-D integer
        tensor of values in [0, B) (not checked: that would read it, a sync on CUDA)."""
        if isinstance(indices, torch.Tensor):
            if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool \
                    or indices.dim() != 1:
                raise TypeError(f"indices: expected a 1-D integer tensor, got {indices.dtype} of shape "
                                f"{tuple(indices.shape)}")
        elif not isinstance(indices, (list, tuple, range)) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise TypeError(f"indices: expected a list of ints or a 1-D integer tensor, got {indices!r}")
        else:
            if any(not -len(self) <= i < len(self) for i in indices):
                raise ValueError(f"indices: expected ints in [{-len(self)}, {len(self)}), got {list(indices)}")
            indices = [i % len(self) for i in indices]
        index = torch.as_tensor(indices, dtype=torch.int64, device=self.device)
        chooser = object.__new__(type(self))
        chooser.device = self.device
        chooser._set(*(t.index_select(0, index) for t in self._tensors()))
        return chooser

    @classmethod
    def concatenate(cls, choosers):
        """One chooser for the requests of several (a non-empty list of choosers on one device), in order."""
        choosers = list(choosers) if isinstance(choosers, (list, tuple)) else choosers
        if not isinstance(choosers, list) or not choosers:
            raise ValueError(f"choosers: expected a non-empty list of choosers, got {choosers!r}")
        for c in choosers:
            if not isinstance(c, HeterogeneousNextTokenChooser):
                raise TypeError(f"choosers: expected HeterogeneousNextTokenChooser objects, got {type(c).__name__}")
            if c.device != choosers[0].device:
                raise ValueError(f"choosers: expected choosers on one device, got {choosers[0].device} and {c.device}")
        chooser = object.__new__(cls)
        chooser.device = choosers[0].device
        chooser._set(*(torch.cat(parts) for parts in zip(*(c._tensors() for c in choosers))))
        return chooser


class NextTokenChooser(HeterogeneousNextTokenChooser):
    """One request: NextTokenChooser(temperature, top_k, top_p, typical_p, min_p, do_sample, seed)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, typical_p: float = 1.0,
                 min_p: float = 0.0, do_sample: bool = False, seed: int = 0,
                 device: Union[str, torch.device] = "cpu"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().__init__([temperature], [top_k], [top_p], [typical_p], [min_p], [do_sample], [seed], device)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)

    def __call__(self, logits: torch.Tensor):
        """logits [V] or [1, V] -> (next_id, logprob) of shape [1]."""
        if not isinstance(logits, torch.Tensor) or logits.dim() not in (1, 2) or \
                (logits.dim() == 2 and logits.shape[0] != 1):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"logits: a single-request chooser takes [V] or [1, V], got {shape}; "
                             f"use HeterogeneousNextTokenChooser for a batch")
        ids, logprobs = super().__call__(logits.reshape(1, -1))
        return ids, logprobs
