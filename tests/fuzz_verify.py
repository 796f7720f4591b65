"""The fuzz suite's speculative-decoding cases (README "Speculative decoding", "Draft trees"):
verify_draft and verify_tree on random targets, drafts, trees and parameters; run through
tests/fuzz_cases.py (--verify, --tree), as its other cases are.
"""
import contextlib

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import parity
import syncfree
from fuzz_cases import INF, NAN, TINY_TEMPERATURES, draw_row
from reference import is_greedy
from trees import pad, random_tree


def draw_verify_processing(data, g, b, n, v):
    """verify_draft's processing: penalties (numbers or per-row tensors with NaN), a history with
    padding, a bias, a mask per row or per position (some positions with nothing allowed)."""
    kwargs = {}
    for name, values in (("repetition_penalty", [1.0, 1.5, 0.7, NAN]), ("frequency_penalty", [0.0, 0.5, -1.0]),
                         ("presence_penalty", [0.0, 2.0])):
        if data.draw(st.booleans()):
            as_tensor = data.draw(st.booleans())
            kwargs[name] = torch.tensor(data.draw(st.lists(st.sampled_from(values), min_size=b, max_size=b))) \
                if as_tensor else data.draw(st.sampled_from([x for x in values if x == x]))
    if data.draw(st.booleans()):
        kwargs["output_tokens"] = torch.randint(-1, v, (b, data.draw(st.integers(0, 6))), generator=g)
    if data.draw(st.booleans()):
        k = data.draw(st.integers(1, 3))
        kwargs["bias_tokens"] = torch.randint(-1, v, (b, k), generator=g)
        kwargs["bias_values"] = torch.tensor(data.draw(st.lists(st.sampled_from([-INF, -2.0, 0.5, 30.0, INF]),
                                                                min_size=b * k, max_size=b * k))).view(b, k)
    mask = data.draw(st.sampled_from([None, "row", "position"]))
    if mask is not None:
        shape = (b, (v + 31) // 32) if mask == "row" else (b, n + 1, (v + 31) // 32)
        bits = torch.randint(-2**31, 2**31, shape, generator=g, dtype=torch.int64).to(torch.int32)
        if data.draw(st.booleans()):
            bits.view(-1)[0] = 0  # a position (or row) that may allow nothing
        kwargs["allowed_mask"] = bits
    return kwargs


def draw_draft_probs(data, g, b, laws, v):
    """None, or draft probabilities [b, laws, V]: a softmax, sharp or flat, some with NaN,
    negative or zero entries."""
    if not data.draw(st.booleans()):
        return None
    q = torch.softmax(torch.randn(b, laws, v, generator=g) * data.draw(st.sampled_from([0.1, 3.0])), -1)
    kind = data.draw(st.sampled_from(["plain", "nan", "negative", "zeros"]))
    if kind != "plain":
        q[torch.rand(b, laws, v, generator=g) < 0.3] = {"nan": NAN, "negative": -1.0, "zeros": 0.0}[kind]
    return q


def check_stop_token(logits, token, temperature, warpers):
    """The token a row stops with, at the position or node whose logits [V] it was drawn from:
    not masked, the argmax on a greedy row, else kept by the warpers."""
    raw = logits.double()
    assert not torch.isnan(raw[token]) and raw[token] != -INF, f"a masked token {token} was emitted"
    if is_greedy(temperature):  # greedy: the argmax of the raw logits
        assert raw.nan_to_num(nan=-INF)[token] == raw.nan_to_num(nan=-INF).max()
        return
    warped = syncfree.warp(logits[None], temperature, **warpers)[0][0]
    if (warped > -INF).any():  # (else every logit / T overflowed: the raw argmax)
        assert warped[token] > -INF, f"token {token} was removed by the warpers"


def run_verify(batch, examples, emulated):
    """syncfree.verify_draft: random targets (every row kind of draw_row), drafts, draft
    probabilities with NaN, negative and zero entries, warpers and seeds. Invariants: errors name
    their argument; accepted tokens are the drafts; the stop token is in [0, V), kept by the
    warped target at its position (0 with valid False for a degenerate one), the argmax on
    greedy rows; -1 after it; a seeded call repeats itself; with --emulated, the CPU's result."""
    import cuda_on_cpu
    if emulated:
        cuda_on_cpu.load()

    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        b, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
        v = data.draw(st.sampled_from([1, 2, 17, 40, 333, 4099, 20000]))
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
        target = torch.stack([torch.stack([draw_row(data, v) for _ in range(n + 1)]) for _ in range(b)]).to(dtype)
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
        ids = torch.randint(0, v, (b, n), generator=g)
        take_argmax = data.draw(st.booleans())
        if take_argmax:  # drafts a greedy target would accept
            ids = target[:, :n].float().nan_to_num(nan=-INF).argmax(-1)
        q = draw_draft_probs(data, g, b, n, v)
        kwargs = {}
        t = data.draw(st.sampled_from([0.0, 1e-39, 0.7, 1.0, 50.0, "tensor"] + TINY_TEMPERATURES))
        kwargs["temperature"] = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.3, 1e-39, NAN, INF]
                                                                                 + TINY_TEMPERATURES),
                                                                 min_size=b, max_size=b))) if t == "tensor" else t
        for name, values in (("top_k", [0, 1, 5, 10**6]), ("top_p", [1.0, 0.8]), ("min_p", [0.0, 0.1]),
                             ("typical_p", [1.0, 0.7])):
            if data.draw(st.booleans()):
                kwargs[name] = data.draw(st.sampled_from(values))
        rng = data.draw(st.sampled_from(["int", "tensor"]))
        if rng == "int":
            kwargs.update(seed=data.draw(st.integers(0, 2**40)), offset=data.draw(st.integers(0, 99)))
        else:
            kwargs.update(seed=torch.arange(b) * 7 + data.draw(st.integers(0, 99)), offset=torch.arange(b))
        bad = data.draw(st.sampled_from([None] * 6 + ["draft_ids", "top_p", "draft_probs"]))
        outside = False
        if bad == "draft_ids":
            ids = ids + v
            if emulated:  # CUDA cannot check them without a sync: they are rejected (README "Speculative decoding")
                bad, outside = None, True
        elif bad == "top_p":
            kwargs["top_p"] = 0.0
        elif bad == "draft_probs":
            q = torch.rand(b, n, v + 1, generator=g)
        processing = {}
        if bad is None and not outside and data.draw(st.booleans(), label="processing"):
            processing = draw_verify_processing(data, g, b, n, v)
            kwargs.update(processing)
        print(f"case: verify {dtype}{(b, n, v)} q={q is not None} argmax={take_argmax} {kwargs} bad={bad}", flush=True)
        def call(*args, **kw):
            with cuda_on_cpu.emulating() if emulated else contextlib.nullcontext():
                return syncfree.verify_draft(*args, **kw)

        try:
            tokens, accepted, logprobs, valid = call(target, ids, q, return_logprobs=True, return_valid=True, **kwargs)
        except (ValueError, TypeError) as e:
            assert bad is not None and f"{bad}:" in str(e), str(e)
            return
        assert bad is None, f"{bad} was accepted"
        again = call(target, ids, q, return_logprobs=True, return_valid=True, **kwargs)
        assert torch.equal(again[0], tokens) and torch.equal(again[1], accepted), "a seeded call did not repeat"
        if emulated and not outside:
            want = syncfree.verify_draft(target, ids, q, return_logprobs=True, return_valid=True, **kwargs)
            for w, got in zip(want, (tokens, accepted, logprobs, valid)):
                if w.dtype == torch.float32:
                    torch.testing.assert_close(got, w, atol=1e-4, rtol=1e-4)
                else:
                    assert torch.equal(got, w), f"emulated CUDA {got.tolist()} against the CPU's {w.tolist()}"
        temps = kwargs["temperature"]
        temps = temps if isinstance(temps, torch.Tensor) else torch.full((b,), float(temps))
        warpers = {k: kwargs[k] for k in ("top_k", "top_p", "min_p", "typical_p") if k in kwargs}
        if processing:  # the reference: the processing written out, then verify_draft without it
            params = syncfree.SamplingParams(**{k: kwargs[k] for k in syncfree.params.KEYWORDS if k in kwargs})
            target = parity.processed_copy(target, ids, params)
            want = syncfree.verify_draft(target, ids, q, parity.warpers_of(params), return_logprobs=True,
                                         return_valid=True, **{k: v for k, v in kwargs.items() if k in ("seed", "offset")})
            for w, got in zip(want, (tokens, accepted, logprobs, valid)):
                if w.dtype == torch.float32:
                    torch.testing.assert_close(got, w, atol=1e-4, rtol=1e-4)
                else:
                    assert torch.equal(got, w), f"processing in the passes {got.tolist()}, written out {w.tolist()}"
        for row in range(b):
            k = accepted[row].item()
            assert 0 <= k <= n and torch.equal(tokens[row, :k], ids[row, :k]), (tokens[row], ids[row])
            assert ((tokens[row, :k] >= 0) & (tokens[row, :k] < v)).all(), f"an id outside [0, {v}) was accepted"
            assert (tokens[row, k + 1:] == -1).all()
            token = tokens[row, k].item()
            assert 0 <= token < v, f"id {token} outside [0, {v})"
            if not valid[row]:
                assert token == 0
                continue
            check_stop_token(target[row, k], token, temps[row].item(), warpers)

    fuzz()
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)


def draw_tree(data, g, b, nodes, bad):
    """Parents [b, N]: each row a random tree padded to N (a chain, a star, or random), and with
    `bad` one row with a parent that is not an earlier node."""
    rows = []
    for _ in range(b):
        size = data.draw(st.integers(1, nodes))
        shape = data.draw(st.sampled_from(["chain", "star", "random"]))
        tree = list(range(-1, size - 1)) if shape == "chain" else [-1] + [0] * (size - 1) if shape == "star" \
            else random_tree(size, g)
        rows.append(pad(tree, nodes))
    parents = torch.tensor(rows)
    if bad and nodes > 1:
        i = data.draw(st.integers(1, nodes - 1))
        parents[0, i] = data.draw(st.sampled_from([i, i + 1, nodes + 5, -2, 2**32]))
    return parents


def run_verify_tree(batch, examples, emulated):
    """syncfree.verify_tree: random trees (padded, chains, stars), targets of every row kind of
    draw_row, proposals or draft probabilities with NaN, negative and zero entries, warpers,
    processing and seeds. Invariants: errors name their argument (on CUDA, bad parents leave
    their nodes unreached and bad ids are rejected: the CPU's result with those fixed); the path
    runs from the root through parent links and its tokens are the emitted ones; the stop token
    is in [0, V), unmasked at its node and kept by the warpers (0 with valid False for a
    degenerate node), the argmax on greedy rows; -1 after it; a seeded call repeats itself; with
    --emulated, the CPU's result bit for bit."""
    import cuda_on_cpu
    if emulated:
        cuda_on_cpu.load()

    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        b, nodes = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9))
        v = data.draw(st.sampled_from([1, 2, 17, 40, 333, 4099]))
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
        target = torch.stack([torch.stack([draw_row(data, v) for _ in range(nodes)]) for _ in range(b)]).to(dtype)
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
        bad = data.draw(st.sampled_from([None] * 6 + ["parents", "draft_ids", "draft_probs", "top_k"]))
        parents = draw_tree(data, g, b, nodes, bad == "parents")
        ids = torch.randint(0, v, (b, nodes), generator=g)
        if data.draw(st.booleans()):  # each node carries its parent's argmax: deep paths
            best = target.float().nan_to_num(nan=-INF).argmax(-1)
            ids = torch.where(parents >= 0, best.gather(1, parents.clamp(0, nodes - 1)), ids)
        ids[:, 0] = -1  # the root's id is never read
        if bad == "draft_ids":
            ids[parents >= 0] += v
            bad = bad if (parents >= 0).any() else None  # (a lone root: no id is read)
        if bad == "parents" and nodes == 1:
            bad = None
        q = draw_draft_probs(data, g, b, nodes, v)
        if bad == "draft_probs":
            q = torch.rand(b, nodes + 1, v, generator=g)
        kwargs = {}
        t = data.draw(st.sampled_from([0.0, 0.7, 1.0, 50.0, "tensor"] + TINY_TEMPERATURES))
        kwargs["temperature"] = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.3, NAN, INF]),
                                                                 min_size=b, max_size=b))) if t == "tensor" else t
        for name, values in (("top_k", [0, 1, 5]), ("top_p", [1.0, 0.8]), ("min_p", [0.0, 0.1]),
                             ("typical_p", [1.0, 0.7])):
            if data.draw(st.booleans()):
                kwargs[name] = data.draw(st.sampled_from(values))
        if bad == "top_k":
            kwargs["top_k"] = -3
        if data.draw(st.booleans()):
            kwargs.update(seed=data.draw(st.integers(0, 2**40)), offset=data.draw(st.integers(0, 99)))
        else:
            kwargs.update(seed=torch.arange(b) * 7 + data.draw(st.integers(0, 99)), offset=torch.arange(b))
        processing = {}
        if bad is None and data.draw(st.booleans(), label="processing"):
            processing = draw_verify_processing(data, g, b, nodes - 1, v)
            kwargs.update(processing)
        unchecked = emulated and bad in ("parents", "draft_ids")  # CUDA's rules, not errors
        print(f"case: tree {dtype}{(b, nodes, v)} parents={parents.tolist()} q={q is not None} {kwargs} "
              f"bad={bad}", flush=True)

        def call(*args, **kw):
            with cuda_on_cpu.emulating() if emulated else contextlib.nullcontext():
                return syncfree.verify_tree(*args, return_logprobs=True, return_valid=True, **kw)

        try:
            tokens, path, accepted, logprobs, valid = call(target, ids, parents, q, **kwargs)
        except (ValueError, TypeError) as e:
            assert bad is not None and not unchecked and f"{bad}:" in str(e), str(e)
            return
        assert bad is None or unchecked, f"{bad} was accepted"
        again = call(target, ids, parents, q, **kwargs)
        assert all(torch.equal(x, y) for x, y in zip(again[:3], (tokens, path, accepted))), "a seeded call changed"
        fixed_parents, fixed_ids, wide = parents, ids, target
        if unchecked:  # the reference: unreachable nodes as padding, bad ids as a -inf extra token
            index = torch.arange(nodes)
            fixed_parents = parents.where((parents >= 0) & (parents < index), -1)
            fixed_parents[:, 0] = -1
            fixed_ids = ids.where((ids >= 0) & (ids < v), v).where(fixed_parents >= 0, 0)
            wide = torch.cat([target, torch.full((b, nodes, 1), -INF, dtype=dtype)], -1)
            q = None if q is None else torch.cat([q, torch.zeros(b, nodes, 1)], -1)
        if emulated:
            want = syncfree.verify_tree(wide, fixed_ids, fixed_parents, q, return_logprobs=True, return_valid=True,
                                        **kwargs)
            for w, got in zip(want, (tokens, path, accepted, logprobs, valid)):
                if w.dtype == torch.float32:
                    torch.testing.assert_close(got, w, atol=1e-4, rtol=1e-4)
                else:
                    assert torch.equal(got, w), f"emulated CUDA {got.tolist()} against the CPU's {w.tolist()}"
        temps = kwargs["temperature"]
        temps = temps if isinstance(temps, torch.Tensor) else torch.full((b,), float(temps))
        warpers = {k: kwargs[k] for k in ("top_k", "top_p", "min_p", "typical_p") if k in kwargs}
        for row in range(b):
            k = accepted[row].item()
            assert 0 <= k < nodes and path[row, 0] == 0 and (path[row, k + 1:] == -1).all()
            for j in range(1, k + 1):
                node = path[row, j].item()
                assert fixed_parents[row, node] == path[row, j - 1], f"path {path[row].tolist()}: not a parent link"
                assert tokens[row, j - 1] == ids[row, node] and 0 <= ids[row, node] < v, "an accepted id"
            assert (tokens[row, k + 1:] == -1).all()
            token = tokens[row, k].item()
            assert 0 <= token < v, f"id {token} outside [0, {v})"
            if not valid[row]:
                assert token == 0
                continue
            stop = path[row, k].item()
            if not processing:  # (the mask and bias move the kept set: parity and the law tests hold these)
                check_stop_token(target[row, stop], token, temps[row].item(), warpers)

    fuzz()
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)
