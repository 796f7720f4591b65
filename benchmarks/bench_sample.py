#!/usr/bin/env python
"""Temperature-only sampling: syncfree against its peers, side by side in one run.

    python benchmarks/bench_sample.py --device cuda [--quick] [--out DIR]
    python benchmarks/bench_sample.py --device cpu  [--quick] [--out DIR]
    python benchmarks/bench_sample.py --device cuda --quick --batches 1,64 --vocabs 128256 \
        --dtypes float32,bfloat16 --methods syncfree,multinomial,exp.eager --no-plot

Prints a fixed-width table and writes table_<device>.txt, results_<device>.json
and (with matplotlib, unless --no-plot) bench_<device>.png into the output directory.
--batches/--vocabs/--dtypes replace the grid's lists and --methods keeps a subset of the
methods (benchmarks/gpu_check.sh uses them for a short run).
GB/s counts one read of the logits (B*V*element size) for every method, so
it is comparable across methods; % copy is that over the measured copy bandwidth.
"""

import json
import os
import sys
import tempfile

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _timing as timing  # noqa: E402
from _common import (Method, base_parser, check_device, dtype_name, fmt, grid_from_args,  # noqa: E402
                     make_cases, measure, pyplot, ratio_cell, short_error, sync_cell)

syncfree, SYNCFREE_MISSING, flashinfer = timing.import_subjects()

TEMPERATURE = 0.8
REFERENCE = "syncfree"  # ratios are peer time / this method's time


def exponential_trick(logits):
    # gpt-fast: logits_to_probs + multinomial_sample_one_no_sync, in the logits' dtype.
    probs = torch.softmax(logits / TEMPERATURE, dim=-1)
    q = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / q, dim=-1)


def build_methods(compile_static):
    sf_missing = f"syncfree not importable ({SYNCFREE_MISSING})"
    fi_missing = "flashinfer not installed"
    sf = syncfree is not None
    fi = flashinfer is not None
    # dynamic=True: one graph per dtype (Dynamo also specialises B=1) rather than one per
    # shape, which keeps compile time inside the run's budget. --compile-static compiles
    # per shape, as a fixed-shape decode loop would.
    compiled_trick = torch.compile(exponential_trick, dynamic=not compile_static)
    return [
        Method("syncfree", (lambda c: syncfree.sample(c.logits, TEMPERATURE)) if sf else None,
               sf_missing),
        Method("sf.seed", (lambda c: syncfree.sample(c.logits, TEMPERATURE, seed=c.seed,
                                                     offset=c.offset)) if sf else None,
               sf_missing, devices=("cuda",)),
        Method("sf.probs", (lambda c: syncfree.sample_probs(c.probs)) if sf else None,
               sf_missing, needs="probs", devices=("cuda",)),
        Method("multinomial",
               lambda c: torch.multinomial(torch.softmax(c.logits.float() / TEMPERATURE, -1), 1)),
        Method("exp.eager", lambda c: exponential_trick(c.logits)),
        Method("exp.compile", lambda c: compiled_trick(c.logits), devices=("cuda",),
               failure_is_per_dtype=True),
        Method("fi.logits",
               (lambda c: flashinfer.sampling.sampling_from_logits(c.scaled)) if fi else None,
               fi_missing, needs="scaled", devices=("cuda",)),
        Method("fi.probs",
               (lambda c: flashinfer.sampling.sampling_from_probs(c.probs)) if fi else None,
               fi_missing, needs="probs", devices=("cuda",)),
        # Not a peer: the floor of one reduction pass over the logits on the host.
        Method("ref.argmax", lambda c: torch.argmax(c.logits, dim=-1), devices=("cpu",)),
    ]


def kernel_blocks(fn):
    """Thread blocks launched per CUDA kernel by one call of fn, read off a profiler trace."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    blocks = {}
    for e in events:
        if e.get("cat") == "kernel" and "grid" in e.get("args", {}):
            x, y, z = e["args"]["grid"]
            blocks[e["name"]] = max(blocks.get(e["name"], 0), x * y * z)
    return blocks


def b1_latency(cases, empty):
    """At B=1, syncfree against an empty kernel, measured the same three ways."""
    run = lambda c: syncfree.sample(c.logits, TEMPERATURE)
    row = {}
    try:  # the spec wants more than one SM busy at B=1 with a large vocabulary
        row["kernel_blocks"] = kernel_blocks(lambda: run(cases[0]))
    except Exception as exc:
        row["kernel_blocks_error"] = short_error(exc)
    for key, timer in [("back_to_back_us", lambda: timing.time_cuda(run, cases, budget_s=0.05)),
                       ("isolated_us", lambda: timing.time_cuda_isolated(run, cases)),
                       ("graph_us", lambda: timing.time_cuda_graph(run, cases))]:
        try:
            row[key] = timer()
            row[key.replace("_us", "_vs_empty")] = row[key] / empty[key]
        except Exception as exc:
            row[key] = None
            row[key.replace("_us", "_error")] = short_error(exc)
    return row


def long_table(results, device):
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}  {'method':<12}{'us':>10}{'GB/s':>9}{'%copy':>7}"
             f"{'x sf':>7}{'sync':>6}  note"]
    for r in results:
        sync = sync_cell(r)
        lines.append(f"{r['dtype']:<9}{r['B']:>5}{r['V']:>8}  {r['method']:<12}"
                     f"{fmt(r['us'], '.1f', 10)}{fmt(r['gbps'], '.1f', 9)}"
                     f"{fmt(r['pct_copy'], '.1f', 7)}{fmt(r['vs_syncfree'], '.2f', 7)}"
                     f"{sync:>6}  {r['error']}")
    return lines


def summary_table(results, method_names):
    """One line per shape: syncfree's time and bandwidth, then each peer as a multiple of it."""
    peers = [m for m in method_names if m != REFERENCE]
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}{'sf us':>9}{'GB/s':>8}{'%copy':>6}"
             + "".join(f"{p:>12}" for p in peers),
             "  (peer columns: peer time / syncfree time; '!' = peer synced; '-' = not run)"]
    by_shape = {}
    for r in results:
        by_shape.setdefault((r["dtype"], r["B"], r["V"]), {})[r["method"]] = r
    for (dtype, batch, vocab), row in by_shape.items():
        ref = row.get(REFERENCE, {})
        line = (f"{dtype:<9}{batch:>5}{vocab:>8}{fmt(ref.get('us'), '.1f', 9)}"
                f"{fmt(ref.get('gbps'), '.1f', 8)}{fmt(ref.get('pct_copy'), '.1f', 6)}")
        for p in peers:
            line += f"{ratio_cell(row.get(p), 'vs_syncfree'):>12}"
        lines.append(line)
    return lines


def b1_table(b1_rows, empty):
    lines = [f"B=1 against an empty kernel (x.add_(1) on one element): back-to-back "
             f"{empty['back_to_back_us']:.1f} us (loop mean {empty['loop_mean_us']:.1f}), "
             f"isolated {empty['isolated_us']:.1f} us, in a CUDA graph {empty['graph_us']:.2f} us",
             f"{'dtype':<9}{'V':>8}{'b2b us':>9}{'x empty':>9}{'isol us':>9}{'x empty':>9}"
             f"{'graph us':>10}{'x empty':>9}  blocks per kernel"]
    for r in b1_rows:
        lines.append(f"{r['dtype']:<9}{r['V']:>8}"
                     f"{fmt(r.get('back_to_back_us'), '.1f', 9)}"
                     f"{fmt(r.get('back_to_back_vs_empty'), '.2f', 9)}"
                     f"{fmt(r.get('isolated_us'), '.1f', 9)}{fmt(r.get('isolated_vs_empty'), '.2f', 9)}"
                     f"{fmt(r.get('graph_us'), '.2f', 10)}{fmt(r.get('graph_vs_empty'), '.2f', 9)}"
                     f"  {' '.join(map(str, r.get('kernel_blocks', {}).values())) or 'n/a'}")
        errors = [v for k, v in r.items() if k.endswith("_error")]
        if errors:
            lines.append(f"{'':17}note: {errors[0]}")
    return lines


def write_plot(path, results, meta, method_names, dtypes):
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        rows = [r for r in results if r["dtype"] == dtype and r["us"] is not None]
        for name in method_names:
            points = sorted((r["B"] * r["V"], r["us"]) for r in rows if r["method"] == name)
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        # The floor: one read of the logits at the measured copy bandwidth.
        sizes = sorted({r["B"] * r["V"] for r in rows})
        elem = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
        if sizes and meta.get("copy_gbps"):
            floor_us = [n * elem / (meta["copy_gbps"] * 1e9) * 1e6 for n in sizes]
            ax.plot(sizes, floor_us, "k--", label="one read at copy bandwidth")
        if sizes and meta.get("empty_kernel"):
            ax.axhline(meta["empty_kernel"]["back_to_back_us"], color="gray", linestyle=":",
                       label="empty kernel, back-to-back")
        ax.set(xscale="log", yscale="log", xlabel="B * V", ylabel="us per call (median)",
               title=f"{meta['device_name']} - {dtype}, T={TEMPERATURE}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--compile-static", action="store_true",
                        help="compile the exponential trick per shape (slower to run)")
    parser.add_argument("--methods", help="comma-separated subset of the methods (default: all for the device)")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args()
    device = args.device
    check_device(device)
    if args.compile_static:
        config = torch._dynamo.config
        limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit_name, 64)
    os.makedirs(args.out, exist_ok=True)

    batches, vocabs, dtypes = grid_from_args(args)
    every_method = build_methods(args.compile_static)
    methods = [m for m in every_method if device in m.devices]
    if args.methods:
        wanted = [n for n in args.methods.split(",") if n]
        unknown = [n for n in wanted if n not in {m.name for m in every_method}]
        if unknown:
            sys.exit(f"--methods: unknown {unknown}; known: {[m.name for m in every_method]}")
        if REFERENCE not in wanted:
            sys.exit(f"--methods: must include {REFERENCE} (the ratios' reference)")
        elsewhere = [n for n in wanted if n not in {m.name for m in methods}]
        if elsewhere:
            print(f"note: --methods {', '.join(elsewhere)}: not run on {device}")
        methods = [m for m in methods if m.name in wanted]
    method_names = [m.name for m in methods]
    budget_s = (0.05 if args.quick else 0.15) if device == "cuda" else (0.5 if args.quick else 1.5)

    meta = timing.run_meta(device, TEMPERATURE, syncfree, SYNCFREE_MISSING, flashinfer)
    meta["copy_gbps"] = timing.copy_bandwidth_gbps(device, nbytes=2**30 if device == "cuda" else 2**28)
    print(f"copy bandwidth (read + write): {meta['copy_gbps']:.0f} GB/s")
    if device == "cuda":
        meta["empty_kernel"] = empty = timing.empty_kernel_us()
        print("empty kernel: " + ", ".join(f"{k} {v:.2f}" for k, v in empty.items()))
    for m in methods:
        if m.run is None:
            print(f"note: {m.name} is n/a: {m.missing}")

    results, b1_rows, failed_per_dtype = [], [], {}
    needs = {m.needs for m in methods if m.run is not None}
    for dtype in dtypes:
        dname = dtype_name(dtype)
        for batch in batches:
            for vocab in vocabs:
                cases = make_cases(batch, vocab, dtype, device, needs, TEMPERATURE)
                logits_bytes = batch * vocab * cases[0].logits.element_size()
                shape_rows = []
                for m in methods:
                    if m.run is None:
                        us, synced, error = None, None, m.missing
                    elif (m.name, dtype) in failed_per_dtype:
                        us, synced, error = None, None, failed_per_dtype[(m.name, dtype)]
                    else:
                        us, synced, error = measure(m, cases, device, budget_s)
                        if us is None and m.failure_is_per_dtype:
                            failed_per_dtype[(m.name, dtype)] = error
                    gbps = None if us is None else logits_bytes / (us * 1e-6) / 1e9
                    shape_rows.append(dict(
                        device=device, dtype=dname, B=batch, V=vocab, method=m.name,
                        us=us, gbps=gbps, pct_copy=None if gbps is None else 100 * gbps / meta["copy_gbps"],
                        synced=synced, error=error, rotation=len(cases)))
                ref_us = next((r["us"] for r in shape_rows if r["method"] == REFERENCE), None)
                for r in shape_rows:
                    r["vs_syncfree"] = r["us"] / ref_us if (r["us"] and ref_us) else None
                results += shape_rows
                print(f"  {dname} B={batch} V={vocab}: " + "  ".join(
                    f"{r['method']} {fmt(r['us'], '.1f', 0)}" for r in shape_rows), flush=True)
                if device == "cuda" and batch == 1 and syncfree is not None:
                    b1_rows.append(dict(dtype=dname, V=vocab, **b1_latency(cases, empty)))
                del cases
        if device == "cuda":
            torch.cuda.empty_cache()
    if device == "cuda":
        meta["copy_gbps_end"] = timing.copy_bandwidth_gbps(device)  # drift check

    header = [f"syncfree.sample benchmark, temperature {TEMPERATURE}: {meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  "
              f"threads {meta['threads']}  copy bandwidth {meta['copy_gbps']:.0f} GB/s"
              + (f" (at end {meta['copy_gbps_end']:.0f})" if "copy_gbps_end" in meta else "")]
    text = header + [""] + long_table(results, device) + [""] + summary_table(results, method_names)
    if b1_rows:
        text += [""] + b1_table(b1_rows, meta["empty_kernel"])
    text = "\n".join(text) + "\n"
    print("\n" + text, end="")

    paths = {k: os.path.join(args.out, f"{k}_{device}.{ext}")
             for k, ext in [("table", "txt"), ("results", "json"), ("bench", "png")]}
    with open(paths["table"], "w") as f:
        f.write(text)
    with open(paths["results"], "w") as f:
        json.dump({"meta": meta, "results": results, "b1_vs_empty_kernel": b1_rows}, f, indent=1)
    plotted = not args.no_plot and write_plot(paths["bench"], results, meta, method_names,
                                              [dtype_name(d) for d in dtypes])
    print("wrote " + ", ".join(p for k, p in paths.items() if k != "bench" or plotted))


if __name__ == "__main__":
    main()
