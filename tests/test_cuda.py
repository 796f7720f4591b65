"""CUDA path: token identity with the CPU (tests/parity.py, shared with the emulated tests), no syncs,
run-ahead, graph capture, streams and devices.

Skipped without a GPU. benchmarks/gpu_check.sh runs these (pytest -m cuda) on a GPU machine.
"""
import time

import pytest
import torch

import parity
import syncfree
from conftest import requires_cuda
from parity import make

pytestmark = [pytest.mark.cuda, requires_cuda]

SHAPES = [(1, 1), (1, 17), (3, 1000), (1, 128256), (2, 262144), (8, 32000), (64, 4099), (300, 151), (70_000, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA = parity.Target("cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_and_cuda_give_identical_tokens(shape, dtype):
    parity.check_tokens(CUDA, shape, dtype)


@pytest.mark.parametrize("shape", [(4, 17), (3, 1000), (1, 128256)])
def test_sample_probs_matches_the_cpu(shape):
    parity.check_sample_probs(CUDA, shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_and_strided_rows_match_cpu(dtype):
    parity.check_views(CUDA, dtype, [(3, 1000), (1, 16392), (2, 131064)])


def test_split_rows_reuse_their_ticket_counters():
    """A row split over many blocks: consecutive calls on one stream and on others all match the CPU."""
    x = make(2, 262144, torch.bfloat16)
    gpu = x.cuda()
    for seed in range(5):
        assert torch.equal(syncfree.sample(x, seed=seed), syncfree.sample(gpu, seed=seed).cpu())
    for stream in (torch.cuda.Stream(), torch.cuda.Stream()):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            got = syncfree.sample(gpu, seed=9)
        torch.cuda.current_stream().wait_stream(stream)
        assert torch.equal(got.cpu(), syncfree.sample(x, seed=9))


@pytest.mark.parametrize("vocab", [300, 128256])  # one block a row, and rows split over blocks
def test_edge_cases_on_cuda(vocab):
    parity.check_degenerate_rows(CUDA, vocab)


@requires_cuda
def test_the_rules_at_the_limits_on_cuda():
    parity.check_limits(CUDA)
    assert syncfree.sample(torch.randn(0, 5, device="cuda")).shape == (0,)
    assert syncfree.sample(torch.randn(9, device="cuda"), 0.0).shape == ()


def test_int_seed_equals_a_fresh_cuda_generator():
    x = make(32, 5000, torch.float32).cuda()
    g = torch.Generator(device="cuda").manual_seed(77)
    assert torch.equal(syncfree.sample(x, seed=77), syncfree.sample(x, generator=g))


def test_generator_advances_and_reseeds_on_cuda():
    x = make(64, 1000, torch.float32).cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    a, b = syncfree.sample(x, generator=g), syncfree.sample(x, generator=g)
    assert (a != b).any()
    g.manual_seed(3)
    assert torch.equal(syncfree.sample(x, generator=g), a)


def all_public_calls(x, seeds, offsets, out):
    syncfree.sample(x)
    syncfree.sample(x, 0.7, return_logprobs=True, return_valid=True)
    syncfree.sample(x, 0.0)
    syncfree.sample(x, torch.full((x.shape[0],), 0.5, device=x.device), seed=seeds, offset=offsets)
    syncfree.sample(x, seed=11, offset=4, out=out)
    syncfree.sample_probs(x.float().softmax(-1), return_valid=True)
    syncfree.sample_probs(x.float().softmax(-1), seed=seeds)
    process = {k: v.to(x.device) for k, v in parity.processing_case(x.shape[0], x.shape[-1]).items()}
    syncfree.sample(x, 0.8, top_k=50, seed=seeds, offset=offsets, return_logprobs=True, return_top_logprobs=20,
                    **process)
    syncfree.sample(x, 0.8, top_p=0.9, seed=seeds, return_logprobs=True, logprobs_mode="raw", **process)
    syncfree.warp(x, 0.8, top_k=50, **process)


@pytest.mark.parametrize("shape", [(1, 128256), (64, 32000)])
def test_no_sync_in_any_public_call(shape):
    x = make(*shape, torch.bfloat16).cuda()
    seeds = torch.arange(shape[0], device="cuda")
    offsets = torch.zeros(shape[0], dtype=torch.int64, device="cuda")
    out = torch.empty(shape[0], dtype=torch.int64, device="cuda")
    all_public_calls(x, seeds, offsets, out)  # warm up outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        all_public_calls(x, seeds, offsets, out)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_host_runs_ahead_of_the_gpu():
    """1000 calls enqueued behind a long kernel return long before the GPU is done.

    512 rows need no split, so a call is exactly one kernel launch: 1000
    launches stay within the stream's queue of pending launches.
    """
    x = make(512, 2000, torch.float32).cuda()
    out = torch.empty(512, dtype=torch.int64, device="cuda")
    syncfree.sample(x, out=out)
    torch.cuda.synchronize()
    sleep_start, done = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sleep_start.record()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time
    start = time.perf_counter()
    for _ in range(1000):
        syncfree.sample(x, out=out)
    host = time.perf_counter() - start
    done.record()
    assert not done.query(), "the GPU finished before the host enqueued everything: something synced"
    torch.cuda.synchronize()
    assert host * 1000 < sleep_start.elapsed_time(done) / 2


def capture(fn, warmup=2, generator=None):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    if generator is not None and hasattr(graph, "register_generator_state"):
        graph.register_generator_state(generator)  # needed before torch 2.14, a no-op after
    with torch.cuda.graph(graph):
        fn()
    return graph


@pytest.mark.parametrize("which", ["default", "user"])
@pytest.mark.parametrize("shape", [(1, 128256), (16, 32000)])
def test_graph_replay_draws_fresh_noise_and_matches_eager(which, shape):
    """PyTorch's own replay test: eager steps from a seed == graph replays from the same seed."""
    x = make(*shape, torch.bfloat16).cuda()
    gen = None if which == "default" else torch.Generator(device="cuda")
    out = torch.empty(shape[0], dtype=torch.int64, device="cuda")
    logprobs = []

    def seed_all():
        (torch.cuda.manual_seed if gen is None else gen.manual_seed)(1234)

    def step():
        _, lp = syncfree.sample(x, 0.8, generator=gen, out=out, return_logprobs=True)
        logprobs.append(lp)

    steps = 6
    seed_all()
    eager = []
    for _ in range(steps):
        step()
        eager.append(out.clone())
    eager_offset = (torch.cuda.default_generators[0] if gen is None else gen).get_offset()

    graph = capture(step, generator=gen)
    seed_all()
    replayed = []
    for _ in range(steps):
        graph.replay()
        replayed.append(out.clone())
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, replayed))
    assert len({tuple(t.tolist()) for t in replayed}) > 1 or shape[0] == 1  # fresh noise per replay
    assert (torch.cuda.default_generators[0] if gen is None else gen).get_offset() == eager_offset


def test_graph_with_per_row_seeds():
    x = make(32, 32000, torch.float16).cuda()
    seeds = torch.arange(32, device="cuda") * 3
    offsets = torch.zeros(32, dtype=torch.int64, device="cuda")
    out = torch.empty(32, dtype=torch.int64, device="cuda")
    graph = capture(lambda: syncfree.sample(x, 0.9, seed=seeds, offset=offsets, out=out))
    for step in range(4):
        offsets.fill_(step)
        graph.replay()
        expected = syncfree.sample(x, 0.9, seed=seeds, offset=offsets)
        assert torch.equal(out, expected)


def test_current_stream_is_used():
    x = make(8, 40000, torch.float32).cuda()
    out = torch.full((8,), -1, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)
        syncfree.sample(x, seed=3, out=out)
    snapshot = out.clone()  # on the default stream, not waiting for s
    torch.cuda.synchronize()
    assert (snapshot == -1).all(), "the sampler did not run on the current stream"
    assert torch.equal(out, syncfree.sample(x, seed=3))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_non_default_device():
    x = make(4, 1000, torch.float32)
    with torch.cuda.device(0):
        got = syncfree.sample(x.to("cuda:1"), seed=2)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), syncfree.sample(x, seed=2))
    # Rows split over blocks on both devices' default streams (one handle): each device has
    # its own ticket counters (Note [Ticket counters]).
    wide = make(2, 262144, torch.bfloat16)
    expected = syncfree.sample(wide, seed=6)
    for _ in range(3):
        for device in ("cuda:0", "cuda:1"):
            assert torch.equal(syncfree.sample(wide.to(device), seed=6).cpu(), expected), device
    with pytest.raises(ValueError, match="generator: expected a generator on cuda:1"):
        syncfree.sample(x.to("cuda:1"), generator=torch.Generator(device="cuda:0"))


def test_generator_on_the_wrong_device():
    with pytest.raises(ValueError, match="generator: expected a generator on cpu"):
        syncfree.sample(torch.randn(2, 5), generator=torch.Generator(device="cuda"))


def test_torch_compile_on_cuda():
    compiled = torch.compile(lambda x, s: syncfree.sample(x, 0.7, seed=s), fullgraph=True)
    x = make(4, 1000, torch.bfloat16).cuda()
    s = torch.arange(4, device="cuda")
    assert torch.equal(compiled(x, s), syncfree.sample(x, 0.7, seed=s))


WARPER_CONFIGS = parity.WARPER_CONFIGS


@pytest.mark.parametrize("config", WARPER_CONFIGS, ids=parity.config_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 128256), (8, 32000), (33, 4099), (4, 17)])
def test_warpers_cpu_and_cuda_identical(shape, dtype, config):
    parity.check_warpers(CUDA, shape, dtype, config)


def test_per_row_warpers_on_cuda():
    parity.check_per_row_warpers(CUDA, 64)


@pytest.mark.parametrize("config", WARPER_CONFIGS[1:], ids=parity.config_id)
def test_warpers_no_sync_and_graph_capture(config):
    x = make(16, 32000, torch.bfloat16).cuda()
    out = torch.empty(16, dtype=torch.int64, device="cuda")
    seeds = torch.arange(16, device="cuda")
    offsets = torch.zeros(16, dtype=torch.int64, device="cuda")
    syncfree.sample(x, 0.8, seed=seeds, out=out, **config)
    torch.cuda.set_sync_debug_mode("error")
    try:
        syncfree.sample(x, 0.8, out=out, **config)
        syncfree.warp(x, 0.8, **config)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = capture(lambda: syncfree.sample(x, 0.8, seed=seeds, offset=offsets, out=out, **config))
    for step in range(3):
        offsets.fill_(step)
        graph.replay()
        assert torch.equal(out, syncfree.sample(x, 0.8, seed=seeds, offset=offsets, **config))


def test_warper_candidates_fitting_and_overflowing_on_cuda():
    parity.check_warper_candidates(CUDA)


def test_warp_edge_rows_cpu_and_cuda_identical():
    parity.check_warper_edge_rows(CUDA)


def test_warp_many_rows_on_cuda():
    x = make(70_000, 20, torch.float32)
    assert torch.equal(syncfree.warp(x, 1.0, top_k=3)[0], syncfree.warp(x.cuda(), 1.0, top_k=3)[0].cpu())


def test_verify_draft_cpu_and_cuda_identical():
    parity.check_verify(CUDA)
    parity.check_verify(CUDA, rows=1, n=1, vocab=20000)
    parity.check_verify_processing(CUDA)


def test_verify_draft_no_sync_and_graph_capture():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(8, 4, 32000, generator=g) * 3).cuda()
    ids = x[:, :3].argmax(-1)
    q = torch.softmax(x[:, :3], -1)
    seeds = torch.arange(8, device="cuda")
    offsets = torch.zeros(8, dtype=torch.int64, device="cuda")
    out = torch.empty(8, 4, dtype=torch.int64, device="cuda")
    syncfree.verify_draft(x, ids, q, 0.8, top_k=50, seed=seeds, offset=offsets, out=out)
    torch.cuda.set_sync_debug_mode("error")
    try:
        syncfree.verify_draft(x, ids, q, 0.8, top_k=50, top_p=0.9, out=out)
        syncfree.verify_draft(x, ids, None, 0.0, out=out)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = capture(lambda: syncfree.verify_draft(x, ids, q, 0.8, top_k=50, seed=seeds, offset=offsets, out=out))
    for step in range(3):
        offsets.fill_(step)
        graph.replay()
        assert torch.equal(out, syncfree.verify_draft(x, ids, q, 0.8, top_k=50, seed=seeds, offset=offsets)[0])


def test_verify_tree_cpu_and_cuda_identical_no_sync_and_graph_capture():
    parity.check_verify_tree(CUDA)
    parity.check_verify_tree(CUDA, rows=6, nodes=9, vocab=2050, processing=True)
    parity.check_verify_tree_unchecked(CUDA)
    g = torch.Generator().manual_seed(3)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2]] * 8, device="cuda")
    x = (torch.randn(8, 6, 32000, generator=g) * 3).cuda()
    ids = torch.cat([torch.zeros(8, 1, dtype=torch.int64), x[:, [0, 0, 1, 1, 2]].argmax(-1).cpu()], 1).cuda()
    q = torch.softmax(x, -1)
    seeds, offsets = torch.arange(8, device="cuda"), torch.zeros(8, dtype=torch.int64, device="cuda")
    out = torch.empty(8, 6, dtype=torch.int64, device="cuda")
    syncfree.verify_tree(x, ids, parents, q, 0.8, top_k=50, seed=seeds, offset=offsets, out=out)
    torch.cuda.set_sync_debug_mode("error")
    try:
        syncfree.verify_tree(x, ids, parents, q, 0.8, top_k=50, top_p=0.9, out=out)
        syncfree.verify_tree(x, ids, parents, None, 0.0, out=out)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graph = capture(lambda: syncfree.verify_tree(x, ids, parents, q, 0.8, top_k=50, seed=seeds, offset=offsets,
                                                 out=out))
    for step in range(3):
        offsets.fill_(step)
        graph.replay()
        assert torch.equal(out, syncfree.verify_tree(x, ids, parents, q, 0.8, top_k=50, seed=seeds,
                                                     offset=offsets)[0])


@pytest.mark.parametrize("shape", [(4, 17), (7, 3000), (1, 128256), (64, 32000)])
def test_processing_cpu_and_cuda_identical(shape):
    parity.check_processing(CUDA, shape, torch.bfloat16)
    if shape[0] == 7:
        parity.check_processing(CUDA, shape, torch.float32)


def test_top_logprobs_edges_on_cuda():
    parity.check_top_logprob_edges(CUDA)


def test_processing_in_a_captured_graph():
    """Mask, bias, penalties and top-20 logprobs inside a CUDA graph: replays read the static
    history and per-row offsets as they are at replay time."""
    x = make(16, 32000, torch.bfloat16).cuda()
    process = {k: v.cuda() for k, v in parity.processing_case(16, 32000).items()}
    seeds = torch.arange(16, device="cuda")
    offsets = torch.zeros(16, dtype=torch.int64, device="cuda")
    out = torch.empty(16, dtype=torch.int64, device="cuda")
    kwargs = dict(top_k=50, top_p=0.9, seed=seeds, offset=offsets, return_top_logprobs=20, **process)
    result = {}  # the captured call's outputs (the last assignment is the capture's)
    graph = capture(lambda: result.__setitem__("r", syncfree.sample(x, 0.8, out=out, **kwargs)))
    for step in range(3):
        offsets.fill_(step)
        process["output_tokens"][:, step] = step  # the history grows between replays
        graph.replay()
        want = syncfree.sample(x, 0.8, **kwargs)
        assert torch.equal(out, want[0]) and torch.equal(result["r"][1], want[1])
