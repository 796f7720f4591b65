"""The fuzz suite's syncfree.distributed cases: two Gloo ranks (--distributed) and one to six
simulated ranks in one process (--simulated), run through tests/fuzz_cases.py as its other
cases are.
"""
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import syncfree
from fuzz_cases import INF, NAN, draw_processing, draw_row

def _distributed_rank(rank, world, port, batch, examples):
    import os
    import torch.distributed as dist
    import syncfree.distributed as sd
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)

    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        b, v = data.draw(st.integers(1, 4)), data.draw(st.sampled_from([3, 17, 40, 333, 1000]))
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
        full = torch.stack([draw_row(data, v) for _ in range(b)]).to(dtype)
        cut = data.draw(st.integers(1, v - 1)) if v > 1 else 1
        first = data.draw(st.booleans())  # which rank holds the head
        start, end = ((0, cut), (cut, v))[rank if first else 1 - rank]
        kwargs = {}
        t = data.draw(st.sampled_from([0.0, 1e-46, 1e-39, 0.7, 1.0, "tensor"]))
        kwargs["temperature"] = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.3, 1e-39, NAN]),
                                                                 min_size=b, max_size=b))) if t == "tensor" else t
        for name, values in (("top_k", [0, 2, 50]), ("top_p", [1.0, 0.8]), ("min_p", [0.0, 0.1]),
                             ("typical_p", [1.0, 0.7])):
            kwargs[name] = data.draw(st.sampled_from(values))
        rng = data.draw(st.sampled_from(["int", "tensor", "generator"]))
        if rng == "int":
            kwargs.update(seed=data.draw(st.integers(0, 2**40)), offset=data.draw(st.integers(0, 99)))
        elif rng == "tensor":
            kwargs.update(seed=torch.arange(b) * 3 + data.draw(st.integers(0, 99)), offset=torch.arange(b))
        processing_ok = draw_processing(data, kwargs, b, b, v, emulated=False) if data.draw(st.booleans()) else True
        if rank == 0:
            print(f"case: distributed {dtype}{(b, v)} shards {(0, cut, v)} {kwargs} rng={rng}", flush=True)
        single = dict(kwargs)
        if rng == "generator":
            s = data.draw(st.integers(0, 2**40))
            kwargs["generator"], single["generator"] = torch.Generator().manual_seed(s), torch.Generator().manual_seed(s)
        bad = data.draw(st.sampled_from([None] * 6 + ["top_p", "temperature", "dtype"]))
        local = full[:, start:end]
        if bad == "dtype":  # ranks disagree: both must raise, neither may hang in a collective
            if rank == 1:
                local = local.to(torch.float16 if dtype != torch.float16 else torch.float32)
        elif bad is not None:
            kwargs[bad] = {"top_p": 0.0, "temperature": -1.0}[bad]
        n, mode = data.draw(st.sampled_from([0, 1, min(5, v)])), data.draw(st.sampled_from(["processed", "raw"]))
        top = dict(return_top_logprobs=n, logprobs_mode=mode)
        try:
            tokens, logprobs, valid, *top_n = sd.sample(local, start, v, return_logprobs=True, return_valid=True,
                                                        **kwargs, **top)
        except (ValueError, TypeError) as e:
            assert not processing_ok or (bad is not None and f"{'local_logits' if bad == 'dtype' else bad}:" in str(e)), e
            return
        assert bad is None and processing_ok, f"rank {rank}: {bad} or invalid processing was accepted"
        want, want_lp, want_valid, *want_top = syncfree.sample(full, return_logprobs=True, return_valid=True, **single,
                                                               **top)
        assert torch.equal(tokens, want), f"rank {rank}: {tokens.tolist()} against one device's {want.tolist()}"
        torch.testing.assert_close(logprobs, want_lp, atol=1e-4, rtol=1e-4)
        assert torch.equal(valid, want_valid)
        if n:
            assert torch.equal(top_n[0], want_top[0]), f"rank {rank}: top ids {top_n[0].tolist()} vs {want_top[0]}"
            torch.testing.assert_close(top_n[1], want_top[1], atol=1e-4, rtol=1e-4)

    try:
        fuzz()
    finally:
        dist.destroy_process_group()


def run_distributed(batch, examples):
    import torch.multiprocessing as mp
    from ranks import free_port
    mp.start_processes(_distributed_rank, args=(2, free_port(), batch, examples), nprocs=2, start_method="spawn")
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)


def run_simulated(batch, examples):
    """syncfree.distributed over 1 to 6 simulated ranks in one process (tests/ranks.py): any cut of
    the vocabulary, shards in any order, every argument kind; each rank's tokens must equal one
    device's and its logprobs agree to float rounding."""
    from ranks import one_device, simulate

    @seed(batch)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        b, v = data.draw(st.integers(1, 4)), data.draw(st.sampled_from([1, 3, 17, 40, 333, 1000, 4099]))
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
        full = torch.stack([draw_row(data, v) for _ in range(b)]).to(dtype)
        ranks = data.draw(st.integers(1, min(6, v)))
        cuts = sorted(data.draw(st.sets(st.integers(1, v - 1), min_size=ranks - 1, max_size=ranks - 1))) if v > 1 else []
        bounds = list(zip([0] + cuts, cuts + [v]))
        bounds = data.draw(st.permutations(bounds))  # ranks hold their shards in any order
        kwargs = {}
        t = data.draw(st.sampled_from([0.0, 1e-46, 1e-39, 0.7, 1.0, 50.0, "tensor"]))
        kwargs["temperature"] = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.3, 1e-39, NAN, INF]),
                                                                 min_size=b, max_size=b))) if t == "tensor" else t
        for name, values in (("top_k", [0, 1, 2, 50, 10**6]), ("top_p", [1.0, 0.8, 0.3]), ("min_p", [0.0, 0.1, 1.0]),
                             ("typical_p", [1.0, 0.7, 0.2])):
            if data.draw(st.booleans()):
                kwargs[name] = data.draw(st.sampled_from(values))
            elif data.draw(st.booleans()):  # per-row values, out-of-range ones clamped (README "Bad input")
                row_values = st.sampled_from(values + ([-3] if name == "top_k" else [NAN, -0.5, 1.5]))
                tensor = torch.tensor(data.draw(st.lists(row_values, min_size=b, max_size=b)))
                kwargs[name] = tensor if name == "top_k" else tensor.float()
        rng = data.draw(st.sampled_from(["int", "tensor", "generator"]))
        if rng == "int":
            kwargs.update(seed=data.draw(st.integers(0, 2**40)), offset=data.draw(st.integers(0, 99)))
        elif rng == "tensor":
            kwargs.update(seed=torch.arange(b) * 3 + data.draw(st.integers(0, 99)), offset=torch.arange(b))
        else:
            kwargs["generator_seed"] = data.draw(st.integers(0, 2**40))
        # Processing over global ids and a whole-row mask (Note [Processing on a shard]).
        processing_ok = draw_processing(data, kwargs, b, b, v, emulated=False) if data.draw(st.booleans()) else True
        print(f"case: simulated {dtype}{(b, v)} shards {bounds} {kwargs}", flush=True)
        if not processing_ok:  # raised on every rank, as by one device
            for call in (lambda: one_device(full, kwargs), lambda: simulate(full, bounds, **kwargs)):
                try:
                    call()
                except (ValueError, TypeError):
                    continue
                raise AssertionError("invalid processing was accepted")
            return
        n = data.draw(st.sampled_from([n for n in (0, 0, 1, 3, min(20, v)) if n <= v]))  # n <= V
        raw = data.draw(st.booleans())
        single = {k: w for k, w in kwargs.items() if k != "generator_seed"}
        if "generator_seed" in kwargs:
            single["generator"] = torch.Generator().manual_seed(kwargs["generator_seed"])
        want = syncfree.sample(full, return_logprobs=True, return_valid=True, return_top_logprobs=n,
                               logprobs_mode="raw" if raw else "processed", **single)
        want = want if n else (*want, None, None)
        # out=: a strided column of a wider tensor on some cases; the tokens land there, nowhere else.
        outs = []
        out = (lambda: outs.append(torch.full((b, 2), -7)) or outs[-1][:, 0]) if data.draw(st.booleans()) else None
        for rank, got in enumerate(simulate(full, bounds, top=(n, raw), out=out, **kwargs)):
            assert torch.equal(got[0], want[0]), f"rank {rank}: {got[0].tolist()} against one device's {want[0].tolist()}"
            if out is not None:
                assert got[0].data_ptr() == outs[rank].data_ptr() and (outs[rank][:, 1] == -7).all()
            torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
            assert torch.equal(got[2], want[2])
            if n:  # top ids exactly (ranked by (logprob, id)), their logprobs to float rounding
                assert torch.equal(got[3], want[3]), f"rank {rank}: top ids {got[3].tolist()} vs {want[3].tolist()}"
                torch.testing.assert_close(got[4], want[4], atol=1e-4, rtol=1e-4)

    fuzz()
    print(f"fuzz batch {batch}: {examples} cases passed", flush=True)
