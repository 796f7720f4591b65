"""The CUDA kernels and launchers, run on the CPU by the execution layer (tests/cuda_on_cpu),
against the CPU path: tokens, valid and kept sets bit for bit, logprobs to float rounding.

`pytest -m emulated` runs these alone. SYNCFREE_EMULATION_QUICK=1 keeps one case of each
kind (the sanitizer runs and the mutation self-test use it); SYNCFREE_EMULATION_VARIANT and
SYNCFREE_EMULATION_CSRC pick the build (see tests/cuda_on_cpu/README.md).
"""
import os
import zlib

import pytest
import torch

import cuda_on_cpu
import syncfree
from conftest import warper_edge_rows
from ranks import simulate

pytestmark = pytest.mark.emulated

QUICK = os.environ.get("SYNCFREE_EMULATION_QUICK") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SM_COUNT = 132  # the plan of an H100 SXM: large rows at small batch are split over many blocks
# (1, 1) .. (1, 262144); (1, 16400), (2, 131072), (8, 32000) and the 262144 rows are split by
# the 132-SM plan; 4099 and 17 are not multiples of the 16-token group.
SHAPES = [(1, 1), (4, 17), (3, 1000), (5, 4099), (1, 16400), (8, 32000), (2, 131072), (1, 262144)]
QUICK_SHAPES = [(4, 17), (1, 16400)]


def cases(full, quick):
    return quick if QUICK else full


def shape_id(shape):
    return f"{shape[0]}x{shape[1]}"


@pytest.fixture(scope="module")
def layer():
    module = cuda_on_cpu.load(csrc=os.environ.get("SYNCFREE_EMULATION_CSRC"))
    module.configure(sm_count=SM_COUNT)
    return module


@pytest.fixture(autouse=True)
def schedule(request, layer):
    """A fixed interleaving per test (block order, thread switches, garbage), so failures repeat."""
    layer.begin_schedule(zlib.crc32(request.node.nodeid.encode()))
    layer.forget_generators()
    layer.clear_launches()
    yield


def make(b, v, dtype, seed=0, pad=0):
    """[b, v] logits; with pad, rows of a wider buffer whose padding holds huge logits, so a read
    past a row's end changes the token."""
    g = torch.Generator().manual_seed(seed)
    wide = (torch.randn(b, v + pad, generator=g) * 3).to(dtype)
    wide[:, v:] = 1e4
    return wide[:, :v] if pad else wide


def emulated(fn, *args, **kwargs):
    with cuda_on_cpu.emulating():
        return fn(*args, **kwargs)


def tickets_are_zero(layer):
    """The eager ticket counters (the only caching-allocator blocks alive between calls) are back to 0."""
    return all(block.count(0) == len(block) for block in layer.live_allocations())


def split_blocks(layer):
    return max((l["grid"][0] for l in layer.launches() if "syncfree_sample_kernel" in l["kernel"]), default=0)


def assert_same(want, got, what=""):
    """tokens and valid bit for bit, logprobs to float rounding."""
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for w, g in zip(want, got):
        if w.dtype == torch.float32:
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=what)
        else:
            assert torch.equal(w, g), f"{what}\nCPU      {w.tolist()[:16]}\nemulated {g.tolist()[:16]}"


# ---------------------------------------------------------------------------
# The launch plan


def test_the_plan_splits_large_rows_at_small_batch(layer):
    for rows, vocab in [(1, 262144), (1, 128256), (2, 131072), (8, 32000), (64, 4099), (1, 1)]:
        plan = layer.plan_sample(rows, vocab, SM_COUNT)
        assert plan["blocks"] == rows * plan["splits"] and plan["chunk"] % 16 == 0
        assert plan["splits"] * plan["chunk"] >= vocab > (plan["splits"] - 1) * plan["chunk"]
        assert plan["splits"] <= 512 and (plan["splits"] > 1) == (plan["partial_rows"] > 0)
    assert layer.plan_sample(1, 262144, SM_COUNT)["splits"] == 32
    assert layer.plan_sample(64, 4099, SM_COUNT)["splits"] == 1


# ---------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", cases(SHAPES, QUICK_SHAPES), ids=shape_id)
def test_tokens_logprobs_and_valid_match_the_cpu(layer, shape, dtype):
    b, v = shape
    x = make(b, v, dtype)
    x.view(-1)[::97] = -float("inf")
    seeds = torch.randint(0, 2**62, (b,), generator=torch.Generator().manual_seed(1))
    temps = torch.rand(b, generator=torch.Generator().manual_seed(2)) * 2
    temps[::3] = 0  # greedy rows
    for kwargs in (dict(seed=seeds, offset=torch.arange(b)), dict(seed=123, offset=8)):
        want = syncfree.sample(x, 0.9, return_logprobs=True, return_valid=True, **kwargs)
        out = torch.full((b,), -7, dtype=torch.int64)  # a row never written stays -7
        got = emulated(syncfree.sample, x, 0.9, return_logprobs=True, return_valid=True, out=out, **kwargs)
        assert_same(want, got, f"{shape} {dtype} {kwargs}")
        assert tickets_are_zero(layer)
        assert_same(syncfree.sample(x, temps, **kwargs), emulated(syncfree.sample, x, temps, **kwargs))
        assert tickets_are_zero(layer)
    plan = layer.plan_sample(b, v, SM_COUNT)
    assert split_blocks(layer) == plan["blocks"]


def test_repeated_calls_under_other_schedules_agree(layer):
    x = make(2, 131072, torch.bfloat16)
    first = emulated(syncfree.sample, x, 0.8, seed=5, return_logprobs=True)
    for schedule in range(3):
        layer.begin_schedule(1000 + schedule)
        again = emulated(syncfree.sample, x, 0.8, seed=5, return_logprobs=True)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert tickets_are_zero(layer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_strided_and_padded_rows(layer, dtype):
    wide = make(12, 5003, dtype)
    views = [lambda t: t[:, 1:4001], lambda t: t[::3, 2:], lambda t: t[0].expand(12, 5003),
             lambda t: t.view(-1)[1:1 + 11 * 5003].view(11, 5003)]  # base off 16-byte alignment
    for view in views:
        assert_same(syncfree.sample(view(wide), seed=4), emulated(syncfree.sample, view(wide), seed=4))
    aligned = make(12, 5008, dtype)
    step = 16 // aligned.element_size()  # an offset view still 16-byte aligned
    assert_same(syncfree.sample(aligned[:, step:], seed=4), emulated(syncfree.sample, aligned[:, step:], seed=4))
    # Rows inside a wider buffer whose padding holds huge logits: 16-byte aligned rows whose
    # length is no multiple of the group, so the last group must be read element by element.
    for b, v in cases([(3, 1000), (1, 16392), (2, 131064)], [(3, 1000)]):
        pad = 16 - v % 16 if v % 16 else 16
        x = make(b, v, dtype, pad=pad)
        assert_same(syncfree.sample(x, seed=3, return_valid=True), emulated(syncfree.sample, x, seed=3, return_valid=True))


@pytest.mark.parametrize("vocab", cases([300, 128256], [128256]))
def test_degenerate_and_infinite_rows(layer, vocab):
    x = torch.randn(6, vocab)
    x[0] = -float("inf")
    x[1] = float("nan")
    x[2, [vocab - 10, vocab - 200]] = float("inf")  # late chunks
    x[3] = -float("inf")
    x[3, vocab - 3] = 0.5  # one finite token among -inf
    x[4, : vocab // 2] = float("nan")
    for temperature in (1.0, 0.0):
        want = syncfree.sample(x, temperature, seed=1, return_logprobs=True, return_valid=True)
        assert_same(want, emulated(syncfree.sample, x, temperature, seed=1, return_logprobs=True, return_valid=True))
        assert tickets_are_zero(layer)
    # Every logit / T overflowing to -inf: the raw argmax, found by the finishing warp (split rows too).
    negative = -torch.rand(3, vocab) * 4 - 1
    negative[1, : vocab // 2] = -float("inf")
    for temperature in (1e-39, torch.tensor([1e-39, 0.7, 1e-40])):
        want = syncfree.sample(negative, temperature, seed=3, return_logprobs=True, return_valid=True)
        assert_same(want, emulated(syncfree.sample, negative, temperature, seed=3, return_logprobs=True,
                                   return_valid=True))
        assert want[2].all()
    probs = x.exp()
    probs[5, ::2] = -1.0  # negative weights count as 0
    want = syncfree.sample_probs(probs, seed=2, return_valid=True)
    assert_same(want, emulated(syncfree.sample_probs, probs, seed=2, return_valid=True))


@pytest.mark.parametrize("shape", cases([(4, 17), (3, 1000), (1, 16400), (2, 131072)], [(1, 16400)]), ids=shape_id)
def test_sample_probs(layer, shape):
    w = make(*shape, torch.float32).exp()
    w.view(-1)[::5] = 0
    for kwargs in (dict(seed=9), dict(seed=torch.arange(shape[0]) * 7, offset=torch.arange(shape[0]))):
        assert_same(syncfree.sample_probs(w, return_valid=True, **kwargs),
                    emulated(syncfree.sample_probs, w, return_valid=True, **kwargs))
        assert tickets_are_zero(layer)


# ---------------------------------------------------------------------------
# The generator path, eager and captured


def test_the_generator_path_is_the_int_seed_path_at_the_generator_offset(layer):
    for b, v in cases([(3, 1000), (1, 131072)], [(1, 16400)]):
        x = make(b, v, torch.bfloat16)
        step = (v + 3) // 4 * 4  # positions a call draws (See Note [syncfree RNG counter layout])
        g = torch.Generator().manual_seed(77)
        assert layer.generator_state(g) == (77, 0)
        for call in range(2):
            got = emulated(syncfree.sample, x, 0.7, generator=g, return_logprobs=True)
            assert_same(syncfree.sample(x, 0.7, seed=77, offset=call * step, return_logprobs=True), got)
        assert layer.generator_state(g) == (77, 2 * step)
        g.manual_seed(5)  # a fresh stream
        assert_same(syncfree.sample(x, seed=5), emulated(syncfree.sample, x, generator=g))
        torch.manual_seed(11)  # the default generator
        assert_same(syncfree.sample(x, seed=11), emulated(syncfree.sample, x))
        assert layer.generator_state(None) == (11, step)
        assert tickets_are_zero(layer)


@pytest.mark.parametrize("shape", cases([(3, 1000), (1, 131072)], [(1, 16400)]), ids=shape_id)
def test_captured_calls_replay_with_fresh_noise(layer, shape):
    """As PyTorch's graph test: eager steps and replays of a captured step give the same tokens and
    leave the generator at the same offset; split rows take their tickets from the workspace."""
    x = make(*shape, torch.float32)
    step = (shape[1] + 3) // 4 * 4
    g = torch.Generator().manual_seed(3)
    emulated(syncfree.sample, x, 0.8, generator=g)  # warm up: offset moves one step
    out = torch.full((shape[0],), -7, dtype=torch.int64)
    logprobs_out = []
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):
        logprobs_out.append(emulated(syncfree.sample, x, 0.8, generator=g, out=out, return_logprobs=True)[1])
    assert out.eq(-7).all(), "a captured launch ran during the capture"
    assert all(l["captured"] for l in layer.launches()[-1:])
    assert layer.generator_state(g) == (3, step)  # capture draws nothing
    for replay in range(3):
        graph.replay()
        want = syncfree.sample(x, 0.8, seed=3, offset=(1 + replay) * step, return_logprobs=True)
        assert_same(want, (out, logprobs_out[0]))
        assert layer.generator_state(g) == (3, (2 + replay) * step)
    assert tickets_are_zero(layer)
    # Per-row seeds and offsets read at replay time.
    seeds, offsets = torch.arange(shape[0]) * 3, torch.zeros(shape[0], dtype=torch.int64)
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):
        emulated(syncfree.sample, x, 0.8, top_k=50, top_p=0.9, seed=seeds, offset=offsets, out=out)
    for replay in range(2):
        offsets.fill_(replay * 5)
        graph.replay()
        assert_same(syncfree.sample(x, 0.8, top_k=50, top_p=0.9, seed=seeds, offset=offsets), out)


# ---------------------------------------------------------------------------
# Warpers

WARPER_CONFIGS = [dict(top_k=1), dict(top_k=50), dict(top_p=0.9), dict(min_p=0.05), dict(typical_p=0.9),
                  dict(top_k=50, top_p=0.9, min_p=0.05), dict(top_k=1000, top_p=0.95, min_p=0.01, typical_p=0.9)]
WARPER_SHAPES = [(1, 128256), (8, 32000), (33, 4099), (4, 17)]


@pytest.mark.parametrize("config", cases(WARPER_CONFIGS, WARPER_CONFIGS[-1:]),
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", cases(DTYPES, [torch.bfloat16]), ids=str)
@pytest.mark.parametrize("shape", cases(WARPER_SHAPES, [(4, 17), (1, 128256)]), ids=shape_id)
def test_warpers_keep_the_same_sets(layer, shape, dtype, config):
    x = make(*shape, dtype)
    seeds = torch.arange(shape[0]) * 5
    temps = torch.rand(shape[0], generator=torch.Generator().manual_seed(3)) + 0.4
    want = syncfree.sample(x, temps, seed=seeds, return_logprobs=True, **config)
    assert_same(want, emulated(syncfree.sample, x, temps, seed=seeds, return_logprobs=True, **config))
    want_w, want_lp = syncfree.warp(x, temps, **config)
    got_w, got_lp = emulated(syncfree.warp, x, temps, **config)
    assert torch.equal(want_w, got_w), "kept sets differ"
    torch.testing.assert_close(got_lp, want_lp, atol=1e-4, rtol=1e-4)
    assert tickets_are_zero(layer)


def test_per_row_warpers_with_clamped_values(layer):
    b = cases(48, 8)
    x = make(b, 5000, torch.bfloat16)
    g = torch.Generator().manual_seed(4)
    config = dict(top_k=torch.randint(-5, 6000, (b,), generator=g), top_p=torch.rand(b, generator=g) * 1.4 - 0.2,
                  min_p=torch.rand(b, generator=g) * 0.3 - 0.05, typical_p=torch.rand(b, generator=g) * 1.4 - 0.1)
    config["top_p"][::5] = float("nan")
    temps = torch.rand(b, generator=g) * 1.5
    temps[::7] = 0
    seeds = torch.arange(b)
    assert_same(syncfree.sample(x, temps, seed=seeds, return_logprobs=True, return_valid=True, **config),
                emulated(syncfree.sample, x, temps, seed=seeds, return_logprobs=True, return_valid=True, **config))
    assert torch.equal(syncfree.warp(x, temps, **config)[0], emulated(syncfree.warp, x, temps, **config)[0])


def test_warper_edge_rows(layer):
    """Masked tokens, +inf rows, all-masked and constant rows, greedy rows (warp still warps), top_p and
    typical_p 0, top_k above the unmasked count, an expanded (stride 0) input."""
    x, temps, config = warper_edge_rows()
    b, v = x.shape
    assert torch.equal(syncfree.warp(x, temps, **config)[0], emulated(syncfree.warp, x, temps, **config)[0])
    assert_same(syncfree.sample(x, temps, seed=torch.arange(b), return_valid=True, **config),
                emulated(syncfree.sample, x, temps, seed=torch.arange(b), return_valid=True, **config))
    expanded = make(1, v, torch.bfloat16)[0].expand(8, v)
    assert torch.equal(syncfree.warp(expanded, 0.7, top_k=40, top_p=0.9)[0],
                       emulated(syncfree.warp, expanded, 0.7, top_k=40, top_p=0.9)[0])
    ties = torch.zeros(2, 600)  # ties at every threshold
    ties[:, ::3] = 1.0
    for config in (dict(top_k=5), dict(top_p=0.5), dict(typical_p=0.3), dict(min_p=0.5)):
        assert torch.equal(syncfree.warp(ties, **config)[0], emulated(syncfree.warp, ties, **config)[0])


# ---------------------------------------------------------------------------
# syncfree.distributed's shard kernels


def shard_cases():
    """(name, logits, shard bounds, kwargs) for syncfree.distributed's steps."""
    x = make(3, 4096, torch.bfloat16)
    x[0, 7] = float("inf")
    negative = -torch.rand(2, 1000, generator=torch.Generator().manual_seed(1)) * 4 - 1
    per_row = dict(temperature=torch.tensor([0.9, 0.0, 1.4]), seed=torch.tensor([5, 6, 7]),
                   top_k=torch.tensor([40, 3, 0]), top_p=torch.tensor([0.9, 1.0, 0.6]),
                   min_p=torch.tensor([0.0, 0.2, 0.05]), typical_p=torch.tensor([0.95, 1.0, 0.5]))
    # Shards narrower than a group, and a group split over three shards.
    bounds = [(0, 1000), (1000, 1001), (1001, 1010), (1010, 4096)]
    out = [("race", x, bounds, dict(temperature=0.9, seed=torch.arange(3) + 11)),
           # Every shard scaled to -inf: the raw argmax (Note [Logits past the temperature's range]).
           ("overflowing temperature", negative, [(0, 500), (500, 1000)], dict(temperature=1e-39, seed=2)),
           ("per-row warpers", x, bounds, per_row),
           ("generator", x, [(0, 2000), (2000, 4096)], dict(temperature=0.8, top_p=0.9, generator_seed=4))]
    if not QUICK:  # one row split over blocks by the 132-SM plan, on each shard
        wide = make(1, 131072, torch.float32)
        out.append(("wide row", wide, [(0, 70001), (70001, 131072)], dict(seed=3, top_k=50, top_p=0.9, min_p=0.01)))
    return out


def single_device(logits, kwargs):
    single = dict(kwargs)
    if "generator_seed" in single:
        single["generator"] = torch.Generator().manual_seed(single.pop("generator_seed"))
    return syncfree.sample(logits, return_logprobs=True, **single)


@pytest.mark.parametrize("case", shard_cases(), ids=[c[0] for c in shard_cases()])
def test_shard_kernels(layer, case):
    """syncfree.distributed's steps on the emulated kernels (the race on shards, the local passes,
    the per-row merges) over simulated ranks: the tokens of emulated single-device sampling, and,
    but for the generator's draw, the CPU path's shard steps."""
    name, logits, bounds, kwargs = case
    with cuda_on_cpu.emulating():
        want = single_device(logits, kwargs)
        got = simulate(logits, bounds, **kwargs)
    for rank in got:
        assert_same(want, rank, name)
    if "generator_seed" not in kwargs:
        for rank in simulate(logits, bounds, **kwargs):
            assert_same(want, rank, name)
    assert tickets_are_zero(layer)
