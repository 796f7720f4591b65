"""Vocab-parallel sampling: every rank holds columns [vocab_start, vocab_start + L) of the same rows.

syncfree.distributed.sample gives every rank the same global tokens, bit-identical
to syncfree.sample on the unsharded logits with the same seeds/offsets, for any
number of shards and any uneven split, exchanging a few bytes per row:

- The race runs over global groups of 16 tokens (Note [Two-level exponential
  race]); a rank owns the groups that start in its columns. A group that
  crosses into the next ranks is completed with their first columns: every
  rank all-gathers its first 16 columns (64 bytes a row in float32).
- Each rank races its groups (noise by global index: Note [syncfree RNG counter
  layout]) and the best (key, index) per row is all-reduced as one packed
  int64 (max key, then the lowest index among equal keys; a +inf logit is a
  key of +inf at its token).
- The owner of the winning group races it token by token; one all-reduce
  gives everyone the token. Logprobs: the per-rank log-sum-exp pairs are
  all-gathered and merged (logprobs agree to float rounding, tokens exactly).

Per row: each rank's first 16 columns gathered, then all-reduces of 16
bytes (README "Vocab-parallel sampling" has the table, warpers included).
Collectives go through torch.distributed (NCCL on CUDA, Gloo on CPU) on the
current stream. Warpers run the single-device radix selection with each
pass's histograms all-reduced (20 KB a row for top-k's three passes, 40 KB
for top-p's or typical-p's), so the kept sets are the single-device ones.

No host sync on CUDA: every decision the Python code takes is on host values
that all ranks share (shapes, which arguments are tensors, scalar values);
tensor data is only read by kernels. Whether a warper runs is decided by its
argument (a tensor, or a non-identity number), so every rank must pass the
same kinds of arguments. The one host exchange is the check that the shards
tile the vocabulary: on CUDA it runs once per (group, shard, batch size) and
is remembered, so call once eagerly before capturing a CUDA graph, and
call clear_layout_cache() on every rank after re-sharding.
"""
import struct
from typing import Optional, Union

import torch
import torch.distributed as dist

from . import _native
from .sampling import _number_or_tensor, _rng_args

GROUP = 16
INF = float("inf")
_NO_INDEX = 2**31 - 1
_MAX_VOCAB = 2**31 - 1 - 2 * GROUP  # syncfree.sample's limit (int32 token and group indices)
_NEG_INF_BITS = struct.unpack("<i", struct.pack("<f", -INF))[0]
_checked_layouts = {}  # CUDA: (group, world size, vocab_start, width, vocab_size, rows, call) -> spans
# Codes of the logits' dtypes in the layout exchange: ranks must agree (the collectives' sizes follow it).
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def clear_layout_cache():
    """Forgets the shard layouts checked on CUDA. Call it on every rank of a group together
    after re-sharding the vocabulary or restarting a rank: a rank that remembers its layout
    would otherwise skip the check that the others run, and the collectives would not match."""
    _checked_layouts.clear()


def _gather(tensor, group):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _shard_spans(local_logits, vocab_start, vocab_size, call, group):
    """Every rank's (start, width), checked to tile [0, vocab_size) with one batch size, one dtype
    and one kind of call (`call`: an int that encodes what changes the collectives).

    The exchange reads gathered values on the host: for CPU tensors that is free and runs on
    every call; for CUDA tensors it is a sync, so its result is remembered per layout and call."""
    if local_logits.device.type == "cpu":
        return _check_tiling(local_logits, vocab_start, vocab_size, call, group)
    key = (group if group is not None else dist.group.WORLD, dist.get_world_size(group), vocab_start,
           local_logits.shape[1], vocab_size, local_logits.shape[0], call)
    spans = _checked_layouts.get(key)
    if spans is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("syncfree.distributed.sample: this shard layout and batch size have not been seen "
                               "yet; call it once outside CUDA-graph capture first (it checks the layout across "
                               "ranks with one host exchange)")
        spans = _checked_layouts[key] = _check_tiling(local_logits, vocab_start, vocab_size, call, group)
    return spans


def _check_tiling(local_logits, vocab_start, vocab_size, call, group):
    """Every rank learns every shard's (start, width, rows, dtype, call): the shards must tile
    [0, vocab_size), with one batch size, dtype and kind of call. Errors are found from the
    gathered values, so every rank raises the same one."""
    rows, width = local_logits.shape
    info = torch.tensor([vocab_start, width, rows, vocab_size, _DTYPES.index(local_logits.dtype), call],
                        dtype=torch.int64, device=local_logits.device)
    gathered = [tuple(t.tolist()) for t in _gather(info, group)]  # host ints
    shards = sorted(gathered)
    if len({s[2] for s in shards}) != 1:
        raise ValueError(f"local_logits: every rank must hold the same rows, got batch sizes {[s[2] for s in shards]}")
    if len({s[4] for s in shards}) != 1:
        raise TypeError(f"local_logits: every rank must pass the same dtype, got "
                        f"{sorted({str(_DTYPES[s[4]]) for s in shards})}")
    if len({s[5] for s in shards}) != 1:
        raise ValueError("every rank must pass the same kinds of arguments (which of temperature, top_k, top_p, "
                         "min_p, typical_p are tensors or non-identity numbers, seed or generator, "
                         "return_logprobs)")
    if len({s[3] for s in shards}) != 1:
        raise ValueError(f"vocab_size: ranks disagree: {sorted({s[3] for s in shards})}")
    if not 1 <= vocab_size <= _MAX_VOCAB:
        raise ValueError(f"vocab_size: expected an int in [1, {_MAX_VOCAB}], got {vocab_size}")
    empty = [r for r, (_, w, *_) in enumerate(gathered) if w == 0]
    if empty:
        raise ValueError(f"local_logits: every rank must hold at least one column; ranks {empty} hold none")
    end = 0
    for start, w, *_ in shards:
        if start != end:
            raise ValueError(f"vocab_start: the shards do not tile [0, {vocab_size}): columns {end}..{start} "
                             f"are {'missing' if start > end else 'held twice'}")
        end = start + w
    if end != vocab_size:
        raise ValueError(f"vocab_size: the shards cover [0, {end}), expected [0, {vocab_size})")
    return [(start, w) for start, w, *_ in gathered]  # per rank


def _extended_shard(local_logits, vocab_start, vocab_size, spans, group):
    """The columns of the groups this rank owns: [first group start, last owned group end), completed
    with the following ranks' first columns. Returns (columns, global index of column 0)."""
    rows, width = local_logits.shape
    head = torch.full((rows, GROUP), -float("inf"), dtype=local_logits.dtype, device=local_logits.device)
    head[:, :min(GROUP, width)] = local_logits[:, :GROUP]
    heads = _gather(head, group)
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


def _per_row(warpers, name, identity, rows, dtype, device):
    """A warper's values as a [B] tensor of dtype."""
    value = warpers.get(name, identity)
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    return torch.full((rows,), value, dtype=dtype, device=device)


def _check_row_tensor(name, value, x):
    """A per-row tensor as syncfree.sample takes it: [B] on the device of the logits."""
    if value.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device} (the device of local_logits), got {value.device}")
    if tuple(value.shape) != (x.shape[0],):
        raise ValueError(f"{name}: expected one value per row, shape [{x.shape[0]}], got shape {list(value.shape)}")
    if name in ("seed", "offset"):
        if value.dtype != torch.int64:
            raise TypeError(f"{name}: expected an int64 tensor, got {value.dtype}")
    elif value.is_floating_point() == (name == "top_k") or value.dtype == torch.bool:
        kind = "an integer" if name == "top_k" else "a floating-point"
        raise TypeError(f"{name}: expected {kind} tensor, got {value.dtype}")


def _check_local_inputs(x, seed, offset):
    """What the shard ops check (csrc/ops.cpp), checked before the first collective: a rank that
    owns no race group runs none of those ops, and must raise with the others, not wait for them."""
    cpu = x.device.type == "cpu"
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"local_logits: expected a CPU or CUDA tensor, got device {x.device}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) and not (cpu and x.dtype == torch.float64):
        raise TypeError(f"local_logits: expected float32, float16 or bfloat16{' or float64' if cpu else ''}, "
                        f"got {x.dtype}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"local_logits: the last dim must be contiguous (stride 1), got stride {x.stride(1)}; "
                         f"call .contiguous() first")
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, torch.Tensor):
            _check_row_tensor(name, value, x)
    if isinstance(offset, torch.Tensor):
        if not isinstance(seed, torch.Tensor):
            raise ValueError("offset: a per-row offset tensor needs a per-row seed tensor")
    elif offset not in (None, 0):
        if isinstance(seed, torch.Tensor):
            raise ValueError("offset: a per-row seed tensor takes a per-row offset tensor, not an int")
        if seed is None:
            raise ValueError("offset: an offset needs a seed")


def _warper_values(top_k, top_p, min_p, typical_p, x, vocab):
    """The warpers that may act in some row, by name: a per-row tensor, or a number other than the
    identity. Host values only, the same on every rank; checked as syncfree.sample checks them."""
    values = {}
    for name, value, identity in (("top_k", top_k, 0), ("top_p", top_p, 1.0), ("min_p", min_p, 0.0),
                                  ("typical_p", typical_p, 1.0)):
        tensor, number = _number_or_tensor(value, name)
        if tensor is not None:
            _check_row_tensor(name, tensor, x)
            values[name] = tensor
            continue
        if name == "top_k" and not isinstance(number, int):
            raise TypeError(f"top_k: expected an int or an integer tensor [B], got {type(number).__name__}")
        valid = number >= 0 if name == "top_k" else (0 <= number <= 1 if name == "min_p" else 0 < number <= 1)
        if not valid:
            expected = {"top_k": "an int >= 0", "min_p": "a number in [0, 1]"}.get(name, "a number in (0, 1]")
            raise ValueError(f"{name}: expected {expected}, got {number}")
        if number != identity and not (name == "top_k" and number >= vocab):
            values[name] = number
    return values


def _order_key(y):
    """syncfree's order_key (select.h): uint32 values in int64 that order the floats."""
    b = (y + 0.0).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(b & 0x80000000 != 0, ~b & 0xFFFFFFFF, b | 0x80000000)


def _key_value(key):
    b = torch.where(key & 0x80000000 != 0, key & 0x7FFFFFFF, ~key & 0xFFFFFFFF)
    return torch.where(b >= 2**31, b - 2**32, b).to(torch.int32).view(torch.float32)


def _select(y, weights, centers, active, group, target=None, fraction=None):
    """select_top (select.h) for every row at once, each radix pass's histograms summed over the ranks.

    Keys and weights as shard_entry (select.h) makes them from the scaled logits y: weights None
    for top-k (1 per unmasked token), centers for typical-p's deviation keys. The target weight
    is given, or is mass_target(fraction, total weight): the first pass bins every weight, so
    its summed histogram holds the total and no collective of its own is needed.
    Returns (found, key): the largest key whose inclusive weight from the top reaches target."""
    rows, device = y.shape[0], y.device
    prefix = torch.zeros(rows, dtype=torch.int64, device=device)
    above = torch.zeros(rows, dtype=torch.int64, device=device)
    found = active.clone()
    done = 0
    for bits in (11, 11, 10):
        shift = 32 - done - bits
        hist = torch.ops.syncfree.radix_histogram(y, weights, centers, prefix, done)  # [B, 2^bits]
        if weights is None:  # top-k counts fit int32 (V < 2^31): 8 KB a row, 4 KB in the last pass
            hist = hist.to(torch.int32)
            dist.all_reduce(hist, op=dist.ReduceOp.SUM, group=group)
            hist = hist.to(torch.int64)
        else:  # masses: 16 KB a row, 8 KB in the last pass
            dist.all_reduce(hist, op=dist.ReduceOp.SUM, group=group)
        if done == 0 and fraction is not None:
            target = _mass_target(fraction, hist.sum(1))
        bins = torch.arange(1 << bits, device=device)
        suffix = hist.flip(1).cumsum(1).flip(1)  # weight of each bin and all above it
        fits = (hist > 0) & (above[:, None] + suffix >= target[:, None])
        chosen = torch.where(fits, bins, -1).max(1).values
        found &= chosen >= 0
        c = chosen.clamp(min=0)[:, None]
        above = above + (suffix.gather(1, c) - hist.gather(1, c)).squeeze(1)
        prefix = prefix | (c.squeeze(1) << shift)
        done += bits
    return found, prefix


def _mass_target(fraction, total):
    t = fraction.double() * total.double()
    floor_t = t.to(torch.int64)
    return torch.where(floor_t.double() < t, floor_t + 1, floor_t)


def _kept_sets(ext, vocab, temperature_t, temperature_v, greedy, warpers, group):
    """row_keep (select.h) across the shards: the same thresholds, from the same integer sums.

    warpers: _warper_values. Returns a float32 [B, 3] (min_y, center, max_dev) for race_shard, or
    None when no warper may act."""
    if not warpers:
        return None
    rows, device = ext.shape[0], ext.device
    top_k = _per_row(warpers, "top_k", 0, rows, torch.int64, device)
    top_p = _per_row(warpers, "top_p", 1.0, rows, torch.float32, device)
    min_p = _per_row(warpers, "min_p", 0.0, rows, torch.float32, device)
    typical_p = _per_row(warpers, "typical_p", 1.0, rows, torch.float32, device)
    # The clamps of clamp_warpers (select.h).
    top_k = torch.where((top_k <= 0) | (top_k >= vocab), 0, top_k)
    top_p = torch.where(~(top_p < 1), 1.0, top_p.clamp(min=0.0))
    min_p = torch.where(min_p > 0, min_p.clamp(max=1.0), 0.0)
    typical_p = torch.where(~(typical_p < 1), 1.0, typical_p.clamp(min=0.0))
    active = ~greedy & ((top_k > 0) | (top_p < 1) | (min_p > 0) | (typical_p < 1))
    # The scaled logits the race sees (greedy rows unscaled, NaN at -inf), by the kernels' own rule.
    y = torch.ops.syncfree.scaled_logits(ext, temperature_t, temperature_v) if ext.shape[1] else ext.float()
    m = y.max(1).values if y.shape[1] else torch.full((rows,), -INF, device=device)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = m + 0.0
    active &= (m < INF) & (m > -INF)  # a +inf logit wins outright; an all-masked row is degenerate
    m_safe = torch.where(active, m, 0.0)
    shift = 62 - max(0, (vocab - 1).bit_length())  # mass_shift (select.h)
    y_active = torch.where(active[:, None], y, -INF)
    if "top_p" in warpers:  # masses for top-p (its gaps are not used)
        mass, _ = torch.ops.syncfree.shard_masses(y_active, m_safe, torch.ones_like(m_safe), shift)
    min_y = torch.full((rows,), -INF, device=device)
    center = torch.zeros(rows, device=device)
    max_dev = torch.full((rows,), INF, device=device)
    if "top_k" in warpers:
        found, u = _select(y, None, None, active & (top_k > 0), group, target=top_k)
        min_y = torch.where(found, _key_value(u), min_y)
    if "top_p" in warpers:
        w = torch.where(y >= min_y[:, None], mass, 0)
        found, u = _select(y, w, None, active & (top_p < 1), group, fraction=top_p)
        min_y = torch.where(found, torch.maximum(min_y, _key_value(u)), min_y)
    if "min_p" in warpers:
        on = active & (min_p > 0)
        min_y = torch.where(on, torch.maximum(min_y, torch.ops.syncfree.min_p_floor(m_safe, min_p)), min_y)
    if "typical_p" in warpers:
        # typical_spread (select.h): the lowest finite logit of the row, then the gap terms relative to it.
        lowest = torch.where(y_active > -INF, y_active, INF).min(1).values if y.shape[1] else torch.full_like(m, INF)
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN, group=group)
        spread = torch.clamp(m_safe - torch.maximum(min_y, lowest), max=87.0)
        mass, gap = torch.ops.syncfree.shard_masses(y_active, m_safe, spread, shift)
        w = torch.where(y >= min_y[:, None], mass, 0)
        sums = torch.stack([w.sum(1), torch.where(w > 0, gap, 0).sum(1)], 1)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        c = m_safe - spread * (sums[:, 1].float() / sums[:, 0].clamp(min=1).float())  # typical_center
        found, u = _select(y, w, c, active & (typical_p < 1), group, target=_mass_target(typical_p, sums[:, 0]))
        center = torch.where(found, c, center)
        max_dev = torch.where(found, _key_value(~u & 0xFFFFFFFF), max_dev)
    return torch.stack([min_y, center, max_dev], 1)


def _no_partials(rows, device):
    """empty_partial (race.h) and no overflow argmax for every row, as race_shard's int32 [B, 8]: a shard
    that owns no group."""
    partials = torch.zeros(rows, 8, dtype=torch.int32, device=device)
    for column, value in ((0, _NEG_INF_BITS), (1, _NO_INDEX), (2, _NEG_INF_BITS), (4, _NO_INDEX), (6, _NEG_INF_BITS),
                          (7, _NO_INDEX)):
        partials[:, column] = value  # best (key, index), mass max, first +inf, overflow argmax; no host copies
    return partials


def sample(local_logits: torch.Tensor, vocab_start: int, vocab_size: int,
           temperature: Union[float, torch.Tensor] = 1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, *,
           group=None, seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, return_logprobs: bool = False):
    """Samples from logits sharded by vocabulary; every rank returns the same global token ids ([B] int64).

    local_logits: [B, L] (or [L]) columns [vocab_start, vocab_start + L) of the [B, vocab_size] logits.
    temperature, seed, offset, generator: as syncfree.sample, identical on every rank (a generator
    must be in the same state on every rank, e.g. seeded alike). Every rank must pass the same
    kinds of arguments (tensor or number) and the same numbers. Returns tokens, or (tokens,
    logprobs) with return_logprobs.
    """
    if seed is not None and generator is not None:
        raise ValueError("generator: pass either a generator or a seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if not isinstance(local_logits, torch.Tensor):
        raise TypeError(f"local_logits: expected a tensor [L] or [B, L], got {type(local_logits).__name__}")
    squeeze = local_logits.dim() == 1
    x = local_logits.unsqueeze(0) if squeeze else local_logits
    if x.dim() != 2:
        raise ValueError(f"local_logits: expected shape [L] or [B, L], got {tuple(local_logits.shape)}")
    if squeeze:  # one row: a per-row value may be 0-dim, as syncfree.sample takes it
        temperature, top_k, top_p, min_p, typical_p, seed, offset = (
            v.reshape(1) if isinstance(v, torch.Tensor) and v.dim() == 0 else v
            for v in (temperature, top_k, top_p, min_p, typical_p, seed, offset))
    for name, value in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int):  # ranges: in the layout check, on every rank
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    temperature_t, temperature_v = _number_or_tensor(temperature, "temperature")
    if temperature_t is not None:
        _check_row_tensor("temperature", temperature_t, x)
        temperature_t = temperature_t.float()  # as the kernels see it: greedy rows decided in float32
    elif not temperature_v >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0 means greedy), got {temperature_v}")
    temperature_v = 1.0 if temperature_v is None else float(temperature_v)
    # Greedy as the kernels decide it (is_greedy_temperature: a float64 that rounds to 0 is 0).
    all_greedy = temperature_t is None and _native._C.is_greedy_temperature(temperature_v)
    warpers = _warper_values(top_k, top_p, min_p, typical_p, x, vocab_size)
    rng = _rng_args(seed, offset, None)
    _check_local_inputs(x, seed, offset)
    call = sum(bit << i for i, bit in enumerate((
        temperature_t is not None, all_greedy, *(name in warpers for name in ("top_k", "top_p", "min_p", "typical_p")),
        isinstance(seed, torch.Tensor), seed is not None, return_logprobs)))
    spans = _shard_spans(x, vocab_start, vocab_size, call, group)
    rng_state = None
    if seed is None and not all_greedy:
        # The generator's draw for a single-device call over the whole vocabulary, once for every
        # shard call (on CUDA it stays on the device: graph-safe, no sync), after every check.
        # Scalar temperature 0 draws nothing, as syncfree.sample leaves the generator alone then.
        rng_state = torch.ops.syncfree.generator_state(x, generator, vocab_size)
    ext, base = _extended_shard(x, vocab_start, vocab_size, spans, group)
    rows = x.shape[0]
    greedy = torch.ops.syncfree.greedy_rows(x, temperature_t, temperature_v)
    keeps = _kept_sets(ext, vocab_size, temperature_t, temperature_v, greedy, warpers, group)

    if ext.shape[1] > 0:
        partials, _ = torch.ops.syncfree.race_shard(ext, base, None, keeps, temperature_t, temperature_v, *rng, None,
                                                    rng_state)
    else:  # a shard narrower than a group may own no group: it races nothing
        partials = _no_partials(rows, x.device)
    key = partials[:, 0].view(torch.float32).clone()
    index = partials[:, 1].clone()
    mass = partials[:, 2:4].view(torch.float32)
    inf_first, inf_count = partials[:, 4].clone(), partials[:, 5].clone()
    # A shard whose row is degenerate after scaling reports its raw argmax (Note [Logits past the
    # temperature's range]); where every shard is degenerate, the best of those is the token.
    over_key = partials[:, 6].view(torch.float32).clone()
    over_index = partials[:, 7].to(torch.int64)
    over_index = torch.where(over_index != _NO_INDEX, over_index + base, _NO_INDEX)
    # Local indices to global ones: tokens for greedy rows, groups for sampled rows.
    has = index != _NO_INDEX
    index = torch.where(has, index.to(torch.int64) + torch.where(greedy, base, base // GROUP), _NO_INDEX)
    # +inf logits win outright: such a row's candidate is its first +inf token, with key +inf.
    with_inf = inf_count > 0
    key = torch.where(with_inf, INF, key)
    index = torch.where(with_inf, inf_first.to(torch.int64) + base, index)
    # One all-reduce finds the best key and, among equal keys, the lowest index:
    # (order key << 31) | (2^31 - 1 - index), max over ranks.
    packed = torch.stack([(_order_key(key) << 31) | (_NO_INDEX - index),
                          (_order_key(over_key) << 31) | (_NO_INDEX - over_index)], 1)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=group)
    packed, over_packed = packed[:, 0], packed[:, 1]
    overflow = _NO_INDEX - (over_packed & _NO_INDEX)  # global raw argmax, or _NO_INDEX
    best_inf = _key_value(packed >> 31) == INF
    mine = _NO_INDEX - (packed & _NO_INDEX)  # global token (greedy, +inf) or group (sampled)

    # The owner of each row's winning group races it token by token.
    sampled = ~greedy & ~best_inf & (mine != _NO_INDEX)
    local_group = mine - base // GROUP
    owned = sampled & (local_group >= 0) & (local_group * GROUP < ext.shape[1])
    groups = torch.where(owned, local_group, torch.full_like(local_group, -1))
    if ext.shape[1] > 0:
        _, token = torch.ops.syncfree.race_shard(ext, base, groups, keeps, temperature_t, temperature_v, *rng, None,
                                                 rng_state)
        token = torch.where(token >= 0, token + base, token)
    else:
        token = torch.full((rows,), -1, dtype=torch.int64, device=x.device)
    dist.all_reduce(token, op=dist.ReduceOp.MAX, group=group)

    tokens = torch.where(sampled, token, mine)
    # Degenerate rows, and a winning group with no winner (Note [A winning group with no winner]): 0.
    tokens = torch.where((mine == _NO_INDEX) | (tokens < 0), torch.zeros_like(tokens), tokens)
    overflowed = (mine == _NO_INDEX) & (overflow != _NO_INDEX)
    tokens = torch.where(overflowed, overflow, tokens)
    result = tokens
    if return_logprobs:
        dist.all_reduce(inf_count, op=dist.ReduceOp.SUM, group=group)
        logprobs = _logprobs(x, vocab_start, tokens, mass, temperature_t, temperature_v, greedy, inf_count, mine,
                             group)
        result = (tokens, torch.where(overflowed, torch.zeros_like(logprobs), logprobs))
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
    column = tokens - vocab_start
    here = (column >= 0) & (column < x.shape[1])
    y = torch.full_like(top, -float("inf"))
    raw = x.gather(1, column.clamp(0, x.shape[1] - 1)[:, None])
    picked = torch.ops.syncfree.scaled_logits(raw, temperature_t, temperature_v)[:, 0]  # the kernels' scaling
    y = torch.where(here, picked, y)
    dist.all_reduce(y, op=dist.ReduceOp.MAX, group=group)
    logprobs = y - top - torch.log(total)
    logprobs = torch.where(inf_count > 0, -torch.log(inf_count.float()), logprobs)
    return torch.where((inf_count == 0) & (mine == _NO_INDEX), torch.full_like(logprobs, -float("inf")), logprobs)
