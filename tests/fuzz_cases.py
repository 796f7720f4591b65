"""The fuzz suite's cases and invariants; tests/test_fuzz.py runs them in subprocesses.

    python tests/fuzz_cases.py BATCH EXAMPLES [--emulated | --choosers | --distributed | --simulated |
                                               --verify [--emulated] | --tree [--emulated]]

Each case is drawn by hypothesis (seeded by BATCH: deterministic) and printed before it
runs, so a crash or a hang names its input. Invariants, on every call: an exception
names the argument that is wrong (and a call built valid raises none), or every id is in
[0, V), no masked or warper-removed token is chosen, `valid` says whether the row had a
token to choose, a seeded call repeats itself, the kept set equals the float64 sorting
reference on finite rows (outside the documented 1e-6 boundary), and logprobs are the
float64 log-softmax of the warped logits. With --emulated the calls run the CUDA kernels
on the CPU (tests/cuda_on_cpu) and must also equal the CPU path. --choosers fuzzes the
next-token choosers (errors, ids in range, filter/concatenate keep each request's tokens);
--distributed runs two Gloo ranks over random uneven shards, bit-identical to one device,
every error raised on both ranks, and --simulated one to six ranks in one process
(fuzz_distributed.py); --verify and --tree fuzz verify_draft and verify_tree
(fuzz_verify.py).
"""
import contextlib
import functools
import math
import sys
import warnings

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import syncfree
from reference import is_greedy, reference_keep, scaled_logits

INF, NAN = float("inf"), float("nan")
ARGUMENTS = ("logits", "probs", "temperature", "top_k", "top_p", "min_p", "typical_p", "seed", "offset",
             "generator", "out", "repetition_penalty", "frequency_penalty", "presence_penalty", "output_tokens",
             "prompt_tokens", "bias_tokens", "bias_values", "allowed_mask", "return_top_logprobs", "logprobs_mode",
             "return_rank")
PROCESSING = ("repetition_penalty", "frequency_penalty", "presence_penalty", "output_tokens", "prompt_tokens",
              "bias_tokens", "bias_values", "allowed_mask")
# The sorting reference judges rows with temperatures above TINY_T (below, logit / T may
# overflow: README "Semantics") whose scaled logits spread over more than 1e-9 or not at all,
# and whose distinct scaled logits with mass have distinct float64 probabilities (closer
# logits are below float64's resolution of the probabilities, while the float32 logits still
# differ: README "Warpers"; e.g. logits of 0.01 and -3e38 at a temperature of 1e30).
TINY_T = 1e-30
# Around the greedy threshold (README "API"): the smallest subnormal, the largest subnormal, FLT_MIN
# (the smallest temperature that samples) and a value whose scaling overflows ordinary logits.
TINY_TEMPERATURES = [2.0 ** -149, 2.0 ** -126 - 2.0 ** -149, 2.0 ** -126, 1.2e-38]


def judgeable(y):
    finite = y[torch.isfinite(y)]
    if finite.numel() == 0 or (y == INF).any():
        return False
    spread = (finite.max() - finite.min()).item()
    distinct = torch.unique(finite.double())  # sorted
    p = torch.exp(distinct - distinct[-1])
    merged = ((p[1:] == p[:-1]) & (p[1:] > 0)).any().item()
    return spread == 0 or (spread > 1e-9 and not merged)


def draw_row(data, v):
    kind = data.draw(st.sampled_from(["normal", "normal", "huge", "inf", "masked", "one", "ties", "nan", "denormal"]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    row = torch.randn(v, generator=g, dtype=torch.float64) * data.draw(st.sampled_from([0.01, 1.0, 5.0, 40.0]))
    if kind == "huge":
        row[torch.rand(v, generator=g) < 0.3] = data.draw(st.sampled_from([3e38, -3e38]))
    elif kind == "inf":
        row[torch.randint(0, v, (data.draw(st.integers(1, 3)),), generator=g)] = INF
    elif kind == "masked":
        row[:] = -INF
    elif kind == "one":
        row[:] = -INF
        row[data.draw(st.integers(0, v - 1))] = 0.5
    elif kind == "ties":
        row = torch.randint(0, 3, (v,), generator=g).double()
    elif kind == "nan":
        row[torch.rand(v, generator=g) < 0.5] = NAN
    elif kind == "denormal":
        row = row * 1e-40
    row[torch.rand(v, generator=g) < 0.1] = -INF
    return row


def draw_processing(data, kwargs, b, rows, v, emulated):
    """Mask, bias, penalties (README "Processing") into kwargs; returns whether all were built valid.
    Ids outside [0, V) are an error on the CPU and padding on CUDA (emulated)."""
    valid = True
    shaped = (lambda t: t if b is not None else t[0])  # noqa: E731  ([B, n] or [n] for a [V] input)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    for name, good, bad in (("repetition_penalty", [1.0, 1.3, 0.7, 20.0], [0.0, -1.0, INF]),
                            ("frequency_penalty", [0.0, 0.5, -2.0, 1e30], [NAN, INF]),
                            ("presence_penalty", [0.0, 1.0, -1.5], [NAN, -INF])):
        choice = data.draw(st.sampled_from(["off", "off", "good", "bad", "tensor"]))
        if choice == "good":
            kwargs[name] = data.draw(st.sampled_from(good))
        elif choice == "bad":
            kwargs[name] = data.draw(st.sampled_from(bad))
            valid = False
        elif choice == "tensor":  # any values: clamped
            kwargs[name] = shaped(torch.tensor(data.draw(st.lists(st.sampled_from(good + bad + [NAN]), min_size=rows,
                                                                   max_size=rows)), dtype=torch.float32))
    for name in ("output_tokens", "prompt_tokens", "bias_tokens"):
        choice = data.draw(st.sampled_from(["none", "none", "good", "padding", "past", "shape"]))
        if choice == "none":
            continue
        n = data.draw(st.sampled_from([0, 1, 5, 64]))
        ids = torch.randint(0, v, (rows, n), generator=g)
        if choice == "padding" and n:
            ids[:, ::2] = -1
        elif choice == "past" and n:
            ids[:, 0] = data.draw(st.sampled_from([v, v + 5, -2, -2**40]))
            valid = valid and emulated
        elif choice == "shape":
            ids = ids.float() if data.draw(st.booleans()) else torch.zeros(rows + 1, 2, dtype=torch.int64)
            valid = False
        kwargs[name] = shaped(ids) if ids.dim() == 2 and ids.shape[0] == rows else ids
        if name == "bias_tokens":
            values = torch.randn(ids.shape[:2] if ids.dim() == 2 else (rows, 0), generator=g) * 4
            if values.numel():
                values.view(-1)[0] = data.draw(st.sampled_from([1.0, INF, -INF, NAN, 3e38]))
            if data.draw(st.integers(0, 9)) == 0:  # bias_tokens without bias_values
                valid = False
            else:
                kwargs["bias_values"] = shaped(values) if values.shape[0] == rows else values
    mask = data.draw(st.sampled_from(["none", "none", "random", "zero-row", "dtype", "words"]))
    if mask != "none":
        words = torch.randint(-2**31, 2**31, (rows, (v + 31) // 32), generator=g, dtype=torch.int64).to(torch.int32)
        if mask == "zero-row" and rows:
            words[0] = 0
        elif mask == "dtype":
            words = words.to(torch.int64)
            valid = False
        elif mask == "words":
            words = torch.zeros(rows, (v + 31) // 32 + 1, dtype=torch.int32)
            valid = False
        kwargs["allowed_mask"] = shaped(words)
    return valid


def processed_row(x, kwargs, r, rows):
    """Row r's logits after mask, bias and penalties in float32, in the README's order (None when a
    penalty or bias value is so extreme that float32 rounding could decide what is masked)."""
    def per_row(name, default):
        value = kwargs.get(name, default)
        return value.reshape(-1)[r].item() if isinstance(value, torch.Tensor) else value

    def ids(name):
        t = kwargs.get(name)
        if t is None or t.dim() not in (1, 2) or t.dtype != torch.int64:
            return []
        return [i for i in t.reshape(rows, -1)[r].tolist() if 0 <= i < x.shape[-1]]

    y = x.reshape(rows, -1)[r].float().clone()
    mask = kwargs.get("allowed_mask")
    if mask is not None:
        words = mask.reshape(rows, -1)[r].long() & 0xFFFFFFFF
        bits = (words[:, None] >> torch.arange(32)) & 1
        y[~bits.reshape(-1)[:y.numel()].bool()] = -INF
    rep, freq, pres = (per_row("repetition_penalty", 1.0), per_row("frequency_penalty", 0.0),
                       per_row("presence_penalty", 0.0))
    rep = rep if rep > 0 else 1.0
    freq, pres = (freq if freq == freq else 0.0), (pres if pres == pres else 0.0)
    bias = {}
    if kwargs.get("bias_values") is not None:
        for i, value in zip(kwargs["bias_tokens"].reshape(rows, -1)[r].tolist(),
                            kwargs["bias_values"].reshape(rows, -1)[r].tolist()):
            if 0 <= i < y.numel():
                bias[i] = value  # the last slot wins
    output, prompt = ids("output_tokens"), ids("prompt_tokens")
    if any(abs(value) > 1e30 for value in list(bias.values()) + [rep, freq, pres] if value == value):
        return None
    for i, value in bias.items():
        y[i] = y[i] + value
    for i in set(output) | set(prompt):
        y[i] = y[i] / rep if y[i] > 0 else y[i] * rep
    for i in set(output):
        y[i] = y[i] - (freq * output.count(i) + pres)
    return y


def draw_case(data, emulated=False):
    """(kwargs of the call, logits/probs tensor, op, whether every argument was built valid)."""
    valid = True
    op = data.draw(st.sampled_from(["sample", "sample", "sample", "sample_probs", "warp"]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    b = data.draw(st.sampled_from([3, 1, 2, 5, 0]))
    v = data.draw(st.sampled_from([40, 1, 2, 16, 17, 33, 80, 1000, 4099, 16400, 131072, 262144]))
    full = torch.stack([draw_row(data, v) for _ in range(b)]) if b else torch.zeros(0, v, dtype=torch.float64)
    if op == "sample_probs":
        full = torch.where(torch.isnan(full), full, full.clamp(-80, 80).exp()) * data.draw(st.sampled_from([1, -1]))
    layout = data.draw(st.sampled_from(["contiguous", "strided", "expanded", "overlapping", "1d"]))
    x = full.to(dtype)
    if layout == "strided" and b:
        wide = torch.full((b, v + 3), 7.0, dtype=dtype)
        wide[:, 1:v + 1] = x
        x = wide[:, 1:v + 1]
    elif layout == "expanded" and b:
        x = x[:1].expand(b, v)
    elif layout == "overlapping" and b > 1 and v > 1:
        x = x.reshape(-1).as_strided((b, v), (max(1, v // 2), 1))  # rows share elements
    elif layout == "1d" and b:
        x = x[0]
        b = None  # a scalar result
    rows = 1 if b is None else b
    kwargs = {}
    if op != "sample_probs":
        t = data.draw(st.one_of(st.sampled_from([0.0, 1e-46, 1e-39, 0.3, 1.0, 2.5, 1e30, -1.0, NAN] + TINY_TEMPERATURES),
                                st.just("tensor")))
        if t == "tensor":
            t = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, -1.0, NAN, INF, 1e-45, 0.5, 1.0, 3.0] + TINY_TEMPERATURES),
                                                min_size=rows, max_size=rows)), dtype=torch.float32)
            t = t if b is not None else t[0]
        elif not t >= 0:
            valid = False
        kwargs["temperature"] = t
        for name, good, bad in (("top_k", [0, 1, 5, 50, 10**6, 2**63], [-1]), ("top_p", [1.0, 0.9, 0.5, 1e-6], [0.0, 1.5]),
                                ("min_p", [0.0, 0.05, 0.5, 1.0], [-0.1, 2.0]), ("typical_p", [1.0, 0.9, 0.2], [0.0, 7.0])):
            choice = data.draw(st.sampled_from(["off", "off", "good", "bad", "tensor"]))
            if choice == "good":
                kwargs[name] = data.draw(st.sampled_from(good))
            elif choice == "bad":
                kwargs[name] = data.draw(st.sampled_from(bad))
                valid = False
            elif choice == "tensor":  # any values: clamped (README "Warpers")
                values = data.draw(st.lists(st.sampled_from(good + bad + ([NAN] if name != "top_k" else [])),
                                            min_size=rows, max_size=rows))
                tensor = torch.tensor([min(value, 2**63 - 1) for value in values],
                                      dtype=torch.int64 if name == "top_k" else torch.float32)
                kwargs[name] = tensor if b is not None else tensor[0]
        if data.draw(st.integers(0, 2)) == 0:
            valid = draw_processing(data, kwargs, b, rows, v, emulated) and valid
    if op == "sample":
        top = data.draw(st.sampled_from([0, 0, 1, 5, 20, 21]))
        if top:
            kwargs["return_top_logprobs"] = top
            valid = valid and top <= min(20, v)
        mode = data.draw(st.sampled_from(["processed", "processed", "raw", "bad"]))
        if mode != "processed":
            kwargs["logprobs_mode"] = mode if mode == "raw" else "max"
            valid = valid and mode == "raw"
        rank = data.draw(st.sampled_from([False, False, True, "bad"]))
        if rank:
            kwargs["return_rank"] = rank is True or 1  # 1: not a bool
            valid = valid and rank is True
    if op != "warp":
        rng = data.draw(st.sampled_from(["none", "int", "tensor", "generator", "bad"]))
        if rng == "int":
            kwargs["seed"] = data.draw(st.integers(-2**70, 2**70))
            kwargs["offset"] = data.draw(st.integers(0, 2**40))
        elif rng == "tensor":
            seeds = torch.tensor(data.draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=rows, max_size=rows)),
                                 dtype=torch.int64)
            kwargs["seed"] = seeds if b is not None else seeds[0]
        elif rng == "generator":
            kwargs["generator"] = torch.Generator().manual_seed(data.draw(st.integers(0, 2**40)))
        elif rng == "bad":
            kwargs["offset"] = 3  # an offset without a seed
            valid = False
        out = data.draw(st.sampled_from(["none", "none", "good", "wrong", "overlap"]))
        shape = () if b is None else (b,)
        if out == "good":
            kwargs["out"] = torch.full(shape, -7, dtype=torch.int64)
        elif out == "wrong":
            kwargs["out"] = torch.zeros((rows + 1,), dtype=torch.int64)
            valid = False
        elif out == "overlap" and x.numel() >= 2 * max(rows, 1) and x.dtype == torch.float64:
            kwargs["out"] = x.detach().view(-1)[:rows].view(torch.int64).view(shape) if x.is_contiguous() else None
            if kwargs["out"] is None:
                del kwargs["out"]
            else:
                valid = False
        if op == "sample":
            kwargs["return_logprobs"] = data.draw(st.booleans())
        kwargs["return_valid"] = True
    return op, x, kwargs, valid


def clamp_warpers(kwargs, rows, v):
    """Each row's warper values after the README's clamps (a test-side reference)."""
    def value(name, default):
        val = kwargs.get(name, default)
        return val.reshape(-1).tolist() if isinstance(val, torch.Tensor) else [val] * rows

    out = []
    for k, p, m, tp in zip(value("top_k", 0), value("top_p", 1.0), value("min_p", 0.0), value("typical_p", 1.0)):
        frac = (lambda q: 1.0 if not q < 1 else max(q, 0.0))
        out.append(dict(top_k=0 if k <= 0 or k >= v else k, top_p=frac(p), min_p=min(max(m, 0.0), 1.0) if m == m else 0.0,
                        typical_p=frac(tp)))
    return out


def check_rank(rank, tokens, valid, v, top):
    """A rank is in [1, V], V where nothing was left, and at least 1 + the number of top-n
    entries listed before the chosen token (each has a logprob at least its own)."""
    assert rank.shape == tokens.shape and rank.dtype == torch.int64, "rank's shape or dtype"
    assert ((rank >= 1) & (rank <= v)).all(), f"rank out of [1, V]: {rank}"
    assert (valid | (rank == v)).all(), f"a row with nothing left ranks V: {rank}"
    if top is not None:
        top_ids, n = top
        for ids, token, r in zip(top_ids.reshape(-1, n).tolist(), tokens.reshape(-1).tolist(), rank.reshape(-1).tolist()):
            ahead = ids.index(token) if token in ids else n
            assert r >= ahead + 1, f"rank {r} below the {ahead} top entries listed before token {token}"


def check(op, x, kwargs, result):
    """The invariants of a call that returned."""
    if op == "warp":
        warped, logprobs = result
        assert warped.shape == x.shape and logprobs.shape == x.shape
        if any(kwargs.get(name) is not None for name in PROCESSING):
            return  # the processed values: tests/test_processing.py
        v = x.shape[-1]
        x2, w2 = x.reshape(-1, v), warped.reshape(-1, v)
        temps = kwargs.get("temperature", 1.0)
        temps = temps.reshape(-1).tolist() if isinstance(temps, torch.Tensor) else [temps] * x2.shape[0]
        warpers = clamp_warpers(kwargs, x2.shape[0], v)
        for r in range(x2.shape[0]):
            t = temps[r] if temps[r] == temps[r] else 0.0  # warp scales nothing for NaN, as for 0
            y = scaled_logits(x2[r:r + 1], torch.tensor([t]))[0]
            # The kept set against the sorting reference, on rows the reference can judge: finite
            # after scaling, no +inf, and a temperature float64 can still tell apart (README "Warpers").
            if not judgeable(y) or 0 < t < TINY_T or (x2[r] == INF).any():  # +inf: not warped
                continue
            keep, margin = reference_keep(y, **warpers[r])
            if margin > 1e-6:
                assert torch.equal(w2[r] > -INF, keep), f"row {r}: kept set differs from the sorting reference"
        return
    tokens, *rest = result if isinstance(result, tuple) else (result,)
    v = x.shape[-1]
    rank = rest.pop() if kwargs.get("return_rank") else None
    top = kwargs.get("return_top_logprobs", 0)
    if top:
        rest, (top_ids, top_logprobs) = rest[:-2], rest[-2:]
        assert top_ids.shape == tokens.shape + (top,) and top_logprobs.shape == top_ids.shape
        assert ((top_ids >= 0) & (top_ids < v)).all(), f"top ids out of range: {top_ids}"
        flat_ids, flat_lp = top_ids.reshape(-1, top), top_logprobs.reshape(-1, top)
        assert not torch.isnan(flat_lp).any() and (flat_lp <= 1e-6).all(), "top logprobs"
        assert (flat_lp[:, 1:] <= flat_lp[:, :-1]).all(), "top logprobs not highest first"
        assert all(len(set(row)) == top for row in flat_ids.tolist()), "a top id listed twice"
    valid = rest[-1]
    if rank is not None:
        check_rank(rank, tokens, valid, v, (top_ids, top) if top else None)
    if any(kwargs.get(name) is not None for name in PROCESSING):
        return check_processed(x, kwargs, tokens, valid)
    assert tokens.dtype == torch.int64 and ((tokens >= 0) & (tokens < v)).all(), f"ids out of range: {tokens}"
    if "out" in kwargs:
        assert tokens is kwargs["out"]
    x2, t2, v2 = x.reshape(-1, v), tokens.reshape(-1), valid.reshape(-1)
    rows = x2.shape[0]
    raw = x2.double()
    picked = raw.gather(1, t2[:, None])[:, 0]
    if op == "sample_probs":
        usable = (raw > 0) & ~torch.isnan(raw)
        assert torch.equal(v2, usable.any(1)), "valid"
        assert (~v2 | (picked > 0)).all(), "a zero-weight token was chosen"
        return
    temps = kwargs.get("temperature", 1.0)
    temps = temps.reshape(-1).tolist() if isinstance(temps, torch.Tensor) else [temps] * rows
    greedy = [is_greedy(t) for t in temps]
    usable = ~torch.isnan(raw) & (raw != -INF)
    if kwargs.get("logprobs_mode") == "raw" and len(rest) == 2:  # log_softmax of the raw logits
        for r in range(rows):
            if v2[r] and not (raw[r] == INF).any():
                want = torch.log_softmax(torch.where(usable[r], raw[r], -INF), 0)[t2[r]].item()
                assert math.isclose(rest[0].reshape(-1)[r].item(), want, rel_tol=1e-3, abs_tol=1e-3), \
                    f"row {r}: raw logprob"
        rest = rest[1:]  # the checks below are of processed logprobs
    for r in range(rows):
        if v2[r] and greedy[r] and len(rest) == 2 and not (raw[r] == INF).any():  # greedy: softmax(logits)
            want = torch.log_softmax(torch.where(usable[r], raw[r], -INF), 0)[t2[r]].item()
            assert math.isclose(rest[0].reshape(-1)[r].item(), want, rel_tol=1e-3, abs_tol=1e-3), f"row {r}: logprob"
        if not v2[r]:
            assert t2[r] == 0, "a degenerate row answers token 0"
            assert not usable[r].any(), f"row {r} had an unmasked token but valid is False"
            continue
        assert usable[r, t2[r]], f"row {r}: a masked token was chosen"
    # The kept set: no warper-removed token chosen, and the sorting reference on finite rows.
    warpers = clamp_warpers(kwargs, rows, v)
    for r in range(rows):
        # Rows the sorting reference can judge (judgeable): sampled, finite after scaling.
        if greedy[r] or not v2[r] or temps[r] < TINY_T:
            continue
        y = scaled_logits(x2[r:r + 1], torch.tensor([temps[r]]))[0]
        if not judgeable(y) or not torch.isfinite(y[usable[r]]).all():
            continue
        keep, margin = reference_keep(y, **warpers[r])
        if margin > 1e-6:
            assert keep[t2[r]], f"row {r}: token {t2[r].item()} is removed by the warpers {warpers[r]}"
            if len(rest) == 2:  # logprobs: the float64 log-softmax of the kept scaled logits
                want = torch.log_softmax(torch.where(keep, y.double(), -INF), 0)[t2[r]].item()
                assert math.isclose(rest[0].reshape(-1)[r].item(), want, rel_tol=1e-3, abs_tol=1e-3), \
                    f"row {r}: logprob {rest[0].reshape(-1)[r].item()} against {want}"


def check_processed(x, kwargs, tokens, valid):
    """With mask, bias or penalties: every chosen token is unmasked after processing, and a row is
    degenerate exactly when processing left nothing (judged where float32 rounding cannot decide)."""
    v = x.shape[-1]
    t2, v2 = tokens.reshape(-1), valid.reshape(-1)
    rows = t2.numel()
    for r in range(rows):
        y = processed_row(x, kwargs, r, rows)
        if not v2[r]:
            assert t2[r] == 0, "a degenerate row answers token 0"
        if y is None:
            continue
        usable = ~torch.isnan(y) & (y != -INF)
        if v2[r]:
            assert usable[t2[r]], f"row {r}: token {t2[r].item()} is masked after processing"
        else:
            assert not usable.any(), f"row {r} had an unmasked processed token but valid is False"


def call(fn, as_object, x, **kwargs):
    """fn(x, **kwargs), or with the parameters as one SamplingParams (README "Parameters"), its
    result then put in the keyword form's shape, which check() judges."""
    if not as_object:
        return fn(x, **kwargs)
    fields = {k: v for k, v in kwargs.items() if k in syncfree.params.KEYWORDS}
    result = fn(x, syncfree.SamplingParams(**fields), **{k: v for k, v in kwargs.items() if k not in fields})
    if not isinstance(result, syncfree.SampleOutput):
        return result
    parts = [result.tokens] + [part for part in result[1:] if part is not None]
    return parts[0] if len(parts) == 1 else tuple(parts)


def run(batch, examples, emulated):
    context = contextlib.nullcontext
    if emulated:
        import cuda_on_cpu
        cuda_on_cpu.load().configure(sm_count=132)
        context = cuda_on_cpu.emulating

    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=False, print_blob=False)
    @given(st.data())
    def fuzz(data):
        op, x, kwargs, valid = draw_case(data, emulated)
        as_object = op in ("sample", "warp") and data.draw(st.booleans(), label="as a SamplingParams")
        if emulated and x.dtype == torch.float64:
            x = x.float()
        shown = {k: (f"tensor{tuple(v.shape)} {v.dtype} {v.reshape(-1)[:8].tolist()}" if isinstance(v, torch.Tensor)
                     else v) for k, v in kwargs.items()}
        print(f"case: {op} x={x.dtype}{tuple(x.shape)} strides={x.stride()} {shown} "
              f"{'(SamplingParams)' if as_object else ''}", flush=True)
        fn = functools.partial(call, getattr(syncfree, op), as_object)
        state = kwargs["generator"].get_state() if "generator" in kwargs else None
        try:
            with context():
                result = fn(x, **kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            message = str(e).split("\n")[0]
            assert any(name + ":" in message for name in ARGUMENTS), f"the error names no argument: {message}"
            assert not valid, f"a valid call raised: {message}"
            if state is not None:
                assert torch.equal(kwargs["generator"].get_state(), state), "a failed call moved the generator"
            return
        check(op, x, kwargs, result)
        if "seed" in kwargs and op != "warp":  # repeat-determinism
            again = fn(x, **{k: (torch.full_like(v, -7) if k == "out" else v) for k, v in kwargs.items()})
            first = result[0] if isinstance(result, tuple) else result
            assert torch.equal(first, again[0] if isinstance(again, tuple) else again), "a seeded call did not repeat"
        if not emulated and op == "sample" and "seed" in kwargs and isinstance(result, tuple) and len(result) > 2:
            # The same bits, logprobs included, on one thread and on four (README "Random numbers").
            threads = torch.get_num_threads()
            try:
                for n in (1, 4):
                    torch.set_num_threads(n)
                    again = fn(x, **{k: (torch.full_like(v, -7) if k == "out" else v) for k, v in kwargs.items()})
                    for a, c in zip(result, again):
                        assert torch.equal(a, c) or torch.allclose(a, c, rtol=0, atol=0, equal_nan=True), \
                            f"{n} threads changed a result: {a} against {c}"
            finally:
                torch.set_num_threads(threads)
        if emulated and ("seed" in kwargs or op == "warp"):  # the emulated kernels equal the CPU path (same noise)
            def for_the_cpu(k, v):  # ids CUDA ignores are padding (-1) on the CPU
                if k == "out":
                    return torch.full_like(v, -7)
                if k in ("output_tokens", "prompt_tokens", "bias_tokens") and v.dtype == torch.int64:
                    return v.masked_fill((v < 0) | (v >= x.shape[-1]), -1)
                return v
            cpu = fn(x, **{k: for_the_cpu(k, v) for k, v in kwargs.items()})
            for a, c in zip(result if isinstance(result, tuple) else (result,), cpu if isinstance(cpu, tuple) else (cpu,)):
                if a.dtype == torch.float32 and op != "warp":
                    torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4, equal_nan=True)
                else:
                    assert torch.equal(a, c) or (a.dtype.is_floating_point and torch.allclose(a, c, equal_nan=True)), \
                        "emulated CUDA and CPU differ"

    fuzz()
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)


def run_choosers(batch, examples):
    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        def params(n):
            pick = lambda options: data.draw(st.lists(st.sampled_from(options), min_size=n, max_size=n))  # noqa: E731
            return dict(temperature=pick([0.0, 0.5, 1.0, 1e-46, 3.0]), top_k=pick([0, 1, 5, 10**6]),
                        top_p=pick([1.0, 0.9, 0.3]), typical_p=pick([1.0, 0.8]), min_p=pick([0.0, 0.1]),
                        do_sample=pick([True, False]), seeds=pick([0, 7, -1, 2**70]))
        n1, n2, v = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.sampled_from([1, 7, 300]))
        print(f"case: choosers n1={n1} n2={n2} V={v}", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = syncfree.HeterogeneousNextTokenChooser(**params(n1))
            b = syncfree.HeterogeneousNextTokenChooser(**params(n2))
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
        la, lb = torch.randn(n1, v, generator=g) * 4, torch.randn(n2, v, generator=g) * 4
        joined = syncfree.HeterogeneousNextTokenChooser.concatenate([a, b])
        ids, logprobs = joined(torch.cat([la, lb]))
        assert ids.shape == (n1 + n2,) and ((ids >= 0) & (ids < v)).all()
        assert torch.equal(ids, torch.cat([a(la)[0], b(lb)[0]])), "a request's tokens depend on its batch"
        keep = data.draw(st.lists(st.integers(-(n1 + n2), n1 + n2 - 1), min_size=1, max_size=4))
        ids = joined.filter(keep)(torch.cat([la, lb])[[k % (n1 + n2) for k in keep]])[0]
        assert ((ids >= 0) & (ids < v)).all()
        one = syncfree.NextTokenChooser(temperature=0.7, top_k=3, do_sample=True, seed=data.draw(st.integers(0, 9)))
        shape = data.draw(st.sampled_from([(v,), (1, v), (2, v), (1, 1, v)]))
        try:
            ids = one(torch.randn(shape, generator=g))[0]
        except ValueError as e:
            assert "logits:" in str(e) and shape not in ((v,), (1, v))
        else:
            assert shape in ((v,), (1, v)) and ids.shape == (1,) and 0 <= ids.item() < v
        bad = data.draw(st.sampled_from([[], [a, "x"], "filter:x", "filter:0.5", f"filter:{n1}"]))
        try:
            if isinstance(bad, str):
                a.filter(bad[7:] if bad[7:] == "x" else [float(bad[7:]) if "." in bad else int(bad[7:])])
            else:
                syncfree.HeterogeneousNextTokenChooser.concatenate(bad)
        except (ValueError, TypeError) as e:
            assert any(name in str(e) for name in ("indices:", "choosers:")), str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")

    fuzz()
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)


if __name__ == "__main__":
    batch_arg, examples_arg = int(sys.argv[1]), int(sys.argv[2])
    if "--choosers" in sys.argv:
        run_choosers(batch_arg, examples_arg)
    elif "--distributed" in sys.argv:
        import fuzz_distributed
        fuzz_distributed.run_distributed(batch_arg, examples_arg)
    elif "--simulated" in sys.argv:
        import fuzz_distributed
        fuzz_distributed.run_simulated(batch_arg, examples_arg)
    elif "--verify" in sys.argv:
        import fuzz_verify
        fuzz_verify.run_verify(batch_arg, examples_arg, "--emulated" in sys.argv)
    elif "--tree" in sys.argv:
        import fuzz_verify
        fuzz_verify.run_verify_tree(batch_arg, examples_arg, "--emulated" in sys.argv)
    else:
        run(batch_arg, examples_arg, "--emulated" in sys.argv)
