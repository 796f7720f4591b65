#!/usr/bin/env python
"""Every CUDA kernel of syncfree, launched on small shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python -P benchmarks/sanitizer_driver.py
    python benchmarks/sanitizer_driver.py --device cpu        # the same calls on the CPU: a dry run

Kernels and the variants reached (csrc/cuda/*.cu):
  syncfree_sample_kernel<T, kProbs, kVec>   float/half/bf16 logits and probs; 16-byte loads (aligned
                                            rows) and scalar loads (misaligned base, odd row stride);
                                            a row in one block and a B=1 row split over several blocks
                                            (ticket counters, then the graph's memset workspace);
  syncfree_select_pass_kernel<T>            the warpers' scan, mass and compaction passes (split rows:
                                            global histograms and tickets; candidates that fit and
                                            candidates that overflow the buffer);
  syncfree_select_and_sample_kernel<T>      each warper alone and all four, per-row values, the race
                                            over compacted candidates and the full-row fallback;
  syncfree_apply_thresholds_kernel<T>       syncfree.warp with and without warpers, scaled_logits;
  syncfree_resolve_group_kernel<T, false>   the race on shards (syncfree.distributed's steps);
  syncfree_shard_pass_kernel<T>, syncfree_shard_rows_kernel   every step of those calls (csrc/cuda/shard_cuda.cu);
  syncfree_verify_positions_kernel<T, kProcess>, syncfree_verify_finish_kernel<T, kProcess>   verify_draft, verify_tree;
  syncfree_build_exceptions_kernel, the kProcess variants, syncfree_top_pass_kernel<T>,
  syncfree_top_finish_kernel<T>             processing (mask, bias, penalties) and top-n / raw
                                            logprobs, rows split and not, candidates fitting and not.
Noise from per-row seed/offset tensors, an int seed, the default generator and a user generator.

Seeded results are compared with the CPU path (tokens and valid flags bit for bit, logprobs to
1e-4), so a wrong result is caught as well as a bad access: the exit status is 3 when any differ
(compute-sanitizer's own --error-exitcode covers what it finds). Graph capture is skipped when
PYTORCH_NO_CUDA_MEMORY_CACHING=1 (every allocation a cudaMalloc, which memcheck bounds exactly,
but which cannot run during capture).
"""
import argparse
import os
import sys
import time

import torch

import syncfree

INF = float("inf")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SMALL_V = 1000
# sample_cuda.cu splits a row into chunks of at least kMinChunk = 512 threads x 16 tokens = 8192
# tokens when there are few rows (blocks wanted = 2 per SM / rows): at B = 1 this vocabulary
# takes ceil(40001 / 8192) = 5 blocks on any GPU with 3 SMs or more. 40001 = 2500 groups of 16
# plus a one-token tail group (scalar loads after the 16-byte ones).
SPLIT_V = 40001
MIN_CHUNK = 512 * 16
WARPERS = {"top_k": dict(top_k=20), "top_p": dict(top_p=0.9), "min_p": dict(min_p=0.05),
           "typical_p": dict(typical_p=0.9), "all": dict(top_k=50, top_p=0.9, min_p=0.02, typical_p=0.95)}


def make_logits(b, v, dtype=torch.float32, seed=0, edge_rows=False):
    """[b, v] logits on the CPU; edge_rows: masked tokens, an all-masked row, +inf and NaN entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * 3
    if edge_rows and b >= 4:
        x[0, ::37] = -INF
        x[1] = -INF               # degenerate: token 0, valid False
        x[2, [5, v - 3]] = INF    # +inf wins, lowest index first
        x[3, : v // 2] = float("nan")
    return x.to(dtype)


def splits(rows, vocab, sms):
    """The number of blocks sample_cuda.cu gives each row (split_row in csrc/core/tiling.h)."""
    wanted = min(-(-(sms * 2) // rows), 512)
    return max(1, min(wanted, -(-vocab // MIN_CHUNK)))


class Run:
    """The device under test, the CPU reference, and the record of what was compared."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.checks = 0
        self.mismatches = []

    def on(self, value):
        return value.to(self.device) if isinstance(value, torch.Tensor) else value

    def kwargs_on(self, kwargs):
        return {k: self.on(v) for k, v in kwargs.items()}

    def equal(self, what, got, want):
        self.checks += 1
        got = got.cpu() if isinstance(got, torch.Tensor) else got
        if not torch.equal(got, want):
            self.mismatches.append(what)
            print(f"  MISMATCH {what}:\n    {self.device}: {got.flatten()[:8].tolist()}\n"
                  f"    cpu: {want.flatten()[:8].tolist()}", flush=True)

    def close(self, what, got, want, tol=1e-4):
        self.checks += 1
        got = got.cpu()
        if not torch.allclose(got, want, atol=tol, rtol=tol, equal_nan=True):
            self.mismatches.append(what)
            print(f"  MISMATCH {what}: max |diff| {(got - want).abs().nan_to_num().max().item():.3g}", flush=True)

    def in_range(self, what, tokens, vocab):
        self.checks += 1
        tokens = tokens.cpu()
        if not ((tokens >= 0) & (tokens < vocab)).all():
            self.mismatches.append(what)
            print(f"  MISMATCH {what}: token out of [0, {vocab}): {tokens.tolist()[:8]}", flush=True)

    def sample_vs_cpu(self, what, x_dev, x_cpu, *args, **kwargs):
        """syncfree.sample on the device against the CPU, with every output requested."""
        got = syncfree.sample(x_dev, *[self.on(a) for a in args], return_logprobs=True, return_valid=True,
                              **self.kwargs_on(kwargs))
        want = syncfree.sample(x_cpu, *args, return_logprobs=True, return_valid=True, **kwargs)
        self.equal(what + " tokens", got[0], want[0])
        self.close(what + " logprobs", got[1], want[1])
        self.equal(what + " valid", got[2], want[2])


# --- sections -------------------------------------------------------------------------------

def section_sample(run):
    """The race over logits: dtypes, one block or a split row, noise sources, greedy rows."""
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        for b, v in ((6, SMALL_V), (1, SPLIT_V)):
            x = make_logits(b, v, dtype, seed=b, edge_rows=True)
            xd = run.on(x)
            what = f"sample {name} {b}x{v}"
            seeds, offsets = torch.arange(b) * 7 + 1, torch.arange(b) + 2
            temps = torch.linspace(0.0, 1.5, b) if b > 1 else torch.tensor([0.7])  # row 0 greedy
            run.sample_vs_cpu(what + " seed tensors", xd, x, 0.8, seed=seeds, offset=offsets)
            run.sample_vs_cpu(what + " per-row temperature", xd, x, temps, seed=5, offset=3)
            run.sample_vs_cpu(what + " greedy", xd, x, 0.0)
            out = torch.empty(b, dtype=torch.int64, device=run.device)
            syncfree.sample(xd, 1.3, seed=11, out=out)
            run.equal(what + " out=", out, syncfree.sample(x, 1.3, seed=11))
            # The default generator and a user generator: not comparable with the CPU's mt19937.
            run.in_range(what + " default generator", syncfree.sample(xd, 0.9), v)
            gen = torch.Generator(device=run.device).manual_seed(3)
            run.in_range(what + " user generator", syncfree.sample(xd, temps.to(run.device), generator=gen), v)
            if run.cuda:  # README: an int seed is a freshly seeded CUDA generator
                run.equal(what + " int seed == fresh generator", syncfree.sample(xd, seed=77),
                          syncfree.sample(xd, generator=torch.Generator(device=run.device).manual_seed(77)).cpu())
        # One row as a [V] tensor, and many short rows (more blocks than rows at B = 1).
        row = make_logits(1, SMALL_V, dtype, seed=9)[0]
        run.equal(f"sample {name} [V]", syncfree.sample(run.on(row), seed=2), syncfree.sample(row, seed=2))
        many = make_logits(700, 40, dtype, seed=10)
        run.equal(f"sample {name} 700x40", syncfree.sample(run.on(many), 0.9, seed=2),
                  syncfree.sample(many, 0.9, seed=2))


def section_layouts(run):
    """Row layouts: 16-byte loads with a row stride, and the scalar-load kernel on misaligned rows."""
    views = {
        "aligned rows, stride 1008": lambda t: t[:, :1000],
        "misaligned base": lambda t: t[:, 1:1001],
        "every 2nd row, offset 3": lambda t: t[::2, 3:],
        "stride-0 rows": lambda t: t[0].expand(4, 1008),
    }
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        wide = make_logits(5, 1008, dtype, seed=4)
        wd = run.on(wide)  # views are taken on the device: .to() of a view would copy it contiguous
        for label, view in views.items():
            run.equal(f"layout {name} {label}", syncfree.sample(view(wd), 0.9, seed=4),
                      syncfree.sample(view(wide), 0.9, seed=4))
        split = make_logits(2, SPLIT_V + 8, dtype, seed=5)
        run.sample_vs_cpu(f"layout {name} misaligned split rows", run.on(split)[:, 1:SPLIT_V + 1],
                          split[:, 1:SPLIT_V + 1], 0.9, seed=6, offset=1)


def section_sample_probs(run):
    """syncfree.sample_probs: the kProbs kernels, aligned and misaligned, one block and split."""
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        for b, v in ((6, SMALL_V), (1, SPLIT_V)):
            width = (v + 8) // 8 * 8  # a row stride of 16 bytes' multiple, room for a shifted view
            w = make_logits(b, width, torch.float32, seed=20 + b).softmax(-1).to(dtype)
            if b > 1:
                w[1] = 0  # degenerate row
            wd = run.on(w)
            seeds = torch.arange(b) + 40
            for label, view in (("aligned", lambda t: t[:, :v]), ("misaligned", lambda t: t[:, 1:v + 1])):
                got = syncfree.sample_probs(view(wd), seed=run.on(seeds), offset=run.on(torch.arange(b)),
                                            return_valid=True)
                want = syncfree.sample_probs(view(w), seed=seeds, offset=torch.arange(b), return_valid=True)
                run.equal(f"sample_probs {name} {b}x{v} {label} tokens", got[0], want[0])
                run.equal(f"sample_probs {name} {b}x{v} {label} valid", got[1], want[1])
            run.equal(f"sample_probs {name} {b}x{width} int seed", syncfree.sample_probs(wd, seed=8),
                      syncfree.sample_probs(w, seed=8))
            run.in_range(f"sample_probs {name} {b}x{width} default generator", syncfree.sample_probs(wd), width)


def section_warpers(run):
    """The selection kernel before the race: each warper alone and all four, scalar and per-row."""
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        for b, v in ((4, 3000), (1, SPLIT_V)):
            x = make_logits(b, v, dtype, seed=30 + b, edge_rows=True)
            xd = run.on(x)
            temps = torch.tensor([0.8, 0.0, 1.2, 0.9])[:b] if b > 1 else torch.tensor([0.8])
            for label, config in WARPERS.items():
                run.sample_vs_cpu(f"warpers {name} {b}x{v} {label}", xd, x, temps, seed=torch.arange(b) * 5,
                                  offset=torch.arange(b), **config)
        b, v = 8, 3000
        x = make_logits(b, v, dtype, seed=33)
        g = torch.Generator().manual_seed(4)
        per_row = dict(top_k=torch.tensor([0, 5, 50, 3000, 1, 0, 30, 7]), top_p=torch.rand(b, generator=g),
                       min_p=torch.rand(b, generator=g) * 0.1, typical_p=torch.rand(b, generator=g) + 0.3)
        temps = torch.rand(b, generator=g) * 1.5
        temps[::3] = 0
        run.sample_vs_cpu(f"warpers {name} {b}x{v} per-row values", run.on(x), x, temps, seed=3, **per_row)
        run.in_range(f"warpers {name} {b}x{v} default generator",
                     syncfree.sample(run.on(x), 0.8, **WARPERS["all"]), v)
        # Near-flat rows: ~13000 tokens on each of three values, more candidates than the buffer holds.
        flat = (torch.randint(0, 3, (2, SPLIT_V), generator=g) * 0.25).to(dtype)
        for label in ("top_k", "top_p", "all"):
            run.sample_vs_cpu(f"warpers {name} 2x{SPLIT_V} flat {label}", run.on(flat), flat, 1.0,
                              seed=torch.arange(2), **WARPERS[label])


def section_warp(run):
    """syncfree.warp: the apply kernel alone (no warper) and after the selection kernel."""
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        x = make_logits(6, 3000, dtype, seed=40, edge_rows=True)
        xd = run.on(x)
        temps = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.0, 1.4])
        for label, args, kwargs in (("temperature only", (0.8,), {}), ("top_k", (temps,), WARPERS["top_k"]),
                                    ("all", (temps,), WARPERS["all"])):
            got = syncfree.warp(xd, *[run.on(a) for a in args], **kwargs)
            want = syncfree.warp(x, *args, **kwargs)
            run.equal(f"warp {name} {label} warped", got[0], want[0])
            run.close(f"warp {name} {label} logprobs", got[1], want[1])
        wide = make_logits(3, 3008, dtype, seed=41)
        run.equal(f"warp {name} misaligned rows", syncfree.warp(run.on(wide)[:, 1:3001], 0.7, top_p=0.9)[0],
                  syncfree.warp(wide[:, 1:3001], 0.7, top_p=0.9)[0])


def capture(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def section_graph(run, skip):
    """Calls captured in a CUDA graph and replayed; WarperChain (which captures on CUDA)."""
    if run.cuda and skip:
        print(f"  (capture and replay skipped: {skip})")
        return
    x4 = make_logits(4, 3000, torch.bfloat16, seed=50)
    chain = syncfree.WarperChain(0.8, top_k=40, top_p=0.9)
    for _ in range(2):  # CUDA: capture, then replay; CPU: eager
        warped, logprobs = chain(run.on(x4))
        run.equal("graph WarperChain warped", warped, syncfree.warp(x4, 0.8, top_k=40, top_p=0.9)[0])
    if not run.cuda:
        print("  (capture and replay: CUDA only)")
        return
    # A split row: inside capture the ticket counters come from the graph's own memset workspace.
    x = make_logits(1, SPLIT_V, torch.bfloat16, seed=51)
    xd = run.on(x)
    seeds = run.on(torch.tensor([17]))
    offsets = torch.zeros(1, dtype=torch.int64, device=run.device)
    out = torch.empty(1, dtype=torch.int64, device=run.device)
    for label, config in (("temperature only", {}), ("all warpers", WARPERS["all"])):
        graph = capture(lambda: syncfree.sample(xd, 0.8, seed=seeds, offset=offsets, out=out, **config))
        for step in range(3):
            offsets.fill_(step)
            graph.replay()
            run.equal(f"graph {label} replay {step}", out,
                      syncfree.sample(x, 0.8, seed=torch.tensor([17]), offset=torch.tensor([step]), **config))
    # The default generator: the graph reads its seed and offset from device memory at replay.
    batch = run.on(make_logits(8, SMALL_V, torch.float16, seed=52))
    out8 = torch.empty(8, dtype=torch.int64, device=run.device)
    graph = capture(lambda: syncfree.sample(batch, 0.9, out=out8, top_k=30))
    for step in range(2):
        graph.replay()
        run.in_range(f"graph default generator replay {step}", out8, SMALL_V)
    torch.cuda.synchronize()


def section_shards(run):
    """syncfree.distributed's steps (the race on shards, the local passes, the per-row merges), ranks
    simulated in one process (tests/ranks.py), against the same steps on the CPU."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
    from ranks import simulate
    cases = (("4x3000 in 3 shards", make_logits(4, 3000, torch.float32, seed=60, edge_rows=True),
              [(0, 1000), (1000, 1010), (1010, 3000)]),
             ("1x40001 bf16 in 2 shards", make_logits(1, SPLIT_V, torch.bfloat16, seed=61), [(0, 4100), (4100, SPLIT_V)]))
    for label, x, bounds in cases:
        b = x.shape[0]
        temps = torch.tensor([0.8, 1.1, 0.0, 0.9])[:b] if b > 1 else torch.tensor([0.8])
        for tag, config in (("race", {}), ("warpers", dict(top_k=30, top_p=0.9, min_p=0.02, typical_p=0.9))):
            kwargs = dict(temperature=temps, seed=torch.arange(b) + 3, offset=torch.arange(b), **config)
            want = simulate(x, bounds, **kwargs)
            got = simulate(run.on(x), bounds, **run.kwargs_on(kwargs))
            for rank, ((tokens, logprobs), (want_t, want_lp)) in enumerate(zip(got, want)):
                run.equal(f"shards {label} {tag} rank {rank} tokens", tokens, want_t)
                run.close(f"shards {label} {tag} rank {rank} logprobs", logprobs, want_lp)


def section_verify(run):
    """syncfree.verify_draft and verify_tree: the selection over every position, the positions and
    finish kernels; drafts with and without probabilities, greedy and warped rows, a degenerate
    position, a tree with siblings and padding."""
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        g = torch.Generator().manual_seed(70)
        b, n, v = 4, 3, 3000
        x = (torch.randn(b, n + 1, v, generator=g) * 3).to(dtype)
        x[1, 2] = -float("inf")
        q = torch.softmax(torch.randn(b, n, v, generator=g) * 3, -1)
        ids = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, n)
        ids[0] = x[0, :n].float().argmax(-1)
        temps = torch.tensor([0.8, 1.0, 0.0, 1.2])
        words = (v + 31) // 32
        processed = dict(repetition_penalty=torch.tensor([1.3, 1.0, 1.5, 0.8]), frequency_penalty=0.5,
                         output_tokens=torch.randint(-1, v, (b, 8), generator=g),
                         bias_tokens=torch.randint(0, v, (b, 2), generator=g), bias_values=torch.randn(b, 2) * 3,
                         allowed_mask=torch.randint(-2**31, 2**31, (b, n + 1, words), generator=g,
                                                    dtype=torch.int64).to(torch.int32) | 0x0F0F0F0F)
        for label, draft_probs, config in (("q", q, {}), ("one-hot", None, {}),
                                           ("q warped", q, dict(top_k=40, top_p=0.9, min_p=0.02)),
                                           ("one-hot processed", None, dict(top_k=40, **processed))):
            kwargs = dict(seed=torch.arange(b), offset=torch.arange(b), return_logprobs=True, return_valid=True, **config)
            want = syncfree.verify_draft(x, ids, draft_probs, temps, **kwargs)
            got = syncfree.verify_draft(run.on(x), run.on(ids), run.on(draft_probs), run.on(temps), **run.kwargs_on(kwargs))
            for part, w, r in zip(("tokens", "accepted", "logprobs", "valid"), want, got):
                (run.close if part == "logprobs" else run.equal)(f"verify {name} {label} {part}", r, w)
        # verify_tree over a tree with siblings, padding and a chain (the finish kernel's walk).
        parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 2], [-1, 0, 0, 0], [-1, 0, -1, -1]])
        tree_ids = torch.cat([ids[:, :1], ids], 1)
        tree_q = torch.cat([q[:, :1], q], 1)
        for label, draft_probs in (("q", tree_q), ("one-hot", None)):
            kwargs = dict(seed=torch.arange(b), offset=torch.arange(b), return_logprobs=True, return_valid=True,
                          top_k=40)
            want = syncfree.verify_tree(x, tree_ids, parents, draft_probs, temps, **kwargs)
            got = syncfree.verify_tree(run.on(x), run.on(tree_ids), run.on(parents), run.on(draft_probs),
                                       run.on(temps), **run.kwargs_on(kwargs))
            for part, w, r in zip(("tokens", "path", "accepted", "logprobs", "valid"), want, got):
                (run.close if part == "logprobs" else run.equal)(f"verify_tree {name} {label} {part}", r, w)


def section_processing(run):
    """Mask, bias and penalties with top-20 logprobs in both modes: split and unsplit rows, rows with
    fewer kept tokens than n (the top-n candidates overflow), a degenerate row."""
    for dtype, (b, v) in zip(DTYPES, ((6, SMALL_V), (1, SPLIT_V), (4, 3000))):
        name = str(dtype).replace("torch.", "")
        x = make_logits(b, v, dtype, seed=80)
        g = torch.Generator().manual_seed(81)
        history = torch.randint(-1, v, (b, 40), generator=g)
        allowed = torch.randint(-2**31, 2**31, (b, (v + 31) // 32), generator=g, dtype=torch.int64).to(torch.int32)
        allowed[-1] = 0 if b > 1 else allowed[-1]  # a degenerate row
        process = dict(repetition_penalty=torch.rand(b, generator=g) + 0.6, frequency_penalty=0.4,
                       presence_penalty=torch.randn(b, generator=g), output_tokens=history,
                       prompt_tokens=torch.randint(0, v, (b, 10), generator=g),
                       bias_tokens=torch.randint(-1, v, (b, 5), generator=g), bias_values=torch.randn(b, 5, generator=g),
                       allowed_mask=allowed)
        for mode in ("processed", "raw"):
            for config in ({}, dict(top_k=5, top_p=0.9)):
                kwargs = dict(seed=torch.arange(b), return_logprobs=True, return_valid=True, return_top_logprobs=20,
                              logprobs_mode=mode, **config, **process)
                want = syncfree.sample(x, 0.8, **kwargs)
                got = syncfree.sample(run.on(x), 0.8, **run.kwargs_on(kwargs))
                for part, w, r in zip(("tokens", "logprobs", "valid", "top ids", "top logprobs"), want, got):
                    label = f"processing {name} {mode} {list(config)} {part}"
                    (run.close if "logprobs" in part else run.equal)(label, r, w)
        run.equal(f"processing {name} warp", syncfree.warp(run.on(x), 0.8, top_k=50, **run.kwargs_on(process))[0],
                  syncfree.warp(x, 0.8, top_k=50, **process)[0])


SECTIONS = {"sample": section_sample, "layouts": section_layouts, "sample_probs": section_sample_probs,
            "warpers": section_warpers, "warp": section_warp, "graph": section_graph, "shards": section_shards,
            "verify": section_verify, "processing": section_processing}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-graph-capture", action="store_true", help="skip CUDA-graph capture and replay")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("sanitizer_driver: CUDA is not available; use --device cpu")
    names = [n for n in args.sections.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"sanitizer_driver: unknown sections {unknown}; known: {list(SECTIONS)}")
    skip_graph = ("--no-graph-capture" if args.no_graph_capture else
                  "PYTORCH_NO_CUDA_MEMORY_CACHING=1 (cudaMalloc cannot run during capture)"
                  if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1" else "")
    torch.manual_seed(0)
    run = Run(args.device)
    if run.cuda:
        sms = torch.cuda.get_device_properties(run.device).multi_processor_count
        print(f"sanitizer_driver: {torch.cuda.get_device_name(run.device)}, {sms} SMs: a {SPLIT_V}-token row "
              f"at B=1 runs in {splits(1, SPLIT_V, sms)} blocks, a {SMALL_V}-token row in "
              f"{splits(6, SMALL_V, sms)}", flush=True)
    else:
        print(f"sanitizer_driver: device cpu, torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    for name in names:
        t0, checks = time.perf_counter(), run.checks
        if name == "graph":
            section_graph(run, skip_graph)
        else:
            SECTIONS[name](run)
        if run.cuda:
            torch.cuda.synchronize()
        print(f"  {name:<13} {run.checks - checks:4d} checks  {time.perf_counter() - t0:6.2f} s", flush=True)
    print(f"sanitizer_driver: {run.checks} checks against the CPU in {time.perf_counter() - start:.1f} s, "
          f"{len(run.mismatches)} mismatches", flush=True)
    return 3 if run.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
