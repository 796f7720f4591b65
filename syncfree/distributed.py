"""Vocab-parallel sampling: every rank holds columns [vocab_start, vocab_start + L) of the same rows.

syncfree.distributed.sample gives every rank the same global tokens, bit-identical
to syncfree.sample on the unsharded logits with the same seeds/offsets, for any
number of shards and any uneven split, exchanging a few bytes per row:

- The race runs over global groups of 16 tokens (Note [Two-level exponential
  race]); a rank owns the groups that start in its columns. A group that
  crosses into the next ranks is completed with their first columns: every
  rank all-gathers its first 16 columns (64 bytes a row in float32).
- Each rank races its groups (noise by global index: Note [syncfree RNG counter
  layout]) and the best (key, group) per row is all-reduced (max key, then the
  lowest group among equal keys); +inf logits likewise (lowest index, count).
- The owner of the winning group races it token by token; one all-reduce
  gives everyone the token. Logprobs: the per-rank log-sum-exp pairs are
  all-gathered and merged (logprobs agree to float rounding, tokens exactly).

Per row and rank: 16 floats gathered, then 4 all-reduces of a few bytes, plus
8 bytes gathered for logprobs. Collectives go through torch.distributed on the
current stream (Gloo on CPU). This first version covers temperature-only
sampling (per-row temperatures and greedy rows included) with per-row seed/
offset tensors or an int seed; top-k/top-p/min-p/typical-p, the generator
path and CUDA shards come next (the selection exchanges its per-pass
histograms, 16 KB a row a pass).
"""
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _native  # noqa: F401  (loads the ops)
from .sampling import _number_or_tensor, _rng_args

GROUP = 16
INF = float("inf")
_NO_INDEX = 2**31 - 1


def _gather(tensor, group):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _check_tiling(local_logits, vocab_start, vocab_size, group):
    """Every rank learns every shard's (start, width, rows): the shards must tile [0, vocab_size)."""
    rows, width = local_logits.shape
    info = torch.tensor([vocab_start, width, rows, vocab_size], dtype=torch.int64, device=local_logits.device)
    shards = sorted(tuple(t.tolist()) for t in _gather(info, group))
    if len({s[2] for s in shards}) != 1:
        raise ValueError(f"local_logits: every rank must hold the same rows, got batch sizes {[s[2] for s in shards]}")
    if len({s[3] for s in shards}) != 1:
        raise ValueError(f"vocab_size: ranks disagree: {sorted({s[3] for s in shards})}")
    end = 0
    for start, w, _, _ in shards:
        if start != end:
            raise ValueError(f"vocab_start: the shards do not tile [0, {vocab_size}): columns {end}..{start} "
                             f"are {'missing' if start > end else 'held twice'}")
        end = start + w
    if end != vocab_size:
        raise ValueError(f"vocab_size: the shards cover [0, {end}), expected [0, {vocab_size})")


def _extended_shard(local_logits, vocab_start, vocab_size, group):
    """The columns of the groups this rank owns: [first group start, last owned group end), completed
    with the following ranks' first columns. Returns (columns, global index of column 0)."""
    rows, width = local_logits.shape
    head = torch.full((rows, GROUP), -float("inf"), dtype=local_logits.dtype, device=local_logits.device)
    head[:, :min(GROUP, width)] = local_logits[:, :GROUP]
    span = torch.tensor([vocab_start, width], dtype=torch.int64, device=local_logits.device)
    heads = _gather(head, group)
    spans = [tuple(t.tolist()) for t in _gather(span, group)]  # host ints: CPU tensors under Gloo
    first = -(-vocab_start // GROUP) * GROUP
    end = vocab_start + width
    if first >= end:
        return local_logits[:, :0], first
    stop = min(vocab_size, -(-end // GROUP) * GROUP)
    pieces = [local_logits[:, first - vocab_start:]]
    column = end
    while column < stop:  # at most 15 columns, from the heads of the ranks holding them
        owner = next(r for r, (start, w) in enumerate(spans) if start <= column < start + w)
        at = column - spans[owner][0]  # < 16: inside that rank's head
        take = min(stop - column, spans[owner][1] - at, GROUP - at)
        pieces.append(heads[owner][:, at:at + take])
        column += take
    return torch.cat(pieces, 1), first


def sample(local_logits: torch.Tensor, vocab_start: int, vocab_size: int,
           temperature: Union[float, torch.Tensor] = 1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, *,
           group=None, seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, return_logprobs: bool = False):
    """Samples from logits sharded by vocabulary; every rank returns the same global token ids ([B] int64).

    local_logits: [B, L] (or [L]) columns [vocab_start, vocab_start + L) of the [B, vocab_size] logits.
    temperature, seed, offset: as syncfree.sample (identical on every rank). Returns tokens, or
    (tokens, logprobs) with return_logprobs.
    """
    if any(not (isinstance(v, (int, float)) and v == identity)
           for v, identity in ((top_k, 0), (top_p, 1.0), (min_p, 0.0), (typical_p, 1.0))):
        raise NotImplementedError("top_k/top_p/min_p/typical_p: not implemented in syncfree.distributed yet")
    if generator is not None or seed is None:
        raise NotImplementedError("syncfree.distributed needs a seed (int or per-row tensor); "
                                  "the generator path is not implemented yet")
    squeeze = local_logits.dim() == 1
    x = local_logits.unsqueeze(0) if squeeze else local_logits
    if x.dim() != 2:
        raise ValueError(f"local_logits: expected shape [L] or [B, L], got {tuple(local_logits.shape)}")
    _check_tiling(x, vocab_start, vocab_size, group)
    temperature_t, temperature_v = _number_or_tensor(temperature, "temperature")
    temperature_v = 1.0 if temperature_v is None else float(temperature_v)
    rng = _rng_args(seed, offset, None)
    ext, base = _extended_shard(x, vocab_start, vocab_size, group)
    rows = x.shape[0]

    if ext.shape[1] > 0:
        partials, _ = torch.ops.syncfree.race_shard(ext, base, None, temperature_t, temperature_v, *rng, None)
    else:  # a shard narrower than a group may own no group: it races nothing
        empty = torch.tensor([-INF, 0.0, -INF, 0.0], device=x.device).view(torch.int32)
        partials = torch.tensor([0, _NO_INDEX, 0, 0, _NO_INDEX, 0], dtype=torch.int32,
                                device=x.device).repeat(rows, 1)
        partials[:, [0, 2, 3]] = empty[[0, 2, 3]]
    key = partials[:, 0].view(torch.float32).clone()
    index = partials[:, 1].clone()
    mass = partials[:, 2:4].view(torch.float32)
    inf_first, inf_count = partials[:, 4].clone(), partials[:, 5].clone()
    greedy = (temperature_t <= 0) | torch.isnan(temperature_t) if temperature_t is not None else \
        torch.full((rows,), temperature_v == 0, device=x.device)
    # Local indices to global ones: tokens for greedy rows, groups for sampled rows.
    has = index != _NO_INDEX
    index = torch.where(has, index + torch.where(greedy, base, base // GROUP), index)
    inf_first = torch.where(inf_count > 0, inf_first + base, inf_first)

    # The best key over ranks, then the lowest index among ranks that hold it.
    best = key.clone()
    dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
    mine = torch.where(key == best, index, torch.full_like(index, _NO_INDEX))
    dist.all_reduce(mine, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(inf_first, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(inf_count, op=dist.ReduceOp.SUM, group=group)

    # The owner of each row's winning group races it token by token.
    sampled = ~greedy & (mine != _NO_INDEX)
    local_group = mine.to(torch.int64) - base // GROUP
    owned = sampled & (local_group >= 0) & (local_group * GROUP < ext.shape[1])
    groups = torch.where(owned, local_group, torch.full_like(local_group, -1))
    if ext.shape[1] > 0:
        _, token = torch.ops.syncfree.race_shard(ext, base, groups, temperature_t, temperature_v, *rng, None)
        token = torch.where(token >= 0, token + base, token)
    else:
        token = torch.full((rows,), -1, dtype=torch.int64, device=x.device)
    dist.all_reduce(token, op=dist.ReduceOp.MAX, group=group)

    tokens = torch.where(inf_count > 0, inf_first.to(torch.int64),
                         torch.where(greedy, mine.to(torch.int64), token))
    tokens = torch.where((inf_count == 0) & (mine == _NO_INDEX), torch.zeros_like(tokens), tokens)
    result = tokens
    if return_logprobs:
        result = (tokens, _logprobs(x, vocab_start, tokens, mass, temperature_t, temperature_v, greedy,
                                    inf_count, mine, group))
    if squeeze:
        return tuple(r[0] for r in result) if return_logprobs else result[0]
    return result


def _logprobs(x, vocab_start, tokens, mass, temperature_t, temperature_v, greedy, inf_count, mine, group):
    """log p of each row's token: the per-rank (max, sum) pairs merged in rank order, and the token's
    scaled logit from its owner."""
    pairs = _gather(mass.contiguous(), group)
    m = torch.stack([p[:, 0] for p in pairs], 1)
    s = torch.stack([p[:, 1] for p in pairs], 1)
    top = m.max(1).values
    total = (s * torch.exp(torch.where(m == -float("inf"), m, m - top[:, None]))).sum(1)
    inv_t = torch.ones_like(top)
    if temperature_t is not None:
        inv_t = torch.where(greedy, inv_t, 1.0 / temperature_t.float())
    elif temperature_v != 0:
        inv_t = inv_t / temperature_v
    column = tokens - vocab_start
    here = (column >= 0) & (column < x.shape[1])
    y = torch.full_like(top, -float("inf"))
    picked = x.gather(1, column.clamp(0, x.shape[1] - 1)[:, None]).squeeze(1).float() * inv_t
    y = torch.where(here, picked, y)
    dist.all_reduce(y, op=dist.ReduceOp.MAX, group=group)
    logprobs = y - top - torch.log(total)
    logprobs = torch.where(inf_count > 0, -torch.log(inf_count.float()), logprobs)
    return torch.where((inf_count == 0) & (mine == _NO_INDEX), torch.full_like(logprobs, -float("inf")), logprobs)
