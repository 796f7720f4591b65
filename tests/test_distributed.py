"""syncfree.distributed: 2-4 processes, bit-identical to single-process sampling.

On CPU with Gloo (in CI); with a GPU, the same cases on CUDA tensors (Gloo between processes that
share the GPU), and a single-rank NCCL group for the no-sync and graph-capture checks.
"""
import ast
import contextlib
import inspect
import re
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import syncfree
import syncfree.distributed as sd
from conftest import requires_cuda
from ranks import free_port, one_device, simulate

INF = float("inf")


def cases():
    """(name, logits, kwargs): shapes, dtypes, per-row temperatures with greedy rows, masked/inf rows."""
    g = torch.Generator().manual_seed(0)
    out = []
    x = torch.randn(6, 1000, generator=g) * 3
    out.append(("int seed", x, dict(temperature=0.8, seed=5, offset=3)))
    seeds, offsets = torch.arange(6) * 7 + 1, torch.arange(6)
    temps = torch.tensor([0.7, 0.0, 1.3, 0.9, 0.0, 2.0])
    out.append(("per-row", x, dict(temperature=temps, seed=seeds, offset=offsets)))
    y = torch.randn(5, 333, generator=g).to(torch.bfloat16)
    y[0, 100] = INF
    y[1, [7, 250]] = INF
    y[2] = -INF
    y[3, :300] = float("nan")
    out.append(("edge rows", y, dict(temperature=1.1, seed=torch.arange(5), offset=torch.zeros(5, dtype=torch.int64))))
    out.append(("greedy", x, dict(temperature=0.0, seed=1)))
    z = torch.randn(3, 40, generator=g)
    out.append(("tiny vocab", z, dict(temperature=0.6, seed=9)))
    # A float64 temperature that is 0 in float32: greedy, as the kernels decide it (a fuzzing find).
    out.append(("tiny temperature", z, dict(temperature=1e-46, seed=3)))
    # logit / T overflows to -inf for every token: the argmax (Note [Logits past the temperature's range]).
    neg = -torch.rand(4, 100, generator=g) * 5 - 5
    neg[1, :60] = -INF
    out.append(("overflowing temperature", neg, dict(temperature=torch.tensor([1.2e-38, 1.2e-38, 0.5, 2.0**-126]),
                                                     seed=2)))
    out.append(("subnormal temperature", neg, dict(temperature=torch.tensor([1e-39, 2.0**-149, 0.5, 1e-45]), seed=2)))
    w = torch.randn(8, 2000, generator=g) * 3
    w[:, ::31] = -INF
    w[2, 17] = INF
    for name, config in (("top_k", dict(top_k=25)), ("top_p", dict(top_p=0.8)), ("min_p", dict(min_p=0.05)),
                         ("typical_p", dict(typical_p=0.7)),
                         ("all warpers", dict(top_k=200, top_p=0.9, min_p=0.01, typical_p=0.9))):
        out.append((name, w, dict(temperature=0.9, seed=torch.arange(8) + 3, offset=torch.arange(8), **config)))
    per_row = dict(top_k=torch.tensor([0, 5, 50, 2000, 1, 0, 30, 7]),
                   top_p=torch.tensor([1.0, 0.9, 0.5, 0.0, 1.0, 0.95, 1.0, 0.8]),
                   min_p=torch.tensor([0.0, 0.0, 0.1, 0.0, 0.0, 0.02, 0.5, 0.0]),
                   typical_p=torch.tensor([1.0, 0.9, 1.0, 1.0, 0.8, 0.0, 0.9, 0.95]))
    temps = torch.tensor([0.8, 1.2, 0.0, 0.7, 1.0, 0.9, 2.0, 0.5])
    out.append(("per-row warpers", w, dict(temperature=temps, seed=7, **per_row)))
    out.append(("generator", w, dict(temperature=0.8, top_p=0.9, generator="fresh:1234")))
    out.extend(processing_cases(w, g))
    out.append(("default generator", x, dict(temperature=1.0, generator="default:99")))
    return out


def processing_cases(w, g):
    """Processing over global ids and a whole-row mask, with greedy rows, a row the mask empties
    (token 0, valid False) and +inf / -inf biases; with and without warpers."""
    rows, vocab = w.shape
    mask = torch.randint(-2**31, 2**31, (rows, (vocab + 31) // 32), dtype=torch.int32, generator=g)
    mask[1] = 0
    mask[2] = -1
    history = torch.randint(0, vocab, (rows, 40), generator=g)
    history[:, 30:] = -1
    bias_tokens = torch.randint(0, vocab, (rows, 6), generator=g)
    bias_tokens[:, 5] = -1
    bias_values = torch.randn(rows, 6, generator=g) * 5
    bias_values[3, 0], bias_values[4, 1] = INF, -INF
    processing = dict(allowed_mask=mask, output_tokens=history, prompt_tokens=torch.randint(0, vocab, (rows, 25),
                                                                                             generator=g),
                      bias_tokens=bias_tokens, bias_values=bias_values, frequency_penalty=0.4, presence_penalty=0.3,
                      repetition_penalty=torch.tensor([1.3, 1.0, 0.8, 2.0, 1.1, 1.2, 1.0, 1.5]))
    temps = torch.tensor([0.8, 1.2, 0.0, 0.7, 1.0, 0.0, 2.0, 0.5])
    seeds = dict(seed=torch.arange(rows) + 11, offset=torch.arange(rows))
    return [("processing", w, dict(temperature=temps, **seeds, **processing)),
            ("processing and warpers", w, dict(temperature=temps, top_k=60, top_p=0.9, min_p=0.02, **seeds,
                                               **processing))]


def on_device(kwargs, device):
    """kwargs with tensors moved to device; generators cannot cross processes: 'fresh:S' /
    'default:S' name one seeded with S, made here."""
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    spec = kwargs.get("generator")
    if isinstance(spec, str):
        kind, seed = spec.split(":")
        if kind == "fresh":
            out["generator"] = torch.Generator(device).manual_seed(int(seed))
        else:
            torch.manual_seed(int(seed))  # seeds the CUDA generators too
            del out["generator"]
    return out


@contextlib.contextmanager
def no_host_reads():
    """Python code that reads tensor data on the host fails: on CUDA such a read is a sync."""
    names = ["item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host read of tensor data: Tensor.{name}")
        return method

    for name in names:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def splits_for(vocab, world, seed):
    """Uneven cut points, including shards narrower than a group and empty-of-groups shards."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(vocab - 1, generator=g)[: world - 1].add(1).tolist())
    bounds = [0] + cuts + [vocab]
    return [(bounds[r], bounds[r + 1]) for r in range(world)]


def worker(rank, world, port, result_file, layout_seed, backend="gloo", device="cpu"):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    if device == "cuda:rank":  # NCCL: one GPU per rank
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, rank=rank, world_size=world)
    torch.set_num_threads(1)
    outcome = {}
    try:
        for name, logits, kwargs in cases():
            vocab = logits.shape[-1]
            # Rank r holds shard (r + layout_seed) % world: ranks need not hold shards in order.
            start, end = splits_for(vocab, world, layout_seed + vocab)[(rank + layout_seed) % world]
            local = logits[:, start:end].to(device)
            real, seen = sd._shard_spans, []
            sd._shard_spans = lambda *args: seen.append(real(*args)) or seen[-1]  # the checked layout
            try:
                tokens, logprobs = sd.sample(local, start, vocab, return_logprobs=True, **on_device(kwargs, device))
                outcome[name] = (tokens.cpu(), logprobs.cpu())
                # Past the layout check, the Python code never reads tensor data (no sync on CUDA).
                sd._shard_spans = lambda *args: seen[-1]
                with no_host_reads():
                    again = sd.sample(local, start, vocab, return_logprobs=True, **on_device(kwargs, device))
            finally:
                sd._shard_spans = real
            outcome[name + " (no host reads)"] = (again[0].cpu(), again[1].cpu())
        # One row as [L] with 0-dim per-row tensors, as syncfree.sample takes them.
        x = cases()[0][1]
        start, end = splits_for(1000, world, layout_seed)[rank]
        outcome["one row"] = sd.sample(x[0, start:end].to(device), start, 1000, temperature=torch.tensor(0.7),
                                       seed=torch.tensor(3), top_k=torch.tensor(50)).cpu()
        errors = {}
        bounds = [0, 17, 20] + [20 + 16 * r for r in range(1, world - 1)]
        for name, call in (
                ("vocab_size", lambda: sd.sample(torch.randn(2, 10), 0 if rank == 0 else 3, 13 + rank, seed=1)),
                ("gap", lambda: sd.sample(torch.randn(2, 10), 12 * rank, 10 * world, seed=1)),
                ("batch", lambda: sd.sample(torch.randn(2 + rank, 10), 10 * rank, 10 * world, seed=1)),
                ("empty", lambda: sd.sample(torch.randn(2, 10 * (rank > 0)), 10 * max(rank - 1, 0), 10 * (world - 1),
                                            seed=1, return_logprobs=True)),
                ("too large", lambda: sd.sample(torch.randn(2, 10), 10 * rank, 2**31 + 10 * (world - 1), seed=1)),
                # Rank 1 holds [17, 20): no race group starts there, so it runs no shard op; it must
                # raise with the others (not wait for them in a collective).
                ("groupless rank", lambda: sd.sample(torch.randn(2, bounds[rank + 1] - bounds[rank]), bounds[rank],
                                                     bounds[-1], seed=torch.arange(3))),
                # Different dtypes, or different kinds of arguments, would make the collectives'
                # sizes differ (a Gloo abort once): every rank raises instead.
                ("dtype", lambda: sd.sample(torch.randn(2, 10, dtype=torch.float16 if rank else torch.float32),
                                            10 * rank, 10 * world, seed=1)),
                ("kinds", lambda: sd.sample(torch.randn(2, 10), 10 * rank, 10 * world, seed=1,
                                            top_k=5 if rank == 0 else 0)),
                ("processing kinds", lambda: sd.sample(torch.randn(2, 10), 10 * rank, 10 * world, seed=1,
                                                       presence_penalty=0.5 if rank == 0 else 0.0))):
            if device != "cpu":
                break
            try:
                call()
            except (ValueError, TypeError) as e:
                errors[name] = str(e)
        outcome["errors"] = errors
        torch.save(outcome, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def run_sharded(world, layout_seed, backend="gloo", device="cpu"):
    """Every rank's outcome; the expected tokens are single-device syncfree.sample on `device`
    ('cuda:rank': rank r on GPU r, expected on GPU 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "out")
        mp.start_processes(worker, args=(world, free_port(), result_file, layout_seed, backend, device),
                           nprocs=world, start_method="spawn")
        results = [torch.load(f"{result_file}.{r}") for r in range(world)]
    device = "cuda" if device == "cuda:rank" else device
    for name, logits, kwargs in cases():
        expected, expected_lp = syncfree.sample(logits.to(device), return_logprobs=True, **on_device(kwargs, device))
        expected, expected_lp = expected.cpu(), expected_lp.cpu()
        for r in range(world):
            for run in (name, name + " (no host reads)"):
                tokens, logprobs = results[r][run]
                assert torch.equal(tokens, expected), f"{run}, rank {r}: {tokens} vs {expected}"
                torch.testing.assert_close(logprobs, expected_lp, atol=1e-4, rtol=1e-4)
    return results


@pytest.mark.parametrize("world,layout_seed", [(2, 0), (3, 1), (4, 2)])
def test_sharded_sampling_is_bit_identical(world, layout_seed):
    results = run_sharded(world, layout_seed)
    for r in range(world):
        errors = results[r]["errors"]
        assert "vocab_size: ranks disagree" in errors["vocab_size"]
        assert "vocab_start: the shards do not tile" in errors["gap"]
        assert "local_logits: every rank must hold the same rows" in errors["batch"]
        assert "local_logits: every rank must hold at least one column; ranks [0] hold none" in errors["empty"]
        assert "vocab_size: expected an int in [1, 2147483615]" in errors["too large"]
        assert "seed: expected one value per row, shape [2], got shape [3]" in errors["groupless rank"]
        assert "local_logits: every rank must pass the same dtype" in errors["dtype"]
        assert "every rank must pass the same kinds of arguments" in errors["kinds"]
        assert "whether any processing is given" in errors["processing kinds"]
        x = cases()[0][1]
        assert torch.equal(results[r]["one row"], syncfree.sample(x[0], torch.tensor(0.7), seed=torch.tensor(3),
                                                                  top_k=torch.tensor(50)))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("world,layout_seed", [(2, 0), (3, 1)])
def test_cuda_shards_are_bit_identical(world, layout_seed):
    """The CUDA kernels of the shard steps (csrc/cuda/shard_cuda.cu, the race on shards), ranks
    sharing one GPU through Gloo: equal to single-device CUDA sampling, hence to the CPU."""
    run_sharded(world, layout_seed, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_shards_are_bit_identical():
    run_sharded(min(4, torch.cuda.device_count()), 2, backend="nccl", device="cuda:rank")


def nccl_worker(rank, port, result_file):
    """One NCCL rank: no sync once the layout is known, CUDA-graph capture with NCCL collectives."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(3)
        x = (torch.randn(16, 32000, generator=g) * 3).to(torch.bfloat16).cuda()
        seeds = torch.arange(16, device="cuda") * 5
        offsets = torch.zeros(16, dtype=torch.int64, device="cuda")
        warpers = dict(top_k=50, top_p=0.9, min_p=0.02, typical_p=0.95)
        out = {}
        # Capturing before the layout was seen gives a clear error.
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        try:
            with torch.cuda.stream(s), torch.cuda.graph(graph, stream=s):
                sd.sample(x, 0, 32000, 0.8, seed=seeds, offset=offsets)
        except RuntimeError as e:
            out["capture error"] = str(e)
        torch.cuda.synchronize()
        sd.sample(x, 0, 32000, 0.8, seed=seeds, offset=offsets, **warpers)  # warm: layout known
        torch.cuda.set_sync_debug_mode("error")
        try:
            sd.sample(x, 0, 32000, 0.8, seed=seeds, offset=offsets, return_logprobs=True, **warpers)
            sd.sample(x, 0, 32000, torch.full((16,), 0.7, device="cuda"), seed=3, **warpers)
            sd.sample(x, 0, 32000, 1.0)  # the default CUDA generator
        finally:
            torch.cuda.set_sync_debug_mode(0)
        # Graph capture and replay with per-row seeds: each replay equals single-device sampling.
        tokens = torch.empty(16, dtype=torch.int64, device="cuda")

        def step():
            tokens.copy_(sd.sample(x, 0, 32000, 0.8, seed=seeds, offset=offsets, **warpers))

        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        replays = []
        for i in range(3):
            offsets.fill_(i)
            graph.replay()
            replays.append((tokens.cpu(), syncfree.sample(x, 0.8, seed=seeds, offset=offsets, **warpers).cpu()))
        out["replays"] = replays
        # With the default generator: replays draw fresh noise, equal to eager calls from the same seed.
        torch.cuda.manual_seed(77)
        eager = [sd.sample(x, 0, 32000, 0.9, top_p=0.9).cpu() for _ in range(3)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            tokens.copy_(sd.sample(x, 0, 32000, 0.9, top_p=0.9))
        torch.cuda.manual_seed(77)
        out["generator"] = (eager, [(graph.replay(), tokens.cpu())[1] for _ in range(3)])
        torch.save(out, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@requires_cuda
def test_nccl_no_sync_and_graph_capture():
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "out")
        mp.start_processes(nccl_worker, args=(free_port(), result_file), nprocs=1, start_method="spawn")
        out = torch.load(result_file)
    assert "call it once outside CUDA-graph capture first" in out["capture error"]
    for replayed, expected in out["replays"]:
        assert torch.equal(replayed, expected)
    eager, replayed = out["generator"]
    assert all(torch.equal(a, b) for a, b in zip(eager, replayed))
    assert len({tuple(t.tolist()) for t in replayed}) > 1  # fresh noise per replay


def test_bad_arguments_without_a_group():
    with pytest.raises(ValueError, match="generator: pass either a generator or a seed"):
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, generator=torch.Generator())
    x = torch.randn(2, 10)
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    for kwargs, error, message in (
            (dict(top_p=0.0), ValueError, "top_p: expected a number in (0, 1]"),
            (dict(min_p=1.5), ValueError, "min_p: expected a number in [0, 1]"),
            (dict(top_k=-1), ValueError, "top_k: expected an int >= 0"),
            (dict(top_k=2.0), TypeError, "top_k: expected an int"),
            (dict(temperature=-1.0), ValueError, "temperature: expected a number >= 0"),
            (dict(top_p=torch.ones(3)), ValueError, "top_p: expected one value per row, shape [2]"),
            (dict(top_k=torch.ones(2)), TypeError, "top_k: expected an integer tensor"),
            (dict(temperature=torch.ones(2, dtype=torch.int64)), TypeError, "temperature: expected a floating"),
            (dict(generator=1), TypeError, "generator: expected a torch.Generator"),
            (dict(vocab_start=0.0), TypeError, "vocab_start: expected an int"),
            (dict(seed=torch.arange(2, dtype=torch.int32)), TypeError, "seed: expected an int64 tensor"),
            (dict(seed=torch.arange(2), offset=3), ValueError, "offset: a per-row seed tensor takes a per-row offset"),
            (dict(seed=1, offset=torch.arange(2)), ValueError, "offset: a per-row offset tensor needs a per-row seed"),
            (dict(offset=5, generator=generator), ValueError, "offset: an offset needs a seed")):
        with pytest.raises(error, match=re.escape(message)):
            args = {"vocab_start": 0, "vocab_size": 10, **kwargs}
            sd.sample(x, **args)  # raised before any collective: no group needed
    assert torch.equal(generator.get_state(), state), "a failed call must not advance the generator"
    with pytest.raises(TypeError, match="local_logits: expected float32, float16 or bfloat16 or float64"):
        sd.sample(x.to(torch.int32), 0, 10, seed=1)
    with pytest.raises(ValueError, match="local_logits: the last dim must be contiguous"):
        sd.sample(torch.randn(10, 2).t(), 0, 10, seed=1)


def test_the_generator_draw_is_the_draw_of_a_sampling_call():
    """_shard_draw draws what syncfree.sample draws (and advances the generator as it does)."""
    x = torch.randn(3, 1000)
    g = torch.Generator().manual_seed(5)
    state = torch.ops.syncfree._shard_draw(x, g, 1000, 0)
    assert state[1] == 0
    assert torch.equal(syncfree.sample(x, seed=int(state[0])), syncfree.sample(x, generator=torch.Generator().manual_seed(5)))
    h = torch.Generator().manual_seed(5)
    syncfree.sample(x, generator=h)
    assert torch.equal(g.get_state(), h.get_state())


def simulated_cases():
    """(name, logits, bounds, kwargs): the process-group cases, and wider rows over more shards."""
    out = []
    for world, (name, logits, kwargs) in zip([2, 3, 4, 5] * 10, cases()):
        if "generator" in kwargs:
            kwargs = dict(kwargs, generator_seed=int(kwargs.pop("generator").split(":")[1]))
            if name == "default generator":
                continue  # the default generator is one per process: not for simulated ranks
        out.append((name, logits, splits_for(logits.shape[-1], world, world), kwargs))
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(3, 40000, generator=g) * 4
    per_row = dict(temperature=torch.tensor([0.9, 0.0, 1.4]), seed=torch.tensor([5, 6, 7]),
                   top_k=torch.tensor([40, 3, 0]), top_p=torch.tensor([0.9, 1.0, 0.6]),
                   min_p=torch.tensor([0.0, 0.2, 0.05]), typical_p=torch.tensor([0.95, 1.0, 0.5]))
    out.append(("wide per-row warpers", wide.to(torch.bfloat16), splits_for(40000, 6, 1), per_row))
    return out


@pytest.mark.parametrize("name,logits,bounds,kwargs", simulated_cases(), ids=[c[0] for c in simulated_cases()])
def test_simulated_ranks_match_one_device(name, logits, bounds, kwargs):
    """The steps of every rank in one process (collectives computed by the test): the same tokens
    as syncfree.sample, the logprobs to float rounding."""
    want = one_device(logits, kwargs, return_valid=True)
    for tokens, logprobs, valid in simulate(logits, bounds, return_valid=True, **kwargs):
        assert torch.equal(tokens, want[0]), f"{tokens} vs {want[0]}"
        torch.testing.assert_close(logprobs, want[1], atol=1e-4, rtol=1e-4)
        assert torch.equal(valid, want[2])


def test_processing_is_the_single_device_processing():
    """Processing on shards: the tokens and logprobs of syncfree.sample on the whole rows, whose
    processing changes the answer (a test that ignored it on a shard would fail), for cuts at
    group (16) and mask word (32) boundaries and off them."""
    name, logits, kwargs = processing_cases(torch.randn(8, 2000, generator=torch.Generator().manual_seed(8)) * 3,
                                            torch.Generator().manual_seed(9))[1]
    plain = {k: v for k, v in kwargs.items() if k in ("temperature", "top_k", "top_p", "min_p", "seed", "offset")}
    want = one_device(logits, kwargs, return_valid=True)
    assert not torch.equal(want[0], one_device(logits, plain)[0])
    assert want[2].tolist() == [True, False] + [True] * 6  # row 1: the mask empties it
    for bounds in ([(0, 32), (32, 48), (48, 2000)], [(0, 7), (7, 1003), (1003, 1999), (1999, 2000)],
                   [(1500, 2000), (0, 16), (16, 1500)]):
        for tokens, logprobs, valid in simulate(logits, bounds, return_valid=True, **kwargs):
            assert torch.equal(tokens, want[0])
            torch.testing.assert_close(logprobs, want[1], atol=1e-4, rtol=1e-4)
            assert torch.equal(valid, want[2])


@pytest.mark.parametrize("mode", ["processed", "raw"])
def test_top_logprobs_are_the_single_device_ones(mode):
    """Top-n over shards: each rank's best n under the merged norm, all-gathered and merged, are
    syncfree.sample's top n (ids exactly, logprobs to float rounding), with the chosen token's
    logprob in the same mode; with processing, warpers, greedy rows, +inf and emptied rows."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(8, 2000, generator=g) * 3
    logits[6, [5, 1500]] = INF
    for name, x, kwargs in processing_cases(logits, g):
        for n in (1, 7, 20):
            want = syncfree.sample(x, return_logprobs=True, return_valid=True, return_top_logprobs=n,
                                   logprobs_mode=mode, **kwargs)
            for bounds in ([(0, 5), (5, 1001), (1001, 2000)], [(1990, 2000), (0, 1990)]):
                for rank in simulate(x, bounds, top=(n, mode == "raw"), **kwargs):
                    assert torch.equal(rank[0], want[0]) and torch.equal(rank[2], want[2]), (name, n, bounds)
                    assert torch.equal(rank[3], want[3]), (name, n, bounds, rank[3], want[3])
                    torch.testing.assert_close(rank[1], want[1], atol=1e-4, rtol=1e-4)
                    torch.testing.assert_close(rank[4], want[4], atol=1e-4, rtol=1e-4)


@contextlib.contextmanager
def one_rank_group():
    """A Gloo group of this process alone (no other process, no port)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_one_row_out_and_return_valid():
    """A [L] shard with [K] lists and a [ceil(V / 32)] mask, as syncfree.sample takes a [V] row;
    out= receives the tokens (and is what is returned); return_valid as syncfree.sample's."""
    with one_rank_group():
        one_row_out_and_return_valid()


def one_row_out_and_return_valid():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, generator=g)
    mask = torch.randint(-2**31, 2**31, (4,), dtype=torch.int32, generator=g)
    kwargs = dict(temperature=0.7, seed=3, allowed_mask=mask, output_tokens=torch.tensor([5, 60, -1]),
                  presence_penalty=1.5, return_logprobs=True, return_valid=True)
    want = syncfree.sample(x, **kwargs)
    out = torch.full((), -5, dtype=torch.int64)
    got = sd.sample(x, 0, 100, out=out, **kwargs)  # one rank, no group: the whole row
    assert got[0] is out and torch.equal(out, want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    p = syncfree.SamplingParams(temperature=0.7, allowed_mask=torch.zeros(4, dtype=torch.int32))
    assert sd.sample(x, 0, 100, p, seed=3, return_valid=True).valid.item() is False
    want = syncfree.sample(x, p.replace(allowed_mask=mask), seed=3, return_top_logprobs=4, logprobs_mode="raw")
    got = sd.sample(x, 0, 100, p.replace(allowed_mask=mask), seed=3, return_top_logprobs=4, logprobs_mode="raw")
    assert got.top_ids.shape == (4,) and torch.equal(got.top_ids, want.top_ids)
    torch.testing.assert_close(got.top_logprobs, want.top_logprobs)
    with pytest.raises(ValueError, match=re.escape("return_top_logprobs: expected an int in [0, min(20, V)]")):
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, return_top_logprobs=11)
    with pytest.raises(ValueError, match="logprobs_mode"):
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, logprobs_mode="log")
    logits = torch.zeros(2, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="out: overlaps an input"):
        sd.sample(logits, 0, 10, seed=1, out=logits.view(torch.int64)[:, 0])
    with pytest.raises(ValueError, match=re.escape("out: expected shape [2]")):
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, out=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape("allowed_mask: expected shape [B, ceil(V / 32)] = [2, 2]")):
        sd.sample(torch.randn(2, 10), 0, 40, seed=1, allowed_mask=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="output_tokens"):  # an id past the whole vocabulary (the CPU reads ids)
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, output_tokens=torch.tensor([[3], [10]]))


def test_distributed_holds_no_core_constant():
    """syncfree.distributed takes every rule from the extension: its code holds no number but 0
    and 1 (a group size, a digit width or a column layout would be a second copy)."""
    tree = ast.parse(inspect.getsource(sd))
    numbers = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and type(node.value) in (int, float)}
    assert numbers <= {0, 1}, numbers
