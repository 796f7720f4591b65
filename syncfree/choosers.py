"""Next-token choosers with LoRAX/TGI semantics, on top of syncfree.sample.

Greedy when do_sample is False or the temperature is 0 (the latter with
do_sample=True warns once, at construction); otherwise the warper chain and
the exponential race, fused in one syncfree.sample call with per-row values,
so a heterogeneous batch needs no Python loop, no sync and no recompilation.
Each request has a seed; its noise at step s depends only on (seed, s), so a
request gets the same tokens whatever batch it shares (RNG contract, README).

Penalties and logit bias (README "Processing") ride in the same call. Each
request's output history lives on the device in a ring of `history_size`
slots (Note [Chooser history] below); the calls append to it in place.
"""
import numbers
import warnings
from collections.abc import Mapping
from typing import Dict, Optional, Sequence, Union

import torch

from .params import SamplingParams
from .sampling import sample, verify_draft, verify_tree

_GREEDY_WARNING = ("temperature 0 with do_sample=True means greedy decoding; the other warpers are ignored "
                   "(pass do_sample=False to say so)")

# Note [Chooser history]
# ----------------------
# history [B, T] int64 (T = history_size) is a ring: the token a request emits
# as its e-th (e = 0, 1, ...) goes to slot e % T, and slots never written hold
# -1 (padding, which syncfree.sample ignores). `steps` [B] counts the tokens a
# request has emitted (it is also the RNG offset), so the ring holds the last
# min(steps, T) of them and the next one goes to slot steps % T. Past T tokens
# the oldest are overwritten: the penalties count the most recent T tokens. A
# call appends with one scatter_ at steps % T; verify appends its
# num_accepted + 1 tokens with a gather and a where over the ring (no sync, no
# data-dependent shape: both are graph-safe). concatenate re-lays a ring of
# another width out on the device (_relayout), keeping the most recent tokens.
# Which arguments reach syncfree.sample is decided from Python flags held per
# request (_flags), never from device values: a batch where no request has a
# penalty passes no history (and T defaults to 0: nothing is kept, no cost).

DEFAULT_HISTORY_SIZE = 256
_REPETITION, _FREQUENCY, _BIAS = 1, 2, 4  # per-request flags: what syncfree.sample must be given
_ROWS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "seeds", "steps", "repetition_penalty",
         "frequency_penalty", "presence_penalty")  # [B]
_LISTS = (("history", -1), ("prompt_tokens", -1), ("bias_tokens", -1), ("bias_values", 0.0))  # [B, width], padding


def _as_list(value, n, name):
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: expected {n} values (one per request), got {len(value)}")
        return list(value)
    return [value] * n


def _penalties(value, n, name, identity, valid, what):
    """Per-request floats; None (for all, or for one request) is the identity."""
    out = []
    for v in _as_list(identity if value is None else value, n, name):
        v = identity if v is None else v
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}: expected numbers (one per request, or None), got {type(v).__name__}")
        if not valid(float(v)):
            raise ValueError(f"{name}: expected {what}, got {v}")
        out.append(float(v))
    return out


def _token_id(t, name):
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"{name}: expected token ids (ints >= 0), got {t!r}")
    return int(t)


def _prompts(value, n):
    if value is None:
        return [[] for _ in range(n)]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"prompt_tokens: expected one list of ids (or None) per request, {n} in all, got {value!r}")
    prompts = []
    for p in value:
        if isinstance(p, torch.Tensor):
            p = p.reshape(-1).tolist()  # construction only: never in a call
        if p is None:
            p = []
        if not isinstance(p, (list, tuple, range)):
            raise TypeError(f"prompt_tokens: expected one list of ids (or None) per request, got {p!r} for one")
        prompts.append([_token_id(t, "prompt_tokens") for t in p])
    return prompts


def _biases(value, n):
    biases = []
    for b in _as_list(value, n, "logit_bias") if not isinstance(value, Mapping) else [value] * n:
        if b is None:
            b = {}
        if not isinstance(b, Mapping):
            raise TypeError(f"logit_bias: expected a dict {{token_id: bias}} (or None) per request, got {b!r}")
        items = []
        for t, v in b.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
                raise ValueError(f"logit_bias: expected a number (not NaN) for token {t!r}, got {v!r}")
            items.append((_token_id(t, "logit_bias"), float(v)))
        biases.append(items)
    return biases


def _padded(rows, pad, dtype):
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=dtype).reshape(len(rows), width)


def _pad_to(t, width, pad):
    return t if t.shape[1] == width else torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad)


def _relayout(history, steps, width):
    """The ring `history` [B, T] of requests at `steps` (Note [Chooser history]) as a ring of `width`
    slots holding the same most recent min(steps, T, width) tokens; device ops only, no sync."""
    rows, old = history.shape
    if old == width:
        return history
    if old == 0 or width == 0:
        return history.new_full((rows, width), -1)
    last = steps.unsqueeze(1) - 1  # the latest emission of each request, -1 for none
    e = last - torch.remainder(last - torch.arange(width, device=history.device), width)  # latest e with e % width == k
    kept = (e >= 0) & (e > last - old)  # still in the old ring (its last `old` emissions)
    return torch.where(kept, history.gather(1, torch.remainder(e, old)), -1)


class HeterogeneousNextTokenChooser:
    """Per-request parameters for a batch: lists (or tensors) of length B.

    chooser(logits [B, V]) -> (next_ids [B] int64, logprobs [B] float32 of the
    chosen tokens under the processed, warped law; greedy rows: under the
    softmax of the processed logits). filter(indices) keeps some requests;
    concatenate([a, b]) joins choosers.

    Keyword-only, per request (a list of length B; a single value applies to
    all; None entries are the identity): repetition_penalty (HF rule over the
    prompt and output tokens, > 0, 1 = off), frequency_penalty and
    presence_penalty (OpenAI rule over the output tokens, 0 = off), logit_bias
    (a dict {token_id: bias} or None), prompt_tokens (a list of ids or None per
    request; only the repetition penalty reads it). history_size: the ring of
    output tokens kept per request (Note [Chooser history]): the penalties see
    the most recent history_size tokens (pass at least max_new_tokens to count
    the whole output); default DEFAULT_HISTORY_SIZE (256) when some request has
    a penalty, else 0 (no history, no per-call cost).
    Attributes: history [B, history_size] int64 (-1 = empty slot), steps [B]
    (tokens emitted: the next token goes to slot steps % history_size).
    """

    def __init__(self, temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float],
                 typical_p: Sequence[float], min_p: Optional[Sequence[float]] = None,
                 do_sample: Optional[Sequence[bool]] = None, seeds: Optional[Sequence[int]] = None,
                 device: Union[str, torch.device] = "cpu", *,
                 repetition_penalty: Optional[Sequence[Optional[float]]] = None,
                 frequency_penalty: Optional[Sequence[Optional[float]]] = None,
                 presence_penalty: Optional[Sequence[Optional[float]]] = None,
                 logit_bias: Optional[Sequence[Optional[Dict[int, float]]]] = None,
                 prompt_tokens: Optional[Sequence[Optional[Sequence[int]]]] = None,
                 history_size: Optional[int] = None):
        n = len(temperature)
        temperature = [float(t) for t in temperature]
        do_sample = _as_list(True if do_sample is None else do_sample, n, "do_sample")
        seeds = _as_list(0 if seeds is None else seeds, n, "seeds")
        finite = lambda v: abs(v) < float("inf")  # noqa: E731  (False for NaN too)
        repetition = _penalties(repetition_penalty, n, "repetition_penalty", 1.0, lambda v: v > 0 and finite(v),
                                "finite numbers > 0 (1 is off)")
        frequency = _penalties(frequency_penalty, n, "frequency_penalty", 0.0, finite, "finite numbers (0 is off)")
        presence = _penalties(presence_penalty, n, "presence_penalty", 0.0, finite, "finite numbers (0 is off)")
        biases = _biases(logit_bias, n)
        prompts = _prompts(prompt_tokens, n)
        flags = [(_REPETITION if r != 1.0 else 0) | (_FREQUENCY if f != 0.0 or p != 0.0 else 0) | (_BIAS if b else 0)
                 for r, f, p, b in zip(repetition, frequency, presence, biases)]
        penalized = any(f & (_REPETITION | _FREQUENCY) for f in flags)
        if history_size is None:
            history_size = DEFAULT_HISTORY_SIZE if penalized else 0
        if isinstance(history_size, bool) or not isinstance(history_size, numbers.Integral) or history_size < 0:
            raise ValueError(f"history_size: expected an int >= 0, got {history_size!r}")
        if penalized and history_size == 0:
            raise ValueError("history_size: the penalties need an output history, got history_size=0")
        if any(d and t == 0 for d, t in zip(do_sample, temperature)):
            warnings.warn(_GREEDY_WARNING, UserWarning, stacklevel=2)
        # Greedy rows: temperature 0 (syncfree.sample's greedy).
        temps = [t if d else 0.0 for t, d in zip(temperature, do_sample)]
        self.device = torch.device(device)
        f32 = torch.float32
        self._set(flags, temperature=torch.tensor(temps, dtype=f32),
                  top_k=torch.tensor(_as_list(top_k, n, "top_k"), dtype=torch.int64),
                  top_p=torch.tensor(_as_list(top_p, n, "top_p"), dtype=f32),
                  min_p=torch.tensor(_as_list(0.0 if min_p is None else min_p, n, "min_p"), dtype=f32),
                  typical_p=torch.tensor(_as_list(typical_p, n, "typical_p"), dtype=f32),
                  seeds=torch.tensor([s % (1 << 64) - (1 << 64) if s % (1 << 64) >= 1 << 63 else s % (1 << 64)
                                      for s in seeds], dtype=torch.int64),
                  steps=torch.zeros(n, dtype=torch.int64),
                  repetition_penalty=torch.tensor(repetition, dtype=f32),
                  frequency_penalty=torch.tensor(frequency, dtype=f32),
                  presence_penalty=torch.tensor(presence, dtype=f32),
                  history=torch.full((n, int(history_size)), -1, dtype=torch.int64),
                  prompt_tokens=_padded(prompts, -1, torch.int64),
                  bias_tokens=_padded([[t for t, _ in b] for b in biases], -1, torch.int64),
                  bias_values=_padded([[v for _, v in b] for b in biases], 0.0, f32))

    def _set(self, flags, **tensors):
        d = self.device
        for name, t in tensors.items():
            setattr(self, name, t.to(d))
        self._flags = list(flags)
        # The processing arguments for syncfree.sample, from the Python flags (never from device values).
        used = 0
        for f in self._flags:
            used |= f
        process = {}
        if used & _REPETITION:
            process["repetition_penalty"] = self.repetition_penalty
            if self.prompt_tokens.shape[1]:
                process["prompt_tokens"] = self.prompt_tokens
        if used & _FREQUENCY:
            process["frequency_penalty"], process["presence_penalty"] = self.frequency_penalty, self.presence_penalty
        if used & (_REPETITION | _FREQUENCY):
            process["output_tokens"] = self.history
        if used & _BIAS and self.bias_tokens.shape[1]:
            process["bias_tokens"], process["bias_values"] = self.bias_tokens, self.bias_values
        self._process = process
        # This batch's parameters (README "Parameters").
        self.params = SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                     min_p=self.min_p, typical_p=self.typical_p, **process)

    def _tensors(self):
        return {name: getattr(self, name) for name in _ROWS + tuple(name for name, _ in _LISTS)}

    @property
    def history_size(self) -> int:
        return self.history.shape[1]

    def __len__(self):
        return self.temperature.numel()

    def __call__(self, logits: torch.Tensor):
        one_row = bool(self._process) and isinstance(logits, torch.Tensor) and logits.dim() == 1
        ids, logprobs = sample(logits.unsqueeze(0) if one_row else logits, self.params, seed=self.seeds,
                               offset=self.steps, return_logprobs=True)[:2]
        if one_row:  # the [V] form, as without processing (whose [B, n] lists want a [B, V] input)
            ids, logprobs = ids.reshape(()), logprobs.reshape(())
        # In place, on the device: no sync, graph-safe (Note [Chooser history]).
        if self.history.shape[1]:
            self.history.scatter_(1, torch.remainder(self.steps, self.history.shape[1]).unsqueeze(1),
                                  ids.reshape(-1, 1))
        self.steps += 1
        return ids, logprobs

    def _append(self, tokens, emitted):
        """Appends tokens[b, :emitted[b]] to each request's ring (emitted >= 1): for each slot the latest
        new emission that lands there, else the old token (a gather and a where; no sync)."""
        width = self.history.shape[1]
        if not width:
            return
        first = self.steps.unsqueeze(1)
        last = first + emitted.unsqueeze(1) - 1
        e = last - torch.remainder(last - torch.arange(width, device=self.history.device), width)
        self.history.copy_(torch.where(e >= first, tokens.gather(1, (e - first).clamp(min=0)), self.history))

    def verify(self, target_logits: torch.Tensor, draft_ids: torch.Tensor, draft_probs: Optional[torch.Tensor] = None):
        """A speculative step: syncfree.verify_draft with each request's parameters and seed.
        target_logits [B, n + 1, V], draft_ids [B, n], draft_probs [B, n, V] or None ->
        (tokens [B, n + 1]: accepted, one more, then -1; num_accepted [B]; logprobs [B, n + 1]).
        Position j of a request draws at its step + j, and its step advances by the tokens
        emitted, num_accepted + 1, which join its history (on the device: no sync, graph-safe).
        With penalties or logit bias, verify_draft processes position j with the request's
        history plus draft_ids[:, :j] inside its passes (then the ring and those drafts count,
        which may exceed history_size by up to n); draft_probs stay the drafter's own."""
        tokens, accepted, logprobs = verify_draft(target_logits, draft_ids, draft_probs, self.params,
                                                  seed=self.seeds, offset=self.steps, return_logprobs=True)[:3]
        self._append(tokens, accepted + 1)
        self.steps += accepted + 1
        return tokens, accepted, logprobs

    def verify_tree(self, target_logits: torch.Tensor, draft_ids: torch.Tensor, parents: torch.Tensor,
                    draft_probs: Optional[torch.Tensor] = None):
        """A speculative step over a draft tree: syncfree.verify_tree with each request's parameters
        and seed. target_logits [B, N, V], draft_ids and parents [B, N], draft_probs [B, N, V] or
        None -> (tokens [B, N]: the accepted path's tokens, one more, then -1; path [B, N]: the
        root, the accepted nodes, then -1; num_accepted [B]; logprobs [B, N]). Node i of a request
        draws at its step + i; the step advances by the tokens emitted, num_accepted + 1, which join
        its history (no sync, graph-safe). With penalties or bias each node sees the history plus
        its path's tokens, as `verify` does for a chain."""
        tokens, path, accepted, logprobs = verify_tree(target_logits, draft_ids, parents, draft_probs, self.params,
                                                       seed=self.seeds, offset=self.steps, return_logprobs=True)[:4]
        self._append(tokens, accepted + 1)
        self.steps += accepted + 1
        return tokens, path, accepted, logprobs

    def filter(self, indices):
        """Keeps the requests at `indices`, in that order: a list of ints in [-B, B), or a 1-D integer
        tensor of values in [0, B) (not checked: that would read it, a sync on CUDA). Histories,
        prompts and biases go along. With a tensor the kept requests are not known on the host, so the
        new chooser passes syncfree.sample what any request of this one needed (same tokens, maybe
        slower); a list keeps exactly the kept requests' needs."""
        if isinstance(indices, torch.Tensor):
            if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool \
                    or indices.dim() != 1:
                raise TypeError(f"indices: expected a 1-D integer tensor, got {indices.dtype} of shape "
                                f"{tuple(indices.shape)}")
            used = 0
            for f in self._flags:
                used |= f
            flags = [used] * indices.shape[0]
        elif not isinstance(indices, (list, tuple, range)) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise TypeError(f"indices: expected a list of ints or a 1-D integer tensor, got {indices!r}")
        else:
            if any(not -len(self) <= i < len(self) for i in indices):
                raise ValueError(f"indices: expected ints in [{-len(self)}, {len(self)}), got {list(indices)}")
            indices = [i % len(self) for i in indices]
            flags = [self._flags[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.int64, device=self.device)
        chooser = object.__new__(type(self))
        chooser.device = self.device
        chooser._set(flags, **{name: t.index_select(0, index) for name, t in self._tensors().items()})
        return chooser

    @classmethod
    def concatenate(cls, choosers):
        """One chooser for the requests of several (a non-empty list of choosers on one device), in order.
        Prompts and biases are padded with -1 to the widest; the history rings take the largest
        history_size (a narrower ring is re-laid out on the device, keeping its tokens)."""
        choosers = list(choosers) if isinstance(choosers, (list, tuple)) else choosers
        if not isinstance(choosers, list) or not choosers:
            raise ValueError(f"choosers: expected a non-empty list of choosers, got {choosers!r}")
        for c in choosers:
            if not isinstance(c, HeterogeneousNextTokenChooser):
                raise TypeError(f"choosers: expected HeterogeneousNextTokenChooser objects, got {type(c).__name__}")
            if c.device != choosers[0].device:
                raise ValueError(f"choosers: expected choosers on one device, got {choosers[0].device} and {c.device}")
        parts = [c._tensors() for c in choosers]
        tensors = {name: torch.cat([p[name] for p in parts]) for name in _ROWS}
        for name, pad in _LISTS:
            width = max(p[name].shape[1] for p in parts)
            if name == "history":
                tensors[name] = torch.cat([_relayout(p[name], p["steps"], width) for p in parts])
            else:
                tensors[name] = torch.cat([_pad_to(p[name], width, pad) for p in parts])
        chooser = object.__new__(cls)
        chooser.device = choosers[0].device
        chooser._set([f for c in choosers for f in c._flags], **tensors)
        return chooser


class NextTokenChooser(HeterogeneousNextTokenChooser):
    """One request: NextTokenChooser(temperature, top_k, top_p, typical_p, min_p, do_sample, seed), and
    keyword-only repetition_penalty, frequency_penalty, presence_penalty, logit_bias (a dict or None),
    prompt_tokens (a list of ids or None) and history_size, as HeterogeneousNextTokenChooser's."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, typical_p: float = 1.0,
                 min_p: float = 0.0, do_sample: bool = False, seed: int = 0,
                 device: Union[str, torch.device] = "cpu", *, repetition_penalty: float = 1.0,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 logit_bias: Optional[Dict[int, float]] = None, prompt_tokens: Optional[Sequence[int]] = None,
                 history_size: Optional[int] = None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().__init__([temperature], [top_k], [top_p], [typical_p], [min_p], [do_sample], [seed], device,
                             repetition_penalty=[repetition_penalty], frequency_penalty=[frequency_penalty],
                             presence_penalty=[presence_penalty], logit_bias=[logit_bias],
                             prompt_tokens=[prompt_tokens], history_size=history_size)
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
