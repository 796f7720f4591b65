"""Vocab-parallel sampling: every rank holds columns [vocab_start, vocab_start + L) of the same rows.

syncfree.distributed.sample gives every rank the same global tokens, bit-identical
to syncfree.sample on the unsharded logits with the same seeds/offsets, for any
number of shards and any uneven split, exchanging a few bytes per row:

- The race runs over global groups of tokens (Note [Two-level exponential
  race]); a rank owns the groups that start in its columns. A group that
  crosses into the next ranks is completed with their first columns: every
  rank all-gathers its first columns (64 bytes a row in float32).
- Each rank races its groups (noise by global index: Note [syncfree RNG counter
  layout]) and the best (key, index) per row is all-reduced as one packed
  int64 (max key, then the lowest index among equal keys).
- The owner of the winning group races it token by token; one all-reduce
  gives everyone the token. Logprobs: the per-rank log-sum-exp pairs are
  all-gathered and merged (logprobs agree to float rounding, tokens exactly).
- Warpers run the single-device radix selection with each pass's histograms
  all-reduced, so the kept sets are the single-device ones.
- Processing (mask, bias, penalties) acts per token: each rank processes the
  columns it races, with the lists rewritten into their coordinates (Note
  [Processing on a shard]); it exchanges nothing.
- Top-n logprobs: each rank's best n (logprob, id) under the merged norm,
  all-gathered; the best n of those are the row's.

This module holds only the collectives and the layout cache. Every decision
between two collectives is a private op over the extension's core (Note
[Vocab-parallel steps] in csrc/core/shard.h): the steps, their buffers and
how each is merged come from there, so there is one definition of each rule.
README "Vocab-parallel sampling" has the bytes per row.

No host sync on CUDA: the Python code decides only on host values that all
ranks share (shapes, which arguments are tensors, scalar values); tensor data
is only read by kernels. Which warpers run is decided by their arguments (a
tensor, or a non-identity number), so every rank must pass the same kinds of
arguments. The one host exchange is the check that the shards tile the
vocabulary: on CUDA it runs once per (group, layout, kind of call) and is
remembered, so call once eagerly before capturing a CUDA graph, and call
clear_layout_cache() on every rank after re-sharding.
"""
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _native
from .params import FIELDS, SamplingParams
from .sampling import _keywords, _logprob_options, _params, _result, _rng_args

_checked_layouts = {}  # CUDA: (group, world size, this rank's layout row) -> spans
_REDUCE = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def clear_layout_cache():
    """Forgets the shard layouts checked on CUDA. Call it on every rank of a group together
    after re-sharding the vocabulary or restarting a rank: a rank that remembers its layout
    would otherwise skip the check that the others run, and the collectives would not match."""
    _checked_layouts.clear()


def _gather(tensor, group):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _shard_spans(local_logits, layout, group):
    """Every rank's (start, width) as a flat list, checked (csrc/shard_ops.cpp) to tile the
    vocabulary with one batch size, one dtype and one kind of call. `layout`: this rank's row.

    The exchange reads gathered values on the host: for CPU tensors that is free and runs on
    every call; for CUDA tensors it is a sync, so its result is remembered per layout."""
    if local_logits.device.type == "cpu":
        return _check_layout(local_logits, layout, group)
    key = (group if group is not None else dist.group.WORLD, dist.get_world_size(group), tuple(layout))
    spans = _checked_layouts.get(key)
    if spans is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("syncfree.distributed.sample: this shard layout and batch size have not been seen "
                               "yet; call it once outside CUDA-graph capture first (it checks the layout across "
                               "ranks with one host exchange)")
        spans = _checked_layouts[key] = _check_layout(local_logits, layout, group)
    return spans


def _check_layout(local_logits, layout, group):
    row = torch.tensor(layout, dtype=torch.int64, device=local_logits.device)
    table = torch.stack(_gather(row, group)).cpu()
    return torch.ops.syncfree._shard_layout(table)


def _collective(kind, buffer, group):
    """A step's collective (Note [Vocab-parallel steps]): "sum", "max", "gather" or None."""
    if kind == "gather":
        return torch.stack(_gather(buffer, group))
    if kind is not None:
        dist.all_reduce(buffer, op=_REDUCE[kind], group=group)
    return buffer


def _steps(x, vocab_start, vocab_size, params, rng, generator, return_logprobs, return_valid=False, out=None,
           top=(0, False)):
    """One rank's part of a call, as a generator: it yields ("layout", this rank's layout row) and
    (collective, buffer) requests, receives the spans and the collectives' results, and returns
    (tokens, logprobs, valid, top_ids, top_logprobs) (tokens: `out` when given). sample() answers
    with torch.distributed; the tests answer for several simulated ranks in one process.
    top: (n, raw) of return_top_logprobs and logprobs_mode."""
    ops = torch.ops.syncfree
    # Every check before the first exchange: a rank that raises must not leave the others waiting.
    lists = params.op_args()
    layout = ops._shard_call(x, vocab_start, vocab_size, *lists, *rng, generator, return_logprobs, out, *top)
    spans = yield "layout", layout
    flags = layout[-1]
    # The generator's draw for a single-device call over the whole vocabulary, shared by every
    # step (on CUDA it stays on the device: graph-safe, no sync), after every check.
    rng_state = ops._shard_draw(x, generator, vocab_size, flags)
    heads = yield "gather", ops._shard_head(x)
    columns, base = ops._shard_columns(x, list(heads), vocab_start, vocab_size, spans)
    local = ops._shard_processing(columns, base, *lists), lists[1]  # in the columns' coordinates
    state = ops._shard_begin(x, vocab_size, *lists, *rng, rng_state)  # temperatures and noise, once
    for step, kind in _native._C.shard_steps(flags):
        buffer = ops._shard_local(step, state, x, columns, base, flags, *local)
        ops._shard_merge(step, state, (yield kind, buffer))
    tokens, *rest = ops._shard_finish(state, return_logprobs, return_valid, out, top[0])
    return (out if out is not None else tokens, *rest)


def _run(steps, x, group):
    """Drives _steps over torch.distributed."""
    request = next(steps)
    while True:
        kind, value = request
        reply = _shard_spans(x, value, group) if kind == "layout" else _collective(kind, value, group)
        try:
            request = steps.send(reply)
        except StopIteration as done:
            return done.value


def _one_row(value, lists):
    """A [L] call's value as its [1, L] call takes it: a 0-dim per-row value as [1]; a processing
    list ([K], or the mask [ceil(V / 32)]) as [1, K]."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 0:
        return value.reshape(1)
    return value.unsqueeze(0) if lists and value.dim() == 1 else value


def _arguments(local_logits, vocab_start, vocab_size, params, seed, offset, generator, out=None):
    """(x as [B, L], whether it was [L], the parameters, the ops' seed arguments, out as [B])."""
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"local_logits: expected a tensor [L] or [B, L], got {type(local_logits).__name__}")
    squeeze = local_logits.dim() == 1
    x = local_logits.unsqueeze(0) if squeeze else local_logits
    if out is not None and not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected an int64 tensor, got {type(out).__name__}")
    if squeeze:  # one row, as syncfree.sample takes it for a [V] input
        lists = {f[0] for f in FIELDS if f[1] == "tensor"}
        params = params.replace(**{name: _one_row(getattr(params, name), name in lists) for name in params.given()})
        seed, offset = _one_row(seed, False), _one_row(offset, False)
        out = _one_row(out, False)
    for name, value in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int):  # ranges: in the layout check, on every rank
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return x, squeeze, params, _rng_args(seed, offset, generator), out


def sample(local_logits: torch.Tensor, vocab_start: int, vocab_size: int,
           temperature: Union[float, torch.Tensor, SamplingParams] = 1.0, top_k=0, top_p=1.0, min_p=0.0,
           typical_p=1.0, *, params: Optional[SamplingParams] = None, group=None,
           seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, return_logprobs: bool = False, return_valid: bool = False,
           out: Optional[torch.Tensor] = None, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
           output_tokens: Optional[torch.Tensor] = None, prompt_tokens: Optional[torch.Tensor] = None,
           bias_tokens: Optional[torch.Tensor] = None, bias_values: Optional[torch.Tensor] = None,
           allowed_mask: Optional[torch.Tensor] = None, return_top_logprobs: int = 0, logprobs_mode: str = "processed"):
    """Samples from logits sharded by vocabulary; every rank returns the same global token ids ([B] int64).

    local_logits: [B, L] (or [L]) columns [vocab_start, vocab_start + L) of the [B, vocab_size] logits.
    The parameters (a SamplingParams, or the same names as keywords), seed, offset, generator,
    return_logprobs, return_valid, out, return_top_logprobs and logprobs_mode: as syncfree.sample,
    identical on every rank (a generator must be in the same state on every rank, e.g. seeded
    alike). The processing tensors are the whole rows' (global ids; allowed_mask
    [B, ceil(vocab_size / 32)]) on every rank; top ids are global. Every rank must pass the same
    kinds of arguments (tensor or number) and the same numbers. Returns as syncfree.sample: tokens,
    or (tokens[, logprobs][, valid][, top_ids, top_logprobs]); for a SamplingParams, a SampleOutput.
    """
    params, as_object = _params(params, _keywords(locals()), "distributed.sample")
    top = _logprob_options(return_top_logprobs, logprobs_mode)
    x, squeeze, params, rng, out_rows = _arguments(local_logits, vocab_start, vocab_size, params, seed, offset,
                                                   generator, out)
    outputs = _run(_steps(x, vocab_start, vocab_size, params, rng, generator, return_logprobs, return_valid,
                          out_rows, top), x, group)
    if squeeze:  # a [L] call's results for its one row
        outputs = tuple(t[0] if t.dim() > 0 and t.shape[0] == 1 else t for t in outputs)
    if out is not None:
        outputs = (out,) + tuple(outputs[1:])
    return _result(as_object, outputs, return_logprobs, return_valid, top[0])
