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
import parity
import syncfree
from cuda_on_cpu.napkin import positions_reads, select_napkin
from parity import assert_same, make
from ranks import one_device, simulate

pytestmark = pytest.mark.emulated

QUICK = os.environ.get("SYNCFREE_EMULATION_QUICK") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SM_COUNT = 132  # the plan of an H100 SXM: large rows at small batch are split over many blocks
# (1, 1) .. (1, 262144); (1, 16400), (2, 131072), (8, 32000) and the 262144 rows are split by
# the 132-SM plan; 4099 and 17 are not multiples of the 16-token group.
SHAPES = [(1, 1), (4, 17), (3, 1000), (5, 4099), (1, 16400), (8, 32000), (2, 131072), (1, 262144)]
QUICK_SHAPES = [(4, 17), (1, 16400), (2, 16400)]  # (2, 16400): split rows at B > 1, for the sanitizer run


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


def emulated(fn, *args, **kwargs):
    with cuda_on_cpu.emulating():
        return fn(*args, **kwargs)


def tickets_are_zero(layer):
    """The eager ticket counters (the only caching-allocator blocks alive between calls) are back to 0."""
    return all(block.count(0) == len(block) for block in layer.live_allocations())


def split_blocks(layer):
    return max((l["grid"][0] for l in layer.launches() if "syncfree_sample_kernel" in l["kernel"]), default=0)


@pytest.fixture
def target(layer):
    """The emulated kernels as a parity target; after every call the eager ticket counters must be 0."""
    def after():
        assert tickets_are_zero(layer), "an eager ticket counter was left non-zero"
    return parity.Target("emulated", after)


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
def test_tokens_logprobs_and_valid_match_the_cpu(layer, target, shape, dtype):
    layer.clear_launches()
    parity.check_tokens(target, shape, dtype)
    assert split_blocks(layer) == layer.plan_sample(*shape, SM_COUNT)["blocks"]


def test_repeated_calls_under_other_schedules_agree(layer):
    x = make(2, 131072, torch.bfloat16)
    first = emulated(syncfree.sample, x, 0.8, seed=5, return_logprobs=True)
    for schedule in range(3):
        layer.begin_schedule(1000 + schedule)
        again = emulated(syncfree.sample, x, 0.8, seed=5, return_logprobs=True)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert tickets_are_zero(layer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_strided_and_padded_rows(target, dtype):
    parity.check_views(target, dtype, cases([(3, 1000), (1, 16392), (2, 131064)], [(3, 1000)]))


@pytest.mark.parametrize("vocab", cases([300, 128256], [128256]))
def test_degenerate_and_infinite_rows(target, vocab):
    parity.check_degenerate_rows(target, vocab)


def test_the_rules_at_the_limits(target):
    parity.check_limits(target)


@pytest.mark.parametrize("shape", cases([(4, 17), (3, 1000), (1, 16400), (2, 131072)], [(1, 16400)]), ids=shape_id)
def test_sample_probs(target, shape):
    parity.check_sample_probs(target, shape)


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

WARPER_SHAPES = [(1, 128256), (8, 32000), (33, 4099), (4, 17)]


def warper_cases():
    """(shape, dtype, config): every shape with every configuration, in one dtype each in turn, so
    that every pair of shape, dtype and configuration meets in the quick tier; the rest of the
    product is the slow tier (README "Tests")."""
    def case(shape, dtype, config, slow=False):
        return pytest.param(shape, dtype, config, id=f"{shape_id(shape)}-{dtype}-{parity.config_id(config)}",
                            marks=pytest.mark.slow if slow else ())
    if QUICK:
        return [case(shape, torch.bfloat16, parity.WARPER_CONFIGS[-1]) for shape in [(4, 17), (1, 128256)]]
    return [case(shape, dtype, config, slow=k != (i + j) % len(DTYPES))
            for i, shape in enumerate(WARPER_SHAPES) for j, config in enumerate(parity.WARPER_CONFIGS)
            for k, dtype in enumerate(DTYPES)]


@pytest.mark.parametrize("shape, dtype, config", warper_cases())
def test_warpers_keep_the_same_sets(target, shape, dtype, config):
    parity.check_warpers(target, shape, dtype, config)


def test_per_row_warpers_with_clamped_values(target):
    parity.check_per_row_warpers(target, cases(48, 8))


def candidate_config_id(config):
    if any(isinstance(v, list) for v in config.values()):
        return "per_row"
    return "-".join(f"{k}{v}" for k, v in config.items())


# Quick runs (the sanitizers, the mutants) keep top-p alone (the mass pass, rows that fit) and the
# per-row configuration (both paths; ThreadSanitizer runs it alone).
@pytest.mark.parametrize("config", cases(parity.CANDIDATE_CONFIGS, [parity.CANDIDATE_CONFIGS[1],
                                                                    parity.CANDIDATE_CONFIGS[-1]]),
                         ids=candidate_config_id)
def test_warper_candidates_fitting_and_overflowing(target, config):
    x, temps = parity.check_warper_candidates(target, [config])
    # Both paths ran: the napkin model (the kernels' decisions on the host) says which rows fit.
    fits = [select_napkin(x[r] / temps[r], 50, 1.0, 0.0, 1.0, rows=6, sm_count=SM_COUNT)["fits"]
            for r in range(6)]
    assert fits == [False, True] * 3


def test_warper_edge_rows(target):
    parity.check_warper_edge_rows(target)


# ---------------------------------------------------------------------------
# Processing: mask, bias, penalties, top-n logprobs

PROCESSING_SHAPES = [(4, 17), (7, 3000), (1, 128256), (33, 4099)]


def processing_case(shape, dtype):
    """The largest batch in float32 is in the slow tier (bf16 meets the same rows and splits)."""
    slow = shape == (33, 4099) and dtype == torch.float32
    return pytest.param(shape, dtype, id=f"{shape_id(shape)}-{dtype}", marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("shape, dtype", [processing_case(s, d) for s in cases(PROCESSING_SHAPES, [(7, 3000), (1, 128256)])
                                          for d in cases([torch.float32, torch.bfloat16], [torch.bfloat16])])
def test_processing_matches_the_cpu(target, shape, dtype):
    parity.check_processing(target, shape, dtype)


def test_top_logprobs_where_candidates_overflow(target):
    parity.check_top_logprob_edges(target)


def test_raw_top_n_where_rounding_merges_logprobs(target):
    """The radix selection's ties of merged logprobs go to the lower id, as the CPU's (its own normaliser)."""
    parity.check_merged_raw_logprobs(target, rows=48)


@pytest.mark.parametrize("vocab", cases([3000, pytest.param(128256, marks=pytest.mark.slow)], [3000]))
def test_logprob_stage_on_point_masses_and_infinite_rows(target, vocab):
    parity.check_logprob_stage_edges(target, vocab)


def test_ids_past_the_vocabulary_are_ignored(target):
    """CUDA cannot check the ids inside the history and bias without a sync: ids outside [0, V)
    count as padding (README "Processing"), as -1 does on the CPU."""
    x = make(3, 500, torch.float32)
    history = torch.tensor([[3, 600, -5, 3], [7, 499, 10**12, -1], [1, 1, 1, 1]])
    bias = torch.tensor([[4, 500, 5, -9]] * 3)
    values = torch.full((3, 4), 8.0)
    kwargs = dict(seed=2, repetition_penalty=1.5, frequency_penalty=0.7, return_logprobs=True,
                  return_top_logprobs=5)
    clean = dict(output_tokens=history.masked_fill((history < 0) | (history >= 500), -1),
                 bias_tokens=bias.masked_fill((bias < 0) | (bias >= 500), -1), bias_values=values)
    got = target.call(syncfree.sample, x, output_tokens=history, bias_tokens=bias, bias_values=values, **kwargs)
    assert_same(syncfree.sample(x, **clean, **kwargs), got)


def test_processing_captured_replays_read_the_static_inputs(layer):
    """A captured call with mask, bias, penalties and top-n (the tables' memset and kernel, the
    logprob stage's launches) replays with the history and offsets as they are at replay time."""
    x = make(3, 20000, torch.float32)
    process = parity.processing_case(3, 20000)
    seeds, offsets = torch.arange(3), torch.zeros(3, dtype=torch.int64)
    out = torch.full((3,), -7, dtype=torch.int64)
    kwargs = dict(top_k=40, seed=seeds, offset=offsets, return_top_logprobs=5, **process)
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):  # the outputs the replays write stay alive, as with CUDA graphs
        kept = emulated(syncfree.sample, x, 0.9, out=out, **kwargs)
    assert out.eq(-7).all(), "a captured launch ran during the capture"
    for replay in range(3):
        offsets.fill_(replay)
        process["output_tokens"][:, replay] = replay + 1  # the history grows between replays
        graph.replay()
        want = syncfree.sample(x, 0.9, **kwargs)
        assert torch.equal(out, want[0]) and torch.equal(kept[1], want[1])


# ---------------------------------------------------------------------------
# syncfree.distributed's shard kernels


def shard_processing():
    """Processing for shard_cases' [3, 4096] rows: a mask, histories, biases and penalties."""
    g = torch.Generator().manual_seed(2)
    mask = torch.randint(-2**31, 2**31, (3, 128), dtype=torch.int32, generator=g)
    mask[0, 0] = -1  # token 7's +inf stays
    mask[2] = 0x00020002  # one token a group: the winning group's race must process (a raw one picks another)
    history = torch.randint(0, 4096, (3, 30), generator=g)
    history[:, 0] = torch.tensor([1000, 1003, 1035])  # near the cuts
    bias_tokens = torch.randint(0, 4096, (3, 5), generator=g)
    bias_tokens[:, 0] = 1001
    return dict(allowed_mask=mask, output_tokens=history, prompt_tokens=history.flip(-1)[:, :10], presence_penalty=0.7,
                frequency_penalty=0.2, repetition_penalty=1.3, bias_tokens=bias_tokens,
                bias_values=torch.randn(3, 5, generator=g) * 4)


def shard_cases():
    """(name, logits, shard bounds, kwargs) for syncfree.distributed's steps."""
    x = make(3, 4096, torch.bfloat16)
    x[0, 7] = float("inf")
    negative = -torch.rand(2, 1000, generator=torch.Generator().manual_seed(1)) * 4 - 5
    per_row = dict(temperature=torch.tensor([0.9, 0.0, 1.4]), seed=torch.tensor([5, 6, 7]),
                   top_k=torch.tensor([40, 3, 0]), top_p=torch.tensor([0.9, 1.0, 0.6]),
                   min_p=torch.tensor([0.0, 0.2, 0.05]), typical_p=torch.tensor([0.95, 1.0, 0.5]))
    # Shards narrower than a group, and a group split over three shards.
    bounds = [(0, 1000), (1000, 1001), (1001, 1010), (1010, 4096)]
    out = [("race", x, bounds, dict(temperature=0.9, seed=torch.arange(3) + 11)),
           # Every shard scaled to -inf: the raw argmax (Note [Logits past the temperature's range]).
           ("overflowing temperature", negative, [(0, 500), (500, 1000)], dict(temperature=1.2e-38, seed=2)),
           ("per-row warpers", x, bounds, per_row),
           ("generator", x, [(0, 2000), (2000, 4096)], dict(temperature=0.8, top_p=0.9, generator_seed=4)),
           # Processing in each rank's columns (Note [Processing on a shard]): its passes, race and token logit.
           ("processing", x, [(0, 1000), (1000, 1001), (1001, 1040), (1040, 4096)], dict(per_row, **shard_processing()))]
    if not QUICK:  # one row split over blocks by the 132-SM plan, on each shard
        wide = make(1, 131072, torch.float32)
        out.append(("wide row", wide, [(0, 70001), (70001, 131072)], dict(seed=3, top_k=50, top_p=0.9, min_p=0.01)))
    return out


@pytest.mark.parametrize("case", shard_cases(), ids=[c[0] for c in shard_cases()])
def test_shard_kernels(layer, case):
    """syncfree.distributed's steps on the emulated kernels (the race on shards, the local passes,
    the per-row merges) over simulated ranks: the tokens of emulated single-device sampling, and,
    but for the generator's draw, the CPU path's shard steps."""
    name, logits, bounds, kwargs = case
    with cuda_on_cpu.emulating():
        want = one_device(logits, kwargs)
        got = simulate(logits, bounds, **kwargs)
    for rank in got:
        assert_same(want, rank, name)
    if "generator_seed" not in kwargs:
        for rank in simulate(logits, bounds, **kwargs):
            assert_same(want, rank, name)
    assert tickets_are_zero(layer)


@pytest.mark.parametrize("mode", ["processed", "raw"])
def test_shard_top_logprobs(layer, mode):
    """Top-n over shards on the emulated kernels (the entries pass, the raw masses' race): the
    emulated single-device top n, with processing and per-row warpers."""
    name, logits, bounds, kwargs = [c for c in shard_cases() if c[0] == "processing"][0]
    with cuda_on_cpu.emulating():
        want = syncfree.sample(logits, return_logprobs=True, return_valid=True, return_top_logprobs=6,
                               logprobs_mode=mode, **kwargs)
        got = simulate(logits, bounds, top=(6, mode == "raw"), **kwargs)
    for rank in got:
        assert torch.equal(rank[0], want[0]) and torch.equal(rank[2], want[2]) and torch.equal(rank[3], want[3])
        torch.testing.assert_close(rank[1], want[1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rank[4], want[4], atol=1e-4, rtol=1e-4)
    # out=: a strided column of a wider tensor receives every rank's tokens.
    outs = []
    with cuda_on_cpu.emulating():
        simulate(logits, bounds, out=lambda: outs.append(torch.full((len(logits), 3), -5)) or outs[-1][:, 1], **kwargs)
    for o in outs:
        assert torch.equal(o[:, 1], want[0]) and (o[:, [0, 2]] == -5).all()
    assert tickets_are_zero(layer)


# ---------------------------------------------------------------------------
# Speculative decoding

def test_verify_draft_matches_the_cpu(target):
    parity.check_verify(target)


def test_verify_draft_with_processing_matches_the_cpu(target):
    parity.check_verify_processing(target)


def positions_bytes(layer):
    """The dynamic shared memory of each positions launch since the last clear_launches."""
    return [l["dynamic_shared"] for l in layer.launches() if "syncfree_verify_positions_kernel" in l["kernel"]]


def positions_limit(layer, type_name, opt_in):
    """plan_positions's shared_limit for the kernel over type_name: the opt-in maximum less its static bytes."""
    static = {name: r[1] for name, r in layer.kernel_resources().items()
              if "syncfree_verify_positions_kernel<" + type_name in name}
    assert len(static) == 2 and len(set(static.values())) == 1, static
    assert max(static.values()) <= 1024, static  # bench_verify.py's STATIC_BOUND
    return opt_in - next(iter(static.values()))


def test_verify_draft_single_row_and_one_draft(layer, target):
    parity.check_verify(target, rows=1, n=1, vocab=20000)
    # Note [A node's row on chip]: on an H100 (227 KiB) the float rows are kept whole, but the tail group.
    limit = positions_limit(layer, "float", 227 << 10)
    want = layer.plan_positions(20000, 4, limit)
    assert want["kept_groups"] == 20000 // 16 and positions_reads(20000, 4, limit) == 1
    assert set(positions_bytes(layer)) == {want["shared_bytes"]}
    # A call greedy in every row makes one pass (16-byte loads where aligned) and keeps nothing.
    layer.clear_launches()
    g = torch.Generator().manual_seed(5)
    x, ids = torch.randn(2, 3, 20000, generator=g), torch.randint(0, 20000, (2, 2), generator=g)
    want = syncfree.verify_draft(x, ids, None, 0.0, seed=3, return_logprobs=True, return_valid=True)
    got = target.call(syncfree.verify_draft, x, ids, None, 0.0, seed=3, return_logprobs=True, return_valid=True)
    parity.assert_same(want, got, "verify_draft, greedy")
    assert positions_bytes(layer) == [0]


def test_verify_keeps_what_fits_on_chip(layer, target):
    """Note [A node's row on chip] on a GPU with 48 KiB of shared memory a block (less than any this
    extension is built for): the positions kernel keeps part of each row and reads the rest again.
    Float32 rows of V 20000 (aligned: 759 of 1250 groups kept) and V 26001 with processing (not
    aligned: the words are packed from element loads) in float32 and bfloat16; tokens, counts,
    logprobs and valid bit for bit against the CPU, and each launch asks for the plan's bytes."""
    opt_in = 48 << 10
    layer.configure(shared_opt_in=opt_in)
    try:
        parity.check_verify(target, rows=1, n=1, vocab=20000)
        aligned = positions_bytes(layer)
        layer.clear_launches()
        parity.check_verify_processing(target, rows=2, n=1, vocab=26001)
        unaligned = positions_bytes(layer)
    finally:
        layer.configure(shared_opt_in=227 << 10)
    plans = {(vocab, name): layer.plan_positions(vocab, size, positions_limit(layer, name, opt_in))
             for vocab, name, size in ((20000, "float", 4), (26001, "float", 4), (26001, "c10::BFloat16", 2))}
    for (vocab, name), plan in plans.items():
        assert 0 < plan["kept_groups"] < vocab // 16, plan  # kept in part
        size = 4 if name == "float" else 2
        reads = positions_reads(vocab, size, positions_limit(layer, name, opt_in))  # the napkin model
        assert reads == 2 - plan["kept_groups"] / ((vocab + 15) // 16) and 1 < reads < 2
    assert set(aligned) == {plans[20000, "float"]["shared_bytes"]}
    assert set(unaligned) == {plans[26001, "float"]["shared_bytes"], plans[26001, "c10::BFloat16"]["shared_bytes"]}


def test_verify_draft_ids_outside_the_vocabulary_are_rejected(target):
    parity.check_verify_ids_outside_the_vocabulary(target)


def test_verify_tree_matches_the_cpu(target):
    parity.check_verify_tree(target, quick=True)  # each kind of draft and of seed; the product is slow


@pytest.mark.slow
def test_verify_tree_every_combination_against_the_cpu(target):
    parity.check_verify_tree(target)


def test_verify_tree_with_processing_matches_the_cpu(target):
    parity.check_verify_tree(target, rows=6, nodes=9, vocab=2050, processing=True, quick=QUICK)


def test_verify_tree_unchecked_parents_and_ids(target):
    parity.check_verify_tree_unchecked(target)


def test_verify_tree_captured_replays_with_fresh_noise(layer):
    """A captured verify_tree with warpers and draft_probs replays with the per-row offsets of each
    replay, into the same output tensors."""
    g = torch.Generator().manual_seed(3)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2]] * 2)
    x = torch.randn(2, 6, 5000, generator=g) * 3
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.int64), x[:, [0, 0, 1, 1, 2]].argmax(-1)], 1)
    q = torch.softmax(torch.randn(2, 6, 5000, generator=g), -1)
    seeds, offsets = torch.tensor([4, 9]), torch.zeros(2, dtype=torch.int64)
    out = torch.full((2, 6), -7, dtype=torch.int64)
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):
        path, accepted = emulated(syncfree.verify_tree, x, ids, parents, q, 0.9, top_k=40, seed=seeds,
                                  offset=offsets, out=out)[1:3]
    assert out.eq(-7).all(), "a captured launch ran during the capture"
    for replay in range(3):
        offsets.fill_(replay * 5)
        graph.replay()
        want = syncfree.verify_tree(x, ids, parents, q, 0.9, top_k=40, seed=seeds, offset=offsets)
        assert torch.equal(out, want[0]) and torch.equal(path, want[1]) and torch.equal(accepted, want[2])


def test_verify_draft_captured_replays_with_fresh_noise(layer):
    """A captured verify_draft with warpers (the selection's memset and launches included) replays
    with the per-row offsets and the generator's position of each replay."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 20000, generator=g) * 3
    ids = x[:, :2].argmax(-1)
    q = torch.softmax(x[:, :2], -1)
    seeds, offsets = torch.tensor([4, 9]), torch.zeros(2, dtype=torch.int64)
    out = torch.full((2, 3), -7, dtype=torch.int64)
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):
        accepted = emulated(syncfree.verify_draft, x, ids, q, 0.9, top_k=40, top_p=0.9, seed=seeds, offset=offsets,
                            out=out)[1]
    assert out.eq(-7).all(), "a captured launch ran during the capture"
    for replay in range(3):
        offsets.fill_(replay * 3)
        graph.replay()
        want = syncfree.verify_draft(x, ids, q, 0.9, top_k=40, top_p=0.9, seed=seeds, offset=offsets)
        assert torch.equal(out, want[0]) and torch.equal(accepted, want[1])
    step = (20000 + 3) // 4 * 4
    gen = torch.Generator().manual_seed(6)
    graph = layer.Graph()
    with cuda_on_cpu.capture(graph):  # the outputs the replays write stay alive, as with CUDA graphs
        kept = emulated(syncfree.verify_draft, x, ids, None, 0.9, generator=gen, out=out)
    for replay in range(2):
        graph.replay()
        want = syncfree.verify_draft(x, ids, None, 0.9, seed=6, offset=replay * step)
        assert torch.equal(out, want[0]) and torch.equal(kept[1], want[1])
