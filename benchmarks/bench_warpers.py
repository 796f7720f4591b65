#!/usr/bin/env python
"""Sampling with warpers (top-k, top-p, min-p, typical-p): syncfree against its peers.

    python benchmarks/bench_warpers.py --device cuda [--quick] [--out DIR] [--no-plot]
    python benchmarks/bench_warpers.py --device cpu  [--quick] [--out DIR]
    python benchmarks/bench_warpers.py --replot DIR/results_warpers_cuda.json [--out DIR]
    python benchmarks/bench_warpers.py --device cuda --quick --configs all --batches 1,64 \
        --vocabs 128256 --dtypes float32,bfloat16 --no-plot          # as benchmarks/gpu_check.sh runs it

For every shape and warper configuration (temperature 0.8, the same Python-number
parameters for all rows) it times, side by side in one run:
  syncfree   syncfree.sample with the configuration, per-row seed/offset tensors;
  sf.temp    syncfree.sample with temperature only (same seeds), once per shape: the
             baseline of the 'x temp' ratio (README "Performance targets": top-k +
             top-p + min-p within 3x of it);
  torch.ref  the sort-based PyTorch chain as vLLM / HF transformers write it (float32
             logits / T, torch.sort, masks, HF's typical-p, torch.multinomial);
  fi.logits  FlashInfer from logits / T as vLLM dispatches it: top_k_top_p_sampling_
             from_logits for top-k + top-p, else softmax + the single-filter probs kernel;
  fi.probs   FlashInfer's probs kernel alone, on a precomputed float32 softmax(logits / T)
             (the softmax is not timed, which flatters it). FlashInfer has no kernel for
             typical-p or for min-p combined with top-k/top-p: 'n/a' there.
A method that raises (say NotImplementedError) is reported as 'n/a' with its error.
Next to each syncfree time it prints the CUDA plan's napkin model for the same logits
(tests/cuda_on_cpu/napkin.py, Note [Selection passes on CUDA]): full reads of the row (the
worst row of the batch), kernel launches, and how many rows' candidates fit the buffer,
with the bytes those reads move ('MB read'); on the CPU the SM count of an H100 (132).
Prints a fixed-width summary and writes table_warpers_<device>.txt (the summary plus
one line per method), results_warpers_<device>.json and (with matplotlib, unless
--no-plot) warpers_<device>.png into the output directory; --replot redraws the PNG
from a results file on any machine.
"""

import json
import os
import statistics
import sys
import time

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.append(os.path.join(os.path.dirname(BENCH_DIR), "tests"))  # the napkin model's helper
import _timing as timing  # noqa: E402
from _common import (Method, base_parser, check_device, dtype_name, fmt, grid_from_args,  # noqa: E402
                     make_cases, measure, pyplot, ratio_cell, sync_cell)
from cuda_on_cpu.napkin import select_napkin  # noqa: E402

syncfree, SYNCFREE_MISSING, flashinfer = timing.import_subjects()

TEMPERATURE = 0.8
REFERENCE = "syncfree"   # 'x sf' = method time / syncfree's time for the same configuration
BASELINE = "sf.temp"     # 'x temp' = method time / syncfree temperature-only at the same shape
BAR_CONFIG, BAR_RATIO = "all", 3.0  # README "Performance targets"
IDENTITY = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)

# name -> warper parameters (the rest at their identity values), in the chain's order.
CONFIGS = {
    "k20": dict(top_k=20),
    "k50": dict(top_k=50),
    "k1000": dict(top_k=1000),
    "p0.9": dict(top_p=0.9),
    "p0.95": dict(top_p=0.95),
    "k50+p0.9": dict(top_k=50, top_p=0.9),
    "all": dict(top_k=50, top_p=0.9, min_p=0.05),
    "minp0.05": dict(min_p=0.05),
    "typ0.9": dict(typical_p=0.9),
}


# --- the sort-based PyTorch reference, written plainly -------------------------------------

def torch_reference(logits, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0):
    """temperature -> top-k -> top-p -> min-p -> typical-p, then torch.multinomial."""
    x = logits.float() / TEMPERATURE
    if top_k > 0 or top_p < 1.0 or min_p > 0.0:
        # vLLM's apply_top_k_top_p, descending: one sort serves all three masks.
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        if 0 < top_k < x.shape[-1]:
            kth = sorted_x[..., top_k - 1:top_k]
            sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
        if top_p < 1.0:
            probs = torch.softmax(sorted_x, dim=-1)
            remove = (torch.cumsum(probs, dim=-1) - probs) >= top_p  # mass strictly before
            remove[..., 0] = False  # keep the first
            sorted_x = sorted_x.masked_fill(remove, float("-inf"))
        if min_p > 0.0:
            probs = torch.softmax(sorted_x, dim=-1)
            sorted_x = sorted_x.masked_fill(probs < min_p * probs[..., :1], float("-inf"))
        x = torch.empty_like(x).scatter_(-1, order, sorted_x)
    if typical_p < 1.0:
        # HF transformers' TypicalLogitsWarper (min_tokens_to_keep=1).
        normalized = torch.log_softmax(x, dim=-1)
        p = torch.exp(normalized)
        ent = -(normalized * p).nansum(-1, keepdim=True)
        shifted = torch.abs(-normalized - ent)
        sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
        sorted_logits = x.gather(-1, sorted_indices)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        last_ind = (cumulative < typical_p).sum(dim=-1)
        last_ind.clamp_(max=sorted_scores.shape[-1] - 1)
        sorted_remove = sorted_scores > sorted_scores.gather(-1, last_ind.unsqueeze(-1))
        sorted_remove[..., :1] = False
        remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
        x = x.masked_fill(remove, float("-inf"))
    return torch.multinomial(torch.softmax(x, dim=-1), 1)


# --- methods --------------------------------------------------------------------------------

def flashinfer_methods(cfg):
    """(fi.logits, fi.probs) for one configuration: vLLM's dispatch, and the probs kernel alone."""
    if flashinfer is None:
        return Method("fi.logits", None, "flashinfer not installed"), \
            Method("fi.probs", None, "flashinfer not installed")
    s = flashinfer.sampling
    k, p, m, t = (cfg[n] for n in ("top_k", "top_p", "min_p", "typical_p"))
    softmax = lambda c: torch.softmax(c.scaled, dim=-1, dtype=torch.float32)
    unsupported = "no FlashInfer kernel for this configuration"
    logits_run = probs_run = None
    if t < 1.0 or (m > 0.0 and (k or p < 1.0)):
        pass
    elif k and p < 1.0:
        logits_run = lambda c: s.top_k_top_p_sampling_from_logits(c.scaled, k, p)
        if hasattr(s, "top_k_top_p_sampling_from_probs"):
            probs_run = lambda c: s.top_k_top_p_sampling_from_probs(c.probs, k, p)
    elif k:
        logits_run = lambda c: s.top_k_sampling_from_probs(softmax(c), k)
        probs_run = lambda c: s.top_k_sampling_from_probs(c.probs, k)
    elif p < 1.0:
        logits_run = lambda c: s.top_p_sampling_from_probs(softmax(c), p)
        probs_run = lambda c: s.top_p_sampling_from_probs(c.probs, p)
    elif m > 0.0:
        logits_run = lambda c: s.min_p_sampling_from_probs(softmax(c), m)
        probs_run = lambda c: s.min_p_sampling_from_probs(c.probs, m)
    return Method("fi.logits", logits_run, unsupported), Method("fi.probs", probs_run, unsupported)


def build_methods(cfg, device):
    """The methods timed for one configuration (cfg: all four warper parameters)."""
    sf_missing = f"syncfree not importable ({SYNCFREE_MISSING})"
    methods = [
        Method("syncfree", (lambda c: syncfree.sample(c.logits, TEMPERATURE, seed=c.seed,
                                                      offset=c.offset, **cfg))
               if syncfree is not None else None, sf_missing),
        Method("torch.ref", lambda c: torch_reference(c.logits, **cfg)),
    ]
    if device == "cuda":
        methods += flashinfer_methods(cfg)
    return methods


def baseline_method():
    return Method(BASELINE, (lambda c: syncfree.sample(c.logits, TEMPERATURE, seed=c.seed,
                                                       offset=c.offset))
                  if syncfree is not None else None,
                  f"syncfree not importable ({SYNCFREE_MISSING})")


def cpu_seconds_of_others():
    """(wall s, CPU s spent by every other process plus steal) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    mine = os.times()
    return time.monotonic(), busy - (mine.user + mine.system)


# --- the napkin model -----------------------------------------------------------------------

NAPKIN_SMS = 132  # the CUDA plan's SM count when the run is on the CPU (an H100 SXM)


def napkin(logits, cfg, sm_count):
    """The CUDA selection plan for these logits: worst row's full reads, launches, rows that fit."""
    y = logits.float().cpu() / TEMPERATURE
    rows = [select_napkin(y[b], cfg["top_k"], cfg["top_p"], cfg["min_p"], cfg["typical_p"], rows=y.shape[0],
                          sm_count=sm_count) for b in range(y.shape[0])]
    reads = max(r["full_reads"] for r in rows)
    return dict(reads=reads, launches=rows[0]["launches"], fits=sum(r["fits"] for r in rows),
                mb_read=reads * logits.numel() * logits.element_size() / 1e6)


# --- tables ---------------------------------------------------------------------------------

def long_table(results):
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}  {'config':<10}{'method':<11}{'us':>11}"
             f"{'x temp':>8}{'x sf':>7}{'sync':>6}  note"]
    for r in results:
        sync = sync_cell(r)
        lines.append(f"{r['dtype']:<9}{r['B']:>5}{r['V']:>8}  {r['config']:<10}{r['method']:<11}"
                     f"{fmt(r['us'], '.1f', 11)}{fmt(r['vs_temp'], '.2f', 8)}"
                     f"{fmt(r['vs_syncfree'], '.2f', 7)}{sync:>6}  {r['error']}")
    return lines


def summary_table(results, peers):
    """One line per shape and configuration: syncfree's time, x temp, then peers as x syncfree."""
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}  {'config':<10}{'temp us':>9}{'sf us':>10}{'x temp':>8}"
             f"{'reads':>6}{'launch':>7}{'fit':>6}{'MB read':>9}"
             + "".join(f"{p:>11}" for p in peers),
             "  (x temp: syncfree with the warpers / syncfree temperature-only; reads, launch, fit,"
             " MB read: the CUDA plan's napkin model (full reads of the worst row, kernel launches,"
             " rows whose candidates fit the buffer, bytes of those reads); peer columns:"
             " peer time / syncfree time, or the peer's time where syncfree is n/a;"
             " '!' = synced; '-' = not run)"]
    rows, temp = {}, {}
    for r in results:
        key = (r["dtype"], r["B"], r["V"])
        if r["method"] == BASELINE:
            temp[key] = r
        else:
            rows.setdefault(key + (r["config"],), {})[r["method"]] = r
    for (dtype, batch, vocab, config), row in rows.items():
        sf = row.get(REFERENCE, {})
        t = temp.get((dtype, batch, vocab), {})
        fits = f"{sf['fits']}/{batch}" if "fits" in sf else "-"
        line = (f"{dtype:<9}{batch:>5}{vocab:>8}  {config:<10}{fmt(t.get('us'), '.1f', 9)}"
                f"{fmt(sf.get('us'), '.1f', 10)}{fmt(sf.get('vs_temp'), '.2f', 8)}"
                f"{fmt(sf.get('reads'), 'd', 6)}{fmt(sf.get('launches'), 'd', 7)}{fits:>6}"
                f"{fmt(sf.get('mb_read'), '.1f', 9)}")
        line += "".join(f"{ratio_cell(row.get(p), 'vs_syncfree'):>11}" for p in peers)
        lines.append(line)
    return lines


def config_table(results, configs, peers, device):
    """Per configuration over all shapes: syncfree's x temp (median, worst) and peers' x sf."""
    lines = [f"{'config':<10}{'x temp med':>11}{'max':>7}  {'worst at':<22}"
             + "".join(f"{p + ' med':>15}{'min':>7}" for p in peers),
             "  (x temp: syncfree / syncfree temperature-only; peers: peer / syncfree,"
             " median and min over shapes (min < 1 means a peer was faster somewhere))"]
    for config in configs:
        rows = [r for r in results if r["config"] == config]
        sf = [r for r in rows if r["method"] == REFERENCE and r["vs_temp"] is not None]
        line = f"{config:<10}"
        if sf:
            worst = max(sf, key=lambda r: r["vs_temp"])
            line += (f"{statistics.median(r['vs_temp'] for r in sf):>11.2f}{worst['vs_temp']:>7.2f}"
                     f"  {worst['dtype'] + ' ' + str(worst['B']) + 'x' + str(worst['V']):<22}")
        else:
            line += f"{'n/a':>11}{'n/a':>7}  {'':<22}"
        for p in peers:
            vals = [r["vs_syncfree"] for r in rows if r["method"] == p and r["vs_syncfree"] is not None]
            line += (f"{statistics.median(vals):>15.2f}{min(vals):>7.2f}" if vals
                     else f"{'n/a':>15}{'n/a':>7}")
        lines.append(line)
    sf_bar = [r for r in results if r["config"] == BAR_CONFIG and r["method"] == REFERENCE]
    ratios = [r["vs_temp"] for r in sf_bar if r["vs_temp"] is not None]
    if not ratios:
        verdict = "not measured (syncfree n/a)"
    else:
        verdict = (f"worst {max(ratios):.2f}x over {len(ratios)} shapes -> "
                   + ("met" if max(ratios) <= BAR_RATIO else "NOT met"))
        if len(ratios) < len(sf_bar):
            verdict += f" ({len(sf_bar) - len(ratios)} shapes n/a)"
    lines.append(f"Performance target, top-k + top-p + min-p ('{BAR_CONFIG}') within {BAR_RATIO:g}x of "
                 f"temperature-only: {verdict}"
                 + (" (the bar is set for CUDA; on the CPU for information)" if device == "cpu" else ""))
    return lines


# --- plot -----------------------------------------------------------------------------------

def write_plot(path, results, meta, configs):
    plt = pyplot()
    if plt is None:
        return False
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    methods = list(dict.fromkeys(r["method"] for r in results))
    fig, axes = plt.subplots(2, len(dtypes), figsize=(7 * len(dtypes), 10), squeeze=False)
    for col, dtype in enumerate(dtypes):
        rows = [r for r in results if r["dtype"] == dtype and r["us"] is not None]
        # Top: syncfree with each configuration, as a multiple of its temperature-only time.
        ax = axes[0][col]
        for config in configs:
            points = sorted((r["B"] * r["V"], r["vs_temp"]) for r in rows
                            if r["config"] == config and r["method"] == REFERENCE
                            and r["vs_temp"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=config)
        ax.axhline(BAR_RATIO, color="red", linestyle="--", label=f"target for '{BAR_CONFIG}'")
        ax.axhline(1.0, color="gray", linestyle=":")
        ax.set(xscale="log", xlabel="B * V", ylabel="syncfree time / temperature-only time",
               title=f"{meta.get('device_name', '?')} - {dtype}: syncfree with warpers")
        # Bottom: every method on the full chain ('all'), and the temperature-only baseline.
        ax = axes[1][col]
        for name in methods:
            points = sorted((r["B"] * r["V"], r["us"]) for r in rows if r["method"] == name
                            and r["config"] in (BAR_CONFIG, "temp"))
            if points:
                ax.plot(*zip(*points), marker="o",
                        label=name if name == BASELINE else f"{name} ({BAR_CONFIG})")
        ax.set(xscale="log", yscale="log", xlabel="B * V", ylabel="us per call (median)",
               title=f"{dtype}: top-k 50 + top-p 0.9 + min-p 0.05, T={TEMPERATURE}")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def replot(results_path, out_dir):
    with open(results_path) as f:
        data = json.load(f)
    device = data["results"][0]["device"] if data["results"] else "cpu"
    path = os.path.join(out_dir, f"warpers_{device}.png")
    if write_plot(path, data["results"], data["meta"], list(data["configs"])):
        print(f"wrote {path}")


# --- main -----------------------------------------------------------------------------------

def main():
    parser = base_parser(__doc__)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG (see --replot)")
    parser.add_argument("--replot", metavar="RESULTS_JSON",
                        help="only redraw the PNG from a results_warpers_<device>.json")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        replot(args.replot, args.out)
        return
    device = args.device
    check_device(device)
    config_names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in config_names if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    configs = {name: {**IDENTITY, **CONFIGS[name]} for name in config_names}

    batches, vocabs, dtypes = grid_from_args(args, cpu_quick_vocabs=[32000])
    # On the CPU, one warm-up then at least 3 timed calls: the sort baselines take ~1 s a call.
    cpu_timer = timing.time_cpu_until
    budget_s = (0.03 if args.quick else 0.06) if device == "cuda" else (0.1 if args.quick else 0.5)
    needs = {"scaled", "probs"} if device == "cuda" and flashinfer is not None else set()

    meta = timing.run_meta(device, TEMPERATURE, syncfree, SYNCFREE_MISSING, flashinfer)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else NAPKIN_SMS
    if device == "cpu":
        others_start = cpu_seconds_of_others()
    print("configurations: " + "  ".join(
        f"{n}=" + ",".join(f"{k}={v}" for k, v in CONFIGS[n].items()) for n in config_names))

    results = []
    peers = []
    for dtype in dtypes:
        dname = dtype_name(dtype)
        for batch in batches:
            for vocab in vocabs:
                cases = make_cases(batch, vocab, dtype, device, needs, TEMPERATURE)
                base = dict(device=device, dtype=dname, B=batch, V=vocab, rotation=len(cases))
                us, synced, error = measure(baseline_method(), cases, device, budget_s, cpu_timer)
                temp_us = us
                shape_rows = [dict(base, config="temp", method=BASELINE, us=us, synced=synced,
                                   error=error, vs_temp=1.0 if us else None, vs_syncfree=None)]
                for config, cfg in configs.items():
                    config_rows = []
                    for m in build_methods(cfg, device):
                        if m.name != REFERENCE and m.name not in peers:
                            peers.append(m.name)
                        us, synced, error = measure(m, cases, device, budget_s, cpu_timer)
                        config_rows.append(dict(base, config=config, method=m.name, us=us,
                                                synced=synced, error=error))
                    sf_us = next((r["us"] for r in config_rows if r["method"] == REFERENCE), None)
                    config_rows[0].update(napkin(cases[0].logits, cfg, sms))
                    for r in config_rows:
                        r["vs_temp"] = r["us"] / temp_us if (r["us"] and temp_us) else None
                        r["vs_syncfree"] = r["us"] / sf_us if (r["us"] and sf_us) else None
                    shape_rows += config_rows
                results += shape_rows
                print(f"  {dname} B={batch} V={vocab}: temp {fmt(temp_us, '.1f', 0)}  " + "  ".join(
                    f"{config} {fmt(r['us'], '.1f', 0)}" for config in configs for r in shape_rows
                    if r["config"] == config and r["method"] == REFERENCE), flush=True)
                del cases
        if device == "cuda":
            torch.cuda.empty_cache()

    if device == "cpu" and others_start is not None:
        # Other processes on the cores spoil the timings (runs beside a build showed calls
        # stretched to multiples of the 8 ms scheduler tick): say how busy they were.
        wall, others = (b - a for a, b in zip(others_start, cpu_seconds_of_others()))
        meta["others_cpu_share"] = others / wall / (os.cpu_count() or 1)
    header = [f"syncfree.sample with warpers, temperature {TEMPERATURE}: {meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  "
              f"threads {meta['threads']}  syncfree {meta['syncfree']}  "
              f"flashinfer {meta['flashinfer'] or 'n/a'}",
              "configurations: " + "  ".join(
                  f"{n}=" + ",".join(f"{k}={v}" for k, v in CONFIGS[n].items()) for n in config_names)]
    if "others_cpu_share" in meta:
        share = meta["others_cpu_share"]
        header.append(f"other processes and steal used {100 * share:.0f}% of the "
                      f"{os.cpu_count()} cores during the run"
                      + (": WARNING, the times are not trustworthy" if share > 0.05 else ""))
    overview = (header + [""] + summary_table(results, peers)
                + [""] + config_table(results, list(configs), peers, device))
    # stdout gets the overview; the file adds one line per method (long on CUDA).
    print("\n" + "\n".join(overview))
    text = "\n".join(overview + ["", "Every method:"] + long_table(results)) + "\n"

    paths = {k: os.path.join(args.out, f"{k}_warpers_{device}.{ext}")
             for k, ext in [("table", "txt"), ("results", "json")]}
    paths["plot"] = os.path.join(args.out, f"warpers_{device}.png")
    with open(paths["table"], "w") as f:
        f.write(text)
    with open(paths["results"], "w") as f:
        json.dump({"meta": meta, "configs": {n: CONFIGS[n] for n in config_names},
                   "results": results}, f, indent=1)
    plotted = not args.no_plot and write_plot(paths["plot"], results, meta, list(configs))
    print("wrote " + ", ".join(p for k, p in paths.items() if k != "plot" or plotted))


if __name__ == "__main__":
    main()
