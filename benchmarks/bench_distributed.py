#!/usr/bin/env python
"""Vocab-parallel sampling: syncfree.distributed.sample against all-gather + sample.

    python benchmarks/bench_distributed.py [--quick] [--device cpu|cuda] [--out DIR] [--no-plot]
    python benchmarks/bench_distributed.py --replot DIR/results_distributed_cuda.json [--out DIR]

For each world size, spawns that many processes (torch.multiprocessing; Gloo on
127.0.0.1 for --device cpu, NCCL with rank r on GPU r for --device cuda: worlds
2, 4, 8 as far as there are GPUs, or a single rank on a one-GPU machine, which
measures the path's own cost), each holding columns [start, end) of the same
[B, V] float32 logits, and times per call, side by side and interleaved:

  sf.dist   syncfree.distributed.sample on the shard (per-row seed/offset tensors, T=0.8;
            rows marked "all" add top_k=50, top_p=0.9, min_p=0.05, typical_p=0.95; rows marked
            "proc" add a grammar-style mask, a 64-token history with the three penalties, the
            chosen token's logprob and the top 20);
  ag+sample dist.all_gather of the [B, L] shards into the full [B, V] logits on every
            rank (padded to the widest shard: Gloo gathers equal sizes only), then
            syncfree.sample on it with the same seeds/offsets.

Each timed call is preceded by a dist.barrier (and on CUDA a synchronize) and
bracketed by time.perf_counter (on CUDA: up to a synchronize after the call);
the figure is rank 0's median after warm-up. Every rank asserts that both methods
return identical tokens on every call. Bytes per rank per call count the results
of the collectives on one rank: an all_gather counts its gathered output (world x
the per-rank input, the rank's own part included), an all_reduce its tensor; wire
traffic depends on the backend's algorithms. Prints a table and writes
table_distributed_{device}.txt, results_distributed_{device}.json and (with matplotlib)
distributed_{device}.png into the output directory.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.join(BENCH_DIR, os.pardir, "tests"))
import _timing as timing  # noqa: E402
from _common import default_out, pyplot  # noqa: E402
from ranks import free_port  # noqa: E402

import syncfree  # noqa: E402
import syncfree.distributed as sd  # noqa: E402

TEMPERATURE = 0.8
WARPERS = dict(top_k=50, top_p=0.9, min_p=0.05, typical_p=0.95)  # the "all" rows
TOP_N = 20  # the "proc" rows' top logprobs
PASS_BINS = (2048, 2048, 1024)  # radix histogram bins per pass (select.h: 11, 11, 10 bits)
DTYPE = torch.float32
GROUP = syncfree._C.group_size  # syncfree.distributed's race group (columns per group)
INPUTS = 3           # distinct logits/seeds per shape, rotated through
WARMUP = 2           # untimed calls of each method per configuration
THREADS = 1          # torch threads per process


def split_bounds(vocab, world, kind):
    """Cut points [0, c1, ..., vocab]. 'even': equal shards (V is divisible by every world here).
    'uneven': rank r's share is proportional to r + 1, cut points moved off multiples of 16 so
    that race groups straddle shards."""
    if kind == "even":
        return [vocab * r // world for r in range(world + 1)]
    total = world * (world + 1) // 2
    cuts = [round(vocab * (r * (r + 1) // 2) / total) for r in range(1, world)]
    cuts = [c + 5 if c % GROUP == 0 else c for c in cuts]
    return [0] + cuts + [vocab]


def processing(batch, vocab, gen, device):
    """The "proc" rows' extra arguments: a mask allowing about half the tokens, a 64-token history
    (global ids) with the three penalties, logprobs and the top TOP_N."""
    mask = torch.randint(-2**31, 2**31, (batch, (vocab + 31) // 32), generator=gen, dtype=torch.int64)
    return dict(allowed_mask=mask.to(torch.int32).to(device),
                output_tokens=torch.randint(0, vocab, (batch, 64), generator=gen).to(device),
                repetition_penalty=1.1, frequency_penalty=0.3, presence_penalty=0.5, return_logprobs=True,
                return_top_logprobs=TOP_N)


def syncfree_bytes(world, batch, elem=4, device="cpu", warpers=None):
    """Bytes of collective results per rank for one syncfree.distributed.sample call, term by term
    as syncfree/distributed.py exchanges them (processing exchanges nothing)."""
    warpers = warpers or {}
    top_n = warpers.get("return_top_logprobs", 0)
    logprobs = warpers.get("return_logprobs", False)
    selections = sum(name in warpers for name in ("top_k", "top_p", "typical_p"))
    return {
        # warpers: the row max and the lowest finite logit (order keys, int64 each) all-reduced per row
        "row_max": batch * 16 if any(name in warpers for name in WARPERS) else 0,
        # typical-p: mass and gap totals (int64 each); top-p's total is its first pass's sum
        "mass_totals": batch * 16 * ("typical_p" in warpers),
        # each selection: 3 radix passes of a [B, bins] histogram all-reduced: int32 counts for
        # top-k, int64 masses for top-p and typical-p
        "histograms": batch * sum(PASS_BINS) * (4 * ("top_k" in warpers) + 8 * (selections - ("top_k" in warpers))),
        # the layout check: all_gather of 6 int64 (vocab_start, width, rows, vocab_size, dtype, kind
        # of call) from every rank; on CUDA only on the first call for a layout
        "tiling_info": world * 6 * 8 if device == "cpu" else 0,
        # the heads: all_gather of every rank's first GROUP columns, [B, GROUP] in the logits dtype
        "heads": world * batch * GROUP * elem,
        # all_reduce MAX of the packed (order key << 31 | 2^31 - 1 - index) per row: the race's best
        # candidate and the raw-argmax candidate of a row scaled to -inf, int64 [B, 2]
        "best_packed": batch * 16,
        # all_reduce MAX of the token raced inside the winning group by its owner, int64 [B]
        "token": batch * 8,
        # logprobs: all_reduce MAX of the chosen token's logit (an order key, int64 [B]); with logprobs
        # or top-n, all_gather of every rank's (max, sum) and +inf count, int64 [B, 2]
        "logprobs": batch * 8 * logprobs + world * batch * 16 * (logprobs or top_n > 0),
        # top-n: all_gather of every rank's best n packed (logprob, id), int64 [B, n]
        "top": world * batch * top_n * 8,
    }


def allgather_bytes(world, batch, max_width, elem=4):
    # all_gather of every rank's [B, L_max] shard: B * V * 4 bytes with an even split,
    # a little more with the uneven one (the padding to the widest shard travels too).
    return world * batch * max_width * elem


@contextlib.contextmanager
def counted_collectives(counter):
    """Adds up the bytes of collective results (as syncfree_bytes counts them) while active."""
    gather, reduce = dist.all_gather, dist.all_reduce

    def all_gather(tensor_list, tensor, *args, **kwargs):
        counter[0] += sum(t.numel() * t.element_size() for t in tensor_list)
        return gather(tensor_list, tensor, *args, **kwargs)

    def all_reduce(tensor, *args, **kwargs):
        counter[0] += tensor.numel() * tensor.element_size()
        return reduce(tensor, *args, **kwargs)

    dist.all_gather, dist.all_reduce = all_gather, all_reduce
    try:
        yield
    finally:
        dist.all_gather, dist.all_reduce = gather, reduce


def sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def run_config(rank, world, batch, vocab, split, kind, budget_s, min_repeats, max_repeats, device="cpu"):
    bounds = split_bounds(vocab, world, split)
    start, end = bounds[rank], bounds[rank + 1]
    widths = [bounds[r + 1] - bounds[r] for r in range(world)]
    max_width = max(widths)
    # The same full logits on every rank (one generator seed), each rank keeping its columns.
    gen = torch.Generator().manual_seed(batch * 1_000_003 + vocab)
    shards, seeds = [], []
    for _ in range(INPUTS):
        full = torch.randn(batch, vocab, generator=gen) * 3
        shards.append(full[:, start:end].contiguous().to(device=device, dtype=DTYPE))
        seeds.append(torch.randint(0, 2**62, (batch,), generator=gen).to(device))
        del full
    offsets = torch.arange(batch, dtype=torch.int64, device=device)
    parts = [torch.empty(batch, max_width, dtype=DTYPE, device=device) for _ in range(world)]  # gather buffers

    warpers = {"-": {}, "all": WARPERS, "proc": processing(batch, vocab, gen, device)}[kind]

    def sf_dist(i):
        out = sd.sample(shards[i], start, vocab, TEMPERATURE, seed=seeds[i], offset=offsets, **warpers)
        return out[0] if isinstance(out, tuple) else out

    def all_gather_sample(i):
        mine = shards[i]
        if mine.shape[1] != max_width:
            mine = F.pad(mine, (0, max_width - mine.shape[1]))
        dist.all_gather(parts, mine)
        logits = torch.cat([p[:, :w] for p, w in zip(parts, widths)], 1)
        out = syncfree.sample(logits, TEMPERATURE, seed=seeds[i], offset=offsets, **warpers)
        return out[0] if isinstance(out, tuple) else out

    methods = [sf_dist, all_gather_sample]
    times = [[], []]
    calls = [0]

    def timed_pair(record):
        i = calls[0] % INPUTS
        calls[0] += 1
        tokens = [None, None]
        for m in ((0, 1) if calls[0] % 2 else (1, 0)):  # alternate which method goes first
            fn = methods[m]
            dist.barrier()
            sync(device)
            t0 = time.perf_counter()
            tokens[m] = fn(i)
            sync(device)
            elapsed = time.perf_counter() - t0
            if record:
                times[m].append(elapsed)
        assert torch.equal(tokens[0], tokens[1]), \
            f"rank {rank}: world {world} B={batch} V={vocab} {split}: {tokens[0]} vs {tokens[1]}"
        return tokens[0]

    for _ in range(WARMUP):
        timed_pair(False)
    # Bytes actually handed to the collectives by one call of syncfree.distributed.sample.
    counter = [0]
    with counted_collectives(counter):
        sf_dist(0)
    # Rank 0 sizes the run from one timed pair; everyone runs the same number of pairs.
    t0 = time.perf_counter()
    timed_pair(False)
    per_pair = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
    dist.broadcast(per_pair, 0)
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(per_pair.item(), 1e-9))))
    for _ in range(repeats):
        token = timed_pair(True)
    # Every rank agrees on the last tokens (both methods already agree on each rank).
    everyone = [torch.empty_like(token) for _ in range(world)]
    dist.all_gather(everyone, token)
    assert all(torch.equal(t, token) for t in everyone), f"ranks disagree: {everyone}"

    sf_terms = syncfree_bytes(world, batch, torch.tensor([], dtype=DTYPE).element_size(), device, warpers)
    sf_total = sum(sf_terms.values())
    ag_total = allgather_bytes(world, batch, max_width, torch.tensor([], dtype=DTYPE).element_size())
    sf_us = 1e6 * statistics.median(times[0])
    ag_us = 1e6 * statistics.median(times[1])
    spread = {f"{name}_{stat}_us": 1e6 * fn(t) for name, t in (("sf_dist", times[0]), ("allgather_sample", times[1]))
              for stat, fn in (("min", min), ("p90", lambda v: sorted(v)[int(0.9 * (len(v) - 1))]))}
    return dict(world=world, B=batch, V=vocab, split=split, warpers=kind, bounds=bounds,
                repeats=repeats,
                sf_dist_us=sf_us, allgather_sample_us=ag_us, time_ratio=ag_us / sf_us,
                sf_dist_bytes=sf_total, sf_dist_bytes_terms=sf_terms, sf_dist_bytes_counted=counter[0],
                allgather_bytes=ag_total, bytes_ratio=ag_total / sf_total, identical=True, **spread)


def collective_latency_us(repeats, device="cpu"):
    """Rank 0's median time of one tiny collective after a barrier (a 4-byte all_reduce, an
    all_gather of int64 [4]): what each of sf.dist's collectives costs at least."""
    small = torch.zeros(1, dtype=torch.int32, device=device)
    info = torch.zeros(4, dtype=torch.int64, device=device)
    parts = [torch.empty_like(info) for _ in range(dist.get_world_size())]
    out = {}
    for name, fn in (("all_reduce", lambda: dist.all_reduce(small)), ("all_gather", lambda: dist.all_gather(parts, info))):
        times = []
        for i in range(repeats + 5):
            dist.barrier()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= 5:
                times.append(time.perf_counter() - t0)
        out[name] = 1e6 * statistics.median(times)
    return out


def worker(rank, world, port, configs, budget_s, min_repeats, max_repeats, result_file, device="cpu"):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(THREADS)
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group("gloo" if device == "cpu" else "nccl", rank=rank, world_size=world)
    try:
        latency_us = collective_latency_us(repeats=60, device=device)
        if rank == 0:
            print(f"  world {world}: after a barrier, a 4-byte all_reduce takes {latency_us['all_reduce']:.0f} us, "
                  f"an all_gather of int64 [4] {latency_us['all_gather']:.0f} us (medians)", flush=True)
        rows = []
        for batch, vocab, split, kind in configs:
            row = run_config(rank, world, batch, vocab, split, kind, budget_s, min_repeats, max_repeats, device)
            row["collective_latency_us"] = latency_us
            rows.append(row)
            if rank == 0:
                print(f"  world {world} B={batch} V={vocab} {split} warpers {row['warpers']}: sf.dist {row['sf_dist_us']:.0f} us, "
                      f"ag+sample {row['allgather_sample_us']:.0f} us ({row['repeats']} repeats), "
                      f"tokens identical", flush=True)
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump(rows, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def human_bytes(n):
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(rows):
    lines = [f"{'world':>5}{'B':>5}{'V':>8}  {'split':<7}{'warpers':<8}{'sf.dist us':>11}{'ag+sample us':>14}{'x sf':>7}"
             f"{'sf.dist B/rank':>16}{'ag B/rank':>12}{'x sf':>9}"]
    for r in rows:
        lines.append(f"{r['world']:>5}{r['B']:>5}{r['V']:>8}  {r['split']:<7}{r['warpers']:<8}{r['sf_dist_us']:>11.0f}"
                     f"{r['allgather_sample_us']:>14.0f}{r['time_ratio']:>7.2f}"
                     f"{human_bytes(r['sf_dist_bytes']):>16}{human_bytes(r['allgather_bytes']):>12}"
                     f"{r['bytes_ratio']:>9.0f}")
    return lines


def plot(rows, path, title):
    """Two panels, x = world size: the time ratio (all-gather + sample / sf.dist) and the bytes
    ratio, one line per (B, V, warpers) on even splits."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["B"], r["V"], r["warpers"]) for r in rows if r["split"] == "even"})
    for b, v, w in series:
        pts = sorted((r["world"], r["time_ratio"], r["bytes_ratio"]) for r in rows
                     if (r["B"], r["V"], r["warpers"], r["split"]) == (b, v, w, "even"))
        label = f"B={b} V={v}" + {"-": "", "all": " all warpers", "proc": " processing + top-20"}[w]
        style = {"-": "-", "all": "--", "proc": ":"}[w]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, marker="o", label=label)
    for ax, what in zip(axes, ("time: all-gather + sample / sf.dist", "bytes per rank: all-gather / sf.dist")):
        ax.set_xlabel("world size")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out())
    parser.add_argument("--quick", action="store_true", help="worlds 2 and 4, B in {1, 8}, V=32000")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: NCCL, one GPU per rank (a single rank on a one-GPU machine)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG (see --replot)")
    parser.add_argument("--replot", metavar="RESULTS_JSON", help="redraw the PNG from a results file and exit")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = args.device
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        meta = saved["meta"]
        device = meta.get("device", "cpu" if meta["backend"] == "gloo" else "cuda")
        print(plot(saved["results"], os.path.join(args.out, f"distributed_{device}.png"),
                   f"syncfree.distributed vs all-gather + sample ({meta['backend']}, {device}), "
                   f"{meta['date_utc']}"))
        return

    if args.quick:
        worlds, batches, vocabs = [2, 4], [1, 8], [32000]
        budget_s, min_repeats, max_repeats = 0.3, 5, 50
    else:
        worlds, batches, vocabs = [2, 4, 8], [1, 8, 64], [32000, 128256]
        budget_s, min_repeats, max_repeats = 1.0, 7, 100
    if device == "cuda":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            sys.exit("--device cuda: no GPU")
        worlds = [w for w in worlds if w <= gpus] or [1]
        batches = sorted(set(batches) | {64, 256}) if not args.quick else batches
    configs = [(b, v, s, "-") for b in batches for v in vocabs for s in ("even", "uneven")]
    # The four warpers together, and processing with logprobs and the top 20, on the largest
    # vocabulary, even split.
    configs += [(b, max(vocabs), "even", kind) for kind in ("all", "proc") for b in batches]
    cores = os.cpu_count() or 1

    meta = timing.run_meta(device, TEMPERATURE, syncfree, "", None)
    backend = "gloo" if device == "cpu" else "nccl"
    meta.update(device=device, cores=cores, threads_per_process=THREADS, backend=backend, dtype=str(DTYPE).replace("torch.", ""),
                warmup=WARMUP, budget_s_per_config=budget_s, inputs_rotated=INPUTS)
    oversub = [w for w in worlds if w * THREADS > cores and device == "cpu"]
    note = (f"note: {cores} CPU cores, {THREADS} torch thread per process; worlds {oversub} run more processes "
            f"than cores, so their CPU timings measure oversubscription (processes taking turns), "
            f"not the scaling of the method.") if oversub else ""
    if note:
        print(note)

    rows = []
    begin = time.perf_counter()
    for world in worlds:
        with tempfile.TemporaryDirectory() as tmp:
            result_file = os.path.join(tmp, "rank0.json")
            mp.start_processes(worker, args=(world, free_port(), configs, budget_s, min_repeats, max_repeats,
                                             result_file, device), nprocs=world, start_method="spawn")
            with open(result_file) as f:
                rows += json.load(f)
    meta["wall_s"] = time.perf_counter() - begin

    mismatched = [r for r in rows if r["sf_dist_bytes_counted"] != r["sf_dist_bytes"]]
    checks = [f"identical: syncfree.distributed.sample and all-gather + syncfree.sample returned the same tokens "
              f"on every rank for every call ({sum(r['repeats'] + WARMUP + 1 for r in rows)} calls each "
              f"over {len(rows)} configurations)"]
    if mismatched:
        checks.append(f"WARNING: the byte formula disagrees with the bytes handed to the collectives in "
                      f"{len(mismatched)} rows (e.g. {mismatched[0]['sf_dist_bytes']} vs "
                      f"{mismatched[0]['sf_dist_bytes_counted']}): syncfree/distributed.py changed?")
    else:
        checks.append("bytes: the per-term formula matches the bytes handed to the collectives in one call, "
                      "counted by wrapping dist.all_gather/all_reduce, in every row")
    example = syncfree_bytes(2, 1, 4, device)
    header = [f"syncfree.distributed benchmark ({backend}, {device}), {meta['dtype']}, temperature {TEMPERATURE}: "
              f"{meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  {cores} cores, "
              f"{THREADS} thread per process, wall {meta['wall_s']:.0f} s"]
    if note:
        header.append(note)
    header += [
        "us: rank 0's median per call after a dist.barrier (perf_counter around the call, on CUDA up to a "
        "synchronize after it); x sf: "
        "ag+sample / sf.dist.",
        "B/rank: bytes of collective results per rank per call (all_gather: gathered output incl. own part; "
        "all_reduce: the tensor).",
        f"  sf.dist = world*48 layout (CPU only: CUDA checks a layout once) + world*B*64 heads + B*24 all-reduces "
        f"(e.g. world 2, B 1: {sum(example.values())} B);",
        "  ag = world*B*L_max*4 (= B*V*4 for even splits; the uneven split pads to the widest shard).",
        "uneven: rank r's share is proportional to r + 1, cut points off multiples of 16.",
        f"warpers all: {WARPERS}; sf.dist adds all-reduces of B*16 row max and lowest + B*16 typical-p totals + radix histograms "
        f"of 2048, 2048, 1024 bins per selection (int32 counts for top-k: B*20 KB; int64 masses for top-p and "
        f"typical-p: B*40 KB each).",
        f"collectives per call without warpers: sf.dist {4 if device == 'cpu' else 3} "
        f"({2 if device == 'cpu' else 1} all_gather, 2 all_reduce), with all four warpers 11 more all_reduce; "
        f"ag+sample 1 all_gather; {backend} latency "
        "after a barrier (4-byte all_reduce / int64[4] all_gather): " + ", ".join(
            f"world {w} {ar:.0f} / {ag:.0f} us" for w, ar, ag in
            sorted({(r['world'], r['collective_latency_us']['all_reduce'], r['collective_latency_us']['all_gather'])
                    for r in rows})),
        "  On CPU these timings are bound by that per-collective latency (loopback TCP, mostly kernel time), "
        "not by bytes; the bytes columns are the transport-independent comparison." if device == "cpu" else
        "  A single rank (one GPU) measures the path's own cost: its kernels, small torch ops and NCCL calls.",
    ]
    text = "\n".join(header + [""] + table(rows) + [""] + checks) + "\n"
    print("\n" + text, end="")

    paths = [os.path.join(args.out, f"table_distributed_{device}.txt"),
             os.path.join(args.out, f"results_distributed_{device}.json")]
    with open(paths[0], "w") as f:
        f.write(text)
    with open(paths[1], "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    picture = None if args.no_plot else plot(
        rows, os.path.join(args.out, f"distributed_{device}.png"),
        f"syncfree.distributed vs all-gather + sample ({backend}, {device}), {meta['date_utc']}")
    if picture:
        paths.append(picture)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
