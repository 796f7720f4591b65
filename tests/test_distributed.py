"""syncfree.distributed on CPU with Gloo: 2-4 processes, bit-identical to single-process sampling."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import syncfree
import syncfree.distributed as sd

INF = float("inf")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    out.append(("default generator", x, dict(temperature=1.0, generator="default:99")))
    return out


def with_generator(kwargs):
    """Generators cannot cross processes: 'fresh:S' / 'default:S' name one seeded with S."""
    spec = kwargs.get("generator")
    if not isinstance(spec, str):
        return kwargs
    kind, seed = spec.split(":")
    out = dict(kwargs)
    if kind == "fresh":
        out["generator"] = torch.Generator().manual_seed(int(seed))
    else:
        torch.manual_seed(int(seed))
        del out["generator"]
    return out


def splits_for(vocab, world, seed):
    """Uneven cut points, including shards narrower than a group and empty-of-groups shards."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(vocab - 1, generator=g)[: world - 1].add(1).tolist())
    bounds = [0] + cuts + [vocab]
    return [(bounds[r], bounds[r + 1]) for r in range(world)]


def worker(rank, world, port, result_file, layout_seed):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    outcome = {}
    try:
        for name, logits, kwargs in cases():
            vocab = logits.shape[-1]
            # Rank r holds shard (r + layout_seed) % world: ranks need not hold shards in order.
            start, end = splits_for(vocab, world, layout_seed + vocab)[(rank + layout_seed) % world]
            tokens, logprobs = sd.sample(logits[:, start:end], start, vocab, return_logprobs=True,
                                         **with_generator(kwargs))
            outcome[name] = (tokens, logprobs)
        errors = {}
        for name, call in (
                ("vocab_size", lambda: sd.sample(torch.randn(2, 10), 0 if rank == 0 else 3, 13 + rank, seed=1)),
                ("gap", lambda: sd.sample(torch.randn(2, 10), 12 * rank, 10 * world, seed=1)),
                ("batch", lambda: sd.sample(torch.randn(2 + rank, 10), 10 * rank, 10 * world, seed=1))):
            try:
                call()
            except ValueError as e:
                errors[name] = str(e)
        outcome["errors"] = errors
        torch.save(outcome, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,layout_seed", [(2, 0), (3, 1), (4, 2)])
def test_sharded_sampling_is_bit_identical(world, layout_seed):
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "out")
        mp.start_processes(worker, args=(world, free_port(), result_file, layout_seed), nprocs=world,
                           start_method="spawn")
        results = [torch.load(f"{result_file}.{r}") for r in range(world)]
    for name, logits, kwargs in cases():
        expected, expected_lp = syncfree.sample(logits, return_logprobs=True, **with_generator(kwargs))
        for r in range(world):
            tokens, logprobs = results[r][name]
            assert torch.equal(tokens, expected), f"{name}, rank {r}: {tokens} vs {expected}"
            torch.testing.assert_close(logprobs, expected_lp, atol=1e-4, rtol=1e-4)
    for r in range(world):
        errors = results[r]["errors"]
        assert "vocab_size: ranks disagree" in errors["vocab_size"]
        assert "vocab_start: the shards do not tile" in errors["gap"]
        assert "local_logits: every rank must hold the same rows" in errors["batch"]


def test_bad_arguments_without_a_group():
    with pytest.raises(ValueError, match="generator: pass either a generator or a seed"):
        sd.sample(torch.randn(2, 10), 0, 10, seed=1, generator=torch.Generator())
