#!/usr/bin/env python
"""Logit processing in the sampling pass: syncfree against the same pipeline in plain PyTorch.

    python benchmarks/bench_processing.py --device cpu  [--quick] [--out DIR] [--no-plot]
    python benchmarks/bench_processing.py --device cuda [--quick] [--out DIR] [--no-plot]

For every shape and configuration (temperature 0.8, the same parameters for all rows) it
times, in one run: syncfree (syncfree.sample with the configuration, per-row seed/offset
tensors); sf.temp (temperature only: the baseline of 'x temp'; bars: 'all' within 2x of it on
the CPU at 64 x 128,256, within 1.5x on CUDA at B * V >= 16M); torch (the same pipeline in
plain PyTorch as vLLM's sampler writes it: mask bits unpacked + masked_fill, bias by
scatter_add, penalties from a [B, V + 1] scatter_add count and a scatter prompt mask,
temperature, top-k/top-p by sort + cumsum, log_softmax + torch.topk for the top-n, the
exponential race; 'x sf' = its time / syncfree's, CPU bar >= 10x for 'all' at 64 x 128,256).
Configurations: pen = repetition 1.2, frequency 0.5, presence 0.5 over T = 256 output tokens
(half from the row's 64 largest logits, with repeats) and a P = 256 prompt; bias = K = 16
tokens in [-10, 10); mask = random bits (about half allowed); top20 / top20raw = the top-20
logprobs, "processed" / "raw" (top20rank: raw and the chosen token's rank, as vLLM asks);
k50+p0.9 = top-k 50 + top-p 0.9; all = everything; all-top20 = all without the logprobs.
Before timing, each shape checks the PyTorch pipeline against syncfree: greedy ids under mask +
bias + penalties, the top-20 ids and logprobs and the chosen logprob (processed, with and
without top-k + top-p, and raw with the rank), ids differing only between logprobs tied within
1e-4 (the top-p check counts on float32 only: vLLM's top-p cut splits tied logits in sort order,
syncfree keeps ties together, and bfloat16 ties often).
Napkin model next to each time: 'passes' = full reads of the logits (CPU: race, warpers,
logprob stage; CUDA: the sampling kernel, the selection plan's reads of the worst row, the
logprob stage's passes), 'MB read', 'MB extra' (mask, history, bias, exception tables) and
'launch' (the CUDA plan's launches and memsets, for an H100's 132 SMs on the CPU).
Writes table_processing_<device>.txt, results_processing_<device>.json and (with matplotlib,
unless --no-plot) processing_<device>.png into --out.
"""

import dataclasses
import json
import math
import os
import statistics
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _timing as timing  # noqa: E402
from _common import (Case, Method, base_parser, check_device, dtype_name, fmt, grid_from_args,  # noqa: E402
                     make_cases, measure, pyplot, sync_cell)
from bench_warpers import cpu_seconds_of_others  # noqa: E402
from cuda_on_cpu.napkin import select_napkin  # noqa: E402  (tests/, on sys.path through bench_warpers)

syncfree, SYNCFREE_MISSING, _ = timing.import_subjects()

TEMPERATURE = 0.8
REFERENCE = "syncfree"   # 'x sf' = method time / syncfree's time for the same configuration
BASELINE = "sf.temp"     # 'x temp' = method time / syncfree temperature-only at the same shape
PEER = "torch"
BAR_CONFIG = "all"
CPU_BAR_SHAPE = (64, 128256)   # the CPU bars' shape (float32)
CPU_BAR_TEMP, CPU_BAR_TORCH = 2.0, 10.0
GPU_BAR_ELEMENTS, GPU_BAR_TEMP = 16 * 2**20, 1.5

# The processing parameters (the same Python numbers for every row).
HISTORY, PROMPT, BIAS_K, TOP_N = 256, 256, 16, 20
REPETITION, FREQUENCY, PRESENCE = 1.2, 0.5, 0.5

# name -> what the configuration turns on; "temp" (nothing) is the baseline.
CONFIGS = {
    "pen": dict(pen=True),
    "bias": dict(bias=True),
    "mask": dict(mask=True),
    "top20": dict(top_n=TOP_N),
    "top20raw": dict(top_n=TOP_N, raw=True),
    "top20rank": dict(top_n=TOP_N, raw=True, rank=True),
    "k50+p0.9": dict(top_k=50, top_p=0.9),
    "all": dict(pen=True, bias=True, mask=True, top_n=TOP_N, top_k=50, top_p=0.9),
    "all-top20": dict(pen=True, bias=True, mask=True, top_k=50, top_p=0.9),
}
IDENTITY = dict(pen=False, bias=False, mask=False, top_n=0, raw=False, rank=False, top_k=0, top_p=1.0)


@dataclasses.dataclass
class ProcCase:
    """One rotation entry: the logits and seeds (a _common.Case) and their processing inputs."""
    case: Case
    output_tokens: torch.Tensor  # [B, HISTORY] int64
    prompt_tokens: torch.Tensor  # [B, PROMPT] int64
    bias_tokens: torch.Tensor    # [B, BIAS_K] int64, distinct per row
    bias_values: torch.Tensor    # [B, BIAS_K] float32
    allowed_mask: torch.Tensor   # [B, ceil(V / 32)] int32


def make_proc_cases(batch, vocab, dtype, device):
    """make_cases' rotation, each entry with its own history, bias and mask."""
    cases = make_cases(batch, vocab, dtype, device, set(), TEMPERATURE)
    gen = torch.Generator(device=device).manual_seed(batch * 7919 + vocab)
    words = math.ceil(vocab / 32)
    out = []
    for c in cases:
        # Half the output history from the row's 64 largest logits (with repeats, so
        # counts > 1 and the penalties move the top of the row), half uniform.
        top = c.logits.float().topk(min(64, vocab), dim=-1).indices
        pick = torch.randint(0, top.shape[-1], (batch, HISTORY // 2), device=device, generator=gen)
        output = torch.cat([top.gather(-1, pick),
                            torch.randint(0, vocab, (batch, HISTORY - HISTORY // 2), device=device,
                                          generator=gen)], -1)
        output = output[:, torch.randperm(HISTORY, device=device, generator=gen)]
        prompt = torch.randint(0, vocab, (batch, PROMPT), device=device, generator=gen)
        # Distinct bias ids (a duplicate is 'last slot wins' in syncfree, a sum in scatter_add).
        bias_ids = torch.rand(batch, vocab, device=device, generator=gen).topk(BIAS_K, dim=-1).indices
        bias_values = torch.rand(batch, BIAS_K, device=device, generator=gen) * 20 - 10
        mask = torch.randint(-2**31, 2**31 - 1, (batch, words), dtype=torch.int32, device=device,
                             generator=gen)
        out.append(ProcCase(c, output, prompt, bias_ids, bias_values, mask))
    return out


def full_cfg(name):
    return {**IDENTITY, **CONFIGS.get(name, {})}


# --- syncfree -------------------------------------------------------------------------------

def syncfree_kwargs(cfg, pc):
    kw = dict(top_k=cfg["top_k"], top_p=cfg["top_p"])
    if cfg["pen"]:
        kw.update(repetition_penalty=REPETITION, frequency_penalty=FREQUENCY, presence_penalty=PRESENCE,
                  output_tokens=pc.output_tokens, prompt_tokens=pc.prompt_tokens)
    if cfg["bias"]:
        kw.update(bias_tokens=pc.bias_tokens, bias_values=pc.bias_values)
    if cfg["mask"]:
        kw.update(allowed_mask=pc.allowed_mask)
    if cfg["top_n"]:
        kw.update(return_logprobs=True, return_top_logprobs=cfg["top_n"],
                  logprobs_mode="raw" if cfg["raw"] else "processed", return_rank=cfg["rank"])
    return kw


def syncfree_call(cfg, pc, temperature=TEMPERATURE):
    return syncfree.sample(pc.case.logits, temperature, seed=pc.case.seed, offset=pc.case.offset,
                           **syncfree_kwargs(cfg, pc))


# --- the plain PyTorch pipeline, written as vLLM's sampler writes it --------------------------

def apply_allowed_mask(x, allowed_mask):
    """xgrammar's bit layout, unpacked: bit j of word w allows token 32 w + j."""
    bits = torch.arange(32, device=x.device, dtype=torch.int32)
    allowed = ((allowed_mask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)[:, :x.shape[-1]]
    return x.masked_fill_(~allowed, float("-inf"))


def apply_bias(x, bias_tokens, bias_values):
    pad = bias_tokens < 0
    return x.scatter_add_(1, bias_tokens.masked_fill(pad, 0), bias_values.masked_fill(pad, 0.0))


def bin_counts_and_mask(tokens, vocab):
    """vLLM's get_token_bin_counts_and_mask: -1 padding goes to an extra column, dropped."""
    tokens = tokens.masked_fill(tokens < 0, vocab)
    counts = torch.zeros(tokens.shape[0], vocab + 1, dtype=torch.long, device=tokens.device)
    counts.scatter_add_(1, tokens, torch.ones_like(tokens))
    counts = counts[:, :vocab]
    return counts, counts > 0


def apply_penalties(x, prompt_tokens, output_tokens, repetition, frequency, presence):
    """vLLM's apply_penalties (HF repetition rule, OpenAI frequency/presence)."""
    b, vocab = x.shape
    prompt = prompt_tokens.masked_fill(prompt_tokens < 0, vocab)
    prompt_mask = torch.zeros(b, vocab + 1, dtype=torch.bool, device=x.device)
    prompt_mask = prompt_mask.scatter_(1, prompt, True)[:, :vocab]
    counts, output_mask = bin_counts_and_mask(output_tokens, vocab)
    rep = torch.full((b, 1), repetition, device=x.device).repeat(1, vocab)
    rep[~(prompt_mask | output_mask)] = 1.0
    x = torch.where(x > 0, x / rep, x * rep)
    x -= frequency * counts
    x -= presence * output_mask
    return x


def apply_top_k_top_p(x, k, p):
    """vLLM's apply_top_k_top_p: one ascending sort for both, the masks, a scatter back."""
    x_sort, x_idx = x.sort(dim=-1, descending=False)
    if k:
        kth = x_sort.gather(1, torch.full((x.shape[0], 1), x.shape[-1] - k, device=x.device))
        x_sort.masked_fill_(x_sort < kth, float("-inf"))
    if p < 1.0:
        probs_sort = x_sort.softmax(dim=-1)
        probs_sum = torch.cumsum(probs_sort, dim=-1, out=probs_sort)
        remove = probs_sum <= 1 - p
        remove[:, -1] = False  # at least one
        x_sort.masked_fill_(remove, float("-inf"))
    return x.scatter(dim=-1, index=x_idx, src=x_sort)


def process_torch(cfg, pc, temperature):
    """The processed (and warped, unless greedy) float32 logits, scaled by the temperature."""
    x = pc.case.logits.to(torch.float32, copy=True)
    if cfg["mask"]:
        apply_allowed_mask(x, pc.allowed_mask)
    if cfg["bias"]:
        apply_bias(x, pc.bias_tokens, pc.bias_values)
    if cfg["pen"]:
        x = apply_penalties(x, pc.prompt_tokens, pc.output_tokens, REPETITION, FREQUENCY, PRESENCE)
    if temperature == 0:
        return x
    x.div_(temperature)
    if cfg["top_k"] or cfg["top_p"] < 1.0:
        x = apply_top_k_top_p(x, cfg["top_k"], cfg["top_p"])
    return x


def torch_pipeline(cfg, pc, temperature=TEMPERATURE):
    """ids, or (ids, logprob, top ids, top logprobs[, vLLM's rank]) with top-n: what syncfree returns."""
    x = process_torch(cfg, pc, temperature)
    if temperature == 0:
        ids = x.argmax(dim=-1)
    else:
        probs = x.softmax(dim=-1)
        ids = probs.div_(torch.empty_like(probs).exponential_()).argmax(dim=-1)
    if not cfg["top_n"]:
        return ids
    source = pc.case.logits.float() if cfg["raw"] else x
    logprobs = source.log_softmax(dim=-1)
    top = logprobs.topk(cfg["top_n"], dim=-1)
    chosen = logprobs.gather(-1, ids[:, None])
    return (ids, chosen.squeeze(-1), top.indices, top.values) + (((logprobs >= chosen).sum(-1),) if cfg["rank"] else ())


# --- faithfulness check ---------------------------------------------------------------------

def tie_mismatches(ref_logprobs, ref_ids, sf_ids, tol=1e-4):
    """Positions where the ids differ and the reference's logprob of syncfree's id is not
    within tol of its own at that position (a true disagreement, not a tie)."""
    differ = ref_ids != sf_ids
    ref_at_sf = ref_logprobs.gather(-1, sf_ids)
    ref_own = ref_logprobs.gather(-1, ref_ids)
    finite = torch.isfinite(ref_own)
    close = (ref_at_sf - ref_own).abs() <= tol
    both_masked = ~finite & ~torch.isfinite(ref_at_sf)  # masked ranks' order is syncfree's (by id)
    return int((differ & ~(close | both_masked)).sum())


def check_pipeline(pc):
    """Compares the PyTorch pipeline with syncfree on one case; returns (ok, message)."""
    notes, ok = [], True
    # 1. Greedy ids under mask + bias + penalties.
    cfg = {**IDENTITY, "pen": True, "bias": True, "mask": True}
    sf_ids = syncfree_call(cfg, pc, temperature=0.0)
    ref_x = process_torch(cfg, pc, 0.0)
    ref_ids = ref_x.argmax(dim=-1)
    bad = tie_mismatches(ref_x, ref_ids[:, None], sf_ids[:, None])
    ok &= bad == 0
    notes.append(f"greedy ids {int((sf_ids == ref_ids).sum())}/{len(ref_ids)} equal"
                 + (f", {bad} true mismatches" if bad else ""))
    # 2. Top-20 processed under the processing, then under everything, and raw; the chosen
    # token's logprob. Under top-p only float32 counts (the tie rule differs; see the docstring).
    processed = {**IDENTITY, "pen": True, "bias": True, "mask": True, "top_n": TOP_N}
    low_precision = pc.case.logits.dtype != torch.float32
    for name, cfg in (("pen+bias+mask", processed), ("all", full_cfg("all")), ("raw", full_cfg("top20rank"))):
        sf_ids, sf_lp, sf_top, sf_top_lp, *sf_rank = syncfree_call(cfg, pc)
        source = pc.case.logits.float() if cfg["raw"] else process_torch(cfg, pc, TEMPERATURE)
        ref_lp = source.log_softmax(dim=-1)
        ref_top = ref_lp.topk(cfg["top_n"], dim=-1)
        bad = tie_mismatches(ref_lp, ref_top.indices, sf_top)
        finite = torch.isfinite(ref_top.values)
        same_inf = bool((finite == torch.isfinite(sf_top_lp)).all())
        err = (ref_top.values[finite] - sf_top_lp[finite]).abs().max().item() if finite.any() else 0.0
        chosen = ref_lp.gather(-1, sf_ids[:, None]).squeeze(-1)
        lp_err = (chosen - sf_lp).abs().max().item() if torch.isfinite(chosen).all() else float("inf")
        rank_bad = int((sf_rank[0] != (ref_lp >= chosen[:, None]).sum(-1)).sum()) if sf_rank else 0
        good = bad == 0 and same_inf and err <= 1e-3 and lp_err <= 1e-3 and rank_bad == 0
        informative = name == "all" and low_precision
        if not informative:
            ok &= good
        notes.append(f"top-{cfg['top_n']} {'raw' if cfg['raw'] else 'processed (' + name + ')'}: "
                     f"{int((sf_top == ref_top.indices).sum())}/{sf_top.numel()} ids equal, "
                     f"{bad} true mismatches, max |dlogprob| {err:.1e}, chosen {lp_err:.1e}"
                     + (f", ranks {len(sf_ids) - rank_bad}/{len(sf_ids)} equal" if sf_rank else "")
                     + ("" if same_inf else ", -inf positions differ")
                     + (f" ({'agrees' if good else 'differs'}; for information: top-p's tie rule)"
                        if informative else ""))
    return ok, "; ".join(notes)


# --- the napkin model -----------------------------------------------------------------------

NAPKIN_SMS = 132  # the CUDA plan's SM count when the run is on the CPU (an H100 SXM)


def napkin(cfg, pc, device, sm_count):
    """Full reads of the logits, their bytes, the extra bytes (mask, lists, tables), CUDA launches."""
    logits = pc.case.logits
    b, vocab = logits.shape
    logits_bytes = logits.numel() * logits.element_size()
    warped = bool(cfg["top_k"] or cfg["top_p"] < 1.0)
    exceptions = cfg["pen"] or cfg["bias"]
    # One pass (raw: the mass's, its candidates kept; a second only where rounding ties past them).
    top_reads_cpu = 1 if cfg["top_n"] else 0
    top_reads_cuda = (2 + (1 if cfg["raw"] else 0)) if cfg["top_n"] else 0  # scan + compaction (+ raw mass)
    # The rank is counted in the top pass (CPU) and in the scan (CUDA): no read, no launch of its own.
    reads_cuda, launches, fits = 1, 1, b
    if warped:
        y = process_torch({**cfg, "top_k": 0, "top_p": 1.0}, pc, TEMPERATURE).cpu()
        rows = [select_napkin(y[r], cfg["top_k"], cfg["top_p"], 0.0, 1.0, rows=b, sm_count=sm_count) for r in range(b)]
        reads_cuda = max(r["full_reads"] for r in rows)
        launches = rows[0]["launches"]
        fits = sum(r["fits"] for r in rows)
    if exceptions:
        launches += 2  # memset + exception tables
    if cfg["top_n"]:
        launches += 1 + (1 if cfg["raw"] else 0) + 2 + 1  # memset, raw mass, scan, compaction, finish
    reads_cuda += top_reads_cuda
    reads_cpu = 1 + (1 if warped else 0) + top_reads_cpu
    reads = reads_cuda if device == "cuda" else reads_cpu
    # The raw logprob stage reads the unprocessed logits: no mask, no exception bits there.
    processed_reads = reads - ((top_reads_cuda if device == "cuda" else top_reads_cpu) if cfg["raw"] else 0)
    # Extra bytes a row: mask words on every processed read; the id lists (8 B an id, 4 B a bias
    # value); the exception table (16 B slots, 2 per entry rounded up to a power of 2) and bitmap.
    entries = (HISTORY + PROMPT if cfg["pen"] else 0) + (BIAS_K if cfg["bias"] else 0)
    tables = 2 ** max(1, math.ceil(math.log2(2 * max(entries, 1)))) * 16 + processed_reads * math.ceil(vocab / 512) * 4
    extra = b * ((processed_reads * math.ceil(vocab / 32) * 4 if cfg["mask"] else 0) + entries * 8
                 + (BIAS_K * 4 if cfg["bias"] else 0) + (tables if exceptions else 0))
    return dict(reads=reads, launches=launches, fits=fits, mb_read=reads * logits_bytes / 1e6,
                mb_extra=extra / 1e6)


# --- methods --------------------------------------------------------------------------------

def build_methods(cfg):
    sf_missing = f"syncfree not importable ({SYNCFREE_MISSING})"
    return [Method(REFERENCE, (lambda pc: syncfree_call(cfg, pc)) if syncfree is not None else None, sf_missing),
            Method(PEER, lambda pc: torch_pipeline(cfg, pc))]


def baseline_methods():
    """syncfree and the PyTorch pipeline at temperature only."""
    cfg = dict(IDENTITY)
    return [Method(BASELINE, (lambda pc: syncfree_call(cfg, pc)) if syncfree is not None else None,
                   f"syncfree not importable ({SYNCFREE_MISSING})"),
            Method(PEER, lambda pc: torch_pipeline(cfg, pc))]


# --- tables ---------------------------------------------------------------------------------

def peer_cell(r):
    if r is None or r["us"] is None:
        return "n/a" if r is not None else "-"
    return f"{r['us']:.0f}" + ("!" if r["synced"] else "")


def long_table(results):
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}  {'config':<10}{'method':<10}{'us':>12}"
             f"{'x temp':>8}{'x sf':>8}{'sync':>6}  note"]
    for r in results:
        lines.append(f"{r['dtype']:<9}{r['B']:>5}{r['V']:>8}  {r['config']:<10}{r['method']:<10}"
                     f"{fmt(r['us'], '.1f', 12)}{fmt(r['vs_temp'], '.2f', 8)}"
                     f"{fmt(r['vs_syncfree'], '.2f', 8)}{sync_cell(r):>6}  {r['error']}")
    return lines


def summary_table(results, device):
    """One line per shape and configuration: syncfree, x temp, napkin, the pipeline and x sf."""
    reads = "passes" if device == "cpu" else "reads"
    lines = [f"{'dtype':<9}{'B':>5}{'V':>8}  {'config':<10}{'sf us':>11}{'x temp':>8}{'sync':>5}"
             f"{reads:>7}{'MB read':>9}{'MB extra':>9}{'launch':>7}{'torch us':>12}{'x sf':>8}",
             f"  (x temp: / syncfree temperature-only; {reads}, MB read, MB extra, launch: the napkin model"
             " (module docstring); x sf: torch / syncfree, > 1: syncfree faster; '!' synced; '-' not run)"]
    rows = {}
    for r in results:
        rows.setdefault((r["dtype"], r["B"], r["V"], r["config"]), {})[r["method"]] = r
    for (dtype, batch, vocab, config), row in rows.items():
        sf = row.get(BASELINE if config == "temp" else REFERENCE, {})
        peer = row.get(PEER)
        lines.append(f"{dtype:<9}{batch:>5}{vocab:>8}  {config:<10}{fmt(sf.get('us'), '.1f', 11)}"
                     f"{fmt(sf.get('vs_temp'), '.2f', 8)}{sync_cell(sf) if sf else '-':>5}"
                     f"{fmt(sf.get('reads'), 'd', 7)}{fmt(sf.get('mb_read'), '.1f', 9)}"
                     f"{fmt(sf.get('mb_extra'), '.2f', 9)}{fmt(sf.get('launches'), 'd', 7)}"
                     f"{peer_cell(peer):>12}{fmt(peer and peer['vs_syncfree'], '.1f', 8)}")
    return lines


def config_table(results, configs):
    """Per configuration over all shapes: syncfree's x temp (median, worst) and torch / syncfree."""
    lines = [f"{'config':<10}{'x temp med':>11}{'max':>7}  {'worst at':<22}{'x sf med':>10}{'min':>7}",
             "  (over shapes: x temp median and worst, x sf = torch / syncfree median and min)"]
    for config in ["temp"] + configs:
        rows = [r for r in results if r["config"] == config]
        sf = [r for r in rows if r["method"] in (REFERENCE, BASELINE) and r["vs_temp"] is not None]
        line = f"{config:<10}"
        if sf:
            worst = max(sf, key=lambda r: r["vs_temp"])
            line += (f"{statistics.median(r['vs_temp'] for r in sf):>11.2f}{worst['vs_temp']:>7.2f}"
                     f"  {worst['dtype'] + ' ' + str(worst['B']) + 'x' + str(worst['V']):<22}")
        else:
            line += f"{'n/a':>11}{'n/a':>7}  {'':<22}"
        vals = [r["vs_syncfree"] for r in rows if r["method"] == PEER and r["vs_syncfree"] is not None]
        line += f"{statistics.median(vals):>10.1f}{min(vals):>7.1f}" if vals else f"{'n/a':>10}{'n/a':>7}"
        lines.append(line)
    return lines


def parts_line(results, dtype, batch, vocab):
    """Each configuration's x temp at one shape, largest first: what dominates 'all'."""
    parts = sorted(((r["vs_temp"], r["config"]) for r in results
                    if (r["dtype"], r["B"], r["V"]) == (dtype, batch, vocab) and r["method"] == REFERENCE
                    and r["config"] != BAR_CONFIG and r["vs_temp"] is not None), reverse=True)
    return (f"  each configuration alone at {dtype} {batch}x{vocab}, x temp: "
            + ", ".join(f"{c} {v:.2f}x" for v, c in parts)) if parts else None


def bar_lines(results, device):
    """The issue's bars for this device, and what dominates 'all' where they are measured."""
    sf = {(r["dtype"], r["B"], r["V"]): r for r in results
          if r["config"] == BAR_CONFIG and r["method"] == REFERENCE}
    peer = {(r["dtype"], r["B"], r["V"]): r for r in results
            if r["config"] == BAR_CONFIG and r["method"] == PEER}
    if device == "cpu":
        key = ("float32",) + CPU_BAR_SHAPE
        r, p = sf.get(key), peer.get(key)
        shape = f"{CPU_BAR_SHAPE[0]} x {CPU_BAR_SHAPE[1]} float32"
        if r is None:
            return [f"CPU bars: not measured ({shape} is not in the grid)"]
        t = r["vs_temp"]
        x = p["vs_syncfree"] if p else None
        lines = [f"CPU bar, '{BAR_CONFIG}' within {CPU_BAR_TEMP:g}x of temperature-only at {shape}: "
                 + ("n/a" if t is None else f"{t:.2f}x -> " + ("met" if t <= CPU_BAR_TEMP else "NOT met")),
                 f"CPU bar, '{BAR_CONFIG}' >= {CPU_BAR_TORCH:g}x faster than the PyTorch pipeline at {shape}: "
                 + ("n/a" if x is None else f"{x:.1f}x -> " + ("met" if x >= CPU_BAR_TORCH else "NOT met"))]
        return lines + [line for line in [parts_line(results, *key)] if line]
    big = [r for (d, b, v), r in sf.items() if b * v >= GPU_BAR_ELEMENTS and r["vs_temp"] is not None]
    if not big:
        return [f"GPU bar: not measured (no shape with B * V >= {GPU_BAR_ELEMENTS / 2**20:g}M in the grid)"]
    worst = max(big, key=lambda r: r["vs_temp"])
    lines = [f"GPU bar, '{BAR_CONFIG}' within {GPU_BAR_TEMP:g}x of temperature-only at B * V >= "
             f"{GPU_BAR_ELEMENTS / 2**20:g}M: worst {worst['vs_temp']:.2f}x ({worst['dtype']} {worst['B']}x"
             f"{worst['V']}) over {len(big)} shapes -> " + ("met" if worst["vs_temp"] <= GPU_BAR_TEMP else "NOT met")]
    return lines + [line for line in [parts_line(results, worst["dtype"], worst["B"], worst["V"])] if line]


# --- plot -----------------------------------------------------------------------------------

def write_plot(path, results, meta, configs):
    plt = pyplot()
    if plt is None:
        return False
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    fig, axes = plt.subplots(2, len(dtypes), figsize=(7 * len(dtypes), 10), squeeze=False)
    for col, dtype in enumerate(dtypes):
        rows = [r for r in results if r["dtype"] == dtype and r["us"] is not None]
        # Top: syncfree with each configuration, as a multiple of its temperature-only time.
        ax = axes[0][col]
        for config in configs:
            points = sorted((r["B"] * r["V"], r["vs_temp"]) for r in rows
                            if r["config"] == config and r["method"] == REFERENCE and r["vs_temp"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=config)
        bar = CPU_BAR_TEMP if meta.get("device") == "cpu" else GPU_BAR_TEMP
        ax.axhline(bar, color="red", linestyle="--", label=f"bar for '{BAR_CONFIG}'")
        ax.axhline(1.0, color="gray", linestyle=":")
        ax.set(xscale="log", xlabel="B * V", ylabel="syncfree time / temperature-only time",
               title=f"{meta.get('device_name', '?')} - {dtype}: syncfree with processing")
        # Bottom: syncfree and the PyTorch pipeline, temperature-only and everything on.
        ax = axes[1][col]
        for method, config, label in ((BASELINE, "temp", "syncfree, temperature only"),
                                      (REFERENCE, BAR_CONFIG, f"syncfree, {BAR_CONFIG}"),
                                      (PEER, "temp", "PyTorch, temperature only"),
                                      (PEER, BAR_CONFIG, f"PyTorch, {BAR_CONFIG}")):
            points = sorted((r["B"] * r["V"], r["us"]) for r in rows
                            if r["method"] == method and r["config"] == config)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="B * V", ylabel="us per call (median)",
               title=f"{dtype}: penalties + bias + mask + top-20 logprobs + top-k 50 + top-p 0.9")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main -----------------------------------------------------------------------------------

def processing_grid(args):
    """(batches, vocabs, dtypes): this script's grid, with --batches/--vocabs/--dtypes replacing it."""
    batches, vocabs, dtypes = grid_from_args(args)  # the overrides, parsed and checked
    if args.device == "cuda":
        # The GPU bar needs B * V >= 16M: 256 x 128,256 and 64 x 262,144 are in both grids.
        default = ([1, 64, 256], [128256, 262144], [torch.float32, torch.bfloat16]) if args.quick else \
            ([1, 8, 64, 256], [32000, 128256, 151936, 262144], [torch.float32, torch.bfloat16])
    else:
        # The PyTorch pipeline takes about a second a call at 64 x 128,256: --quick leaves it out.
        default = ([1, 8], [32000], [torch.float32]) if args.quick else \
            ([1, 8, 64], [32000, 128256], [torch.float32, torch.bfloat16])
    return (batches if args.batches else default[0], vocabs if args.vocabs else default[1],
            dtypes if args.dtypes else default[2])


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)} (temperature-only always runs)")
    parser.add_argument("--no-check", action="store_true", help="skip the pipeline's faithfulness check")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    check_device(device := args.device)
    config_names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in config_names if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    configs = {name: full_cfg(name) for name in config_names}

    batches, vocabs, dtypes = processing_grid(args)
    # On the CPU, one warm-up then at least 3 timed calls: the sort pipeline takes ~1 s a call.
    cpu_timer = timing.time_cpu_until
    budget_s = (0.03 if args.quick else 0.06) if device == "cuda" else (0.1 if args.quick else 0.5)

    meta = timing.run_meta(device, TEMPERATURE, syncfree, SYNCFREE_MISSING, None)
    meta["device"] = device
    sms = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else NAPKIN_SMS
    others_start = cpu_seconds_of_others() if device == "cpu" else None
    settings = (f"T = {TEMPERATURE}; pen: repetition {REPETITION}, frequency {FREQUENCY}, presence {PRESENCE}, "
                f"{HISTORY} output + {PROMPT} prompt tokens; bias: {BIAS_K} tokens; mask: random bits; "
                f"top20: {TOP_N} logprobs; k50+p0.9: top_k 50, top_p 0.9; all: every one of them (top20 processed)")
    print(settings)

    results, checks = [], []
    for dtype in dtypes:
        dname = dtype_name(dtype)
        for batch in batches:
            for vocab in vocabs:
                cases = make_proc_cases(batch, vocab, dtype, device)
                base = dict(device=device, dtype=dname, B=batch, V=vocab, rotation=len(cases))
                if syncfree is not None and not args.no_check:
                    ok, note = check_pipeline(cases[0])
                    checks.append(dict(base, ok=ok, note=note))
                    print(f"  check {dname} B={batch} V={vocab}: {'ok' if ok else 'FAILED'}: {note}", flush=True)
                shape_rows, temp_us = [], None
                for config, cfg, methods in [("temp", dict(IDENTITY), baseline_methods())] + \
                        [(n, c, build_methods(c)) for n, c in configs.items()]:
                    config_rows = []
                    for m in methods:
                        us, synced, error = measure(m, cases, device, budget_s, cpu_timer)
                        config_rows.append(dict(base, config=config, method=m.name, us=us,
                                                synced=synced, error=error))
                    temp_us = config_rows[0]["us"] if config == "temp" else temp_us
                    sf_us = config_rows[0]["us"]
                    config_rows[0].update(napkin(cfg, cases[0], device, sms))
                    for r in config_rows:
                        r["vs_temp"] = r["us"] / temp_us if (r["us"] and temp_us and r["method"] != PEER) else None
                        r["vs_syncfree"] = r["us"] / sf_us if (r["us"] and sf_us and r["method"] == PEER) else None
                    shape_rows += config_rows
                results += shape_rows
                print(f"  {dname} B={batch} V={vocab}: " + "  ".join(
                    f"{r['config']} {fmt(r['us'], '.1f', 0)}/{fmt(r['vs_syncfree'], '.1f', 0)}x"
                    for r in shape_rows if r["method"] == PEER), flush=True)
                del cases
        if device == "cuda":
            torch.cuda.empty_cache()

    if others_start is not None:
        # Other processes on the cores spoil the timings: say how busy they were.
        wall, others = (b - a for a, b in zip(others_start, cpu_seconds_of_others()))
        meta["others_cpu_share"] = others / wall / (os.cpu_count() or 1)
    header = [f"syncfree.sample with logit processing, temperature {TEMPERATURE}: {meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  "
              f"threads {meta['threads']}  syncfree {meta['syncfree']}",
              settings]
    if "others_cpu_share" in meta:
        share = meta["others_cpu_share"]
        header.append(f"other processes and steal used {100 * share:.0f}% of the "
                      f"{os.cpu_count()} cores during the run"
                      + (": WARNING, the times are not trustworthy" if share > 0.05 else ""))
    failed = [c for c in checks if not c["ok"]]
    if checks:
        header.append(f"pipeline check (greedy ids; top-20 ids and logprobs, processed and raw; chosen "
                      f"logprobs): {len(checks) - len(failed)}/{len(checks)} shapes agree"
                      + ("" if not failed else ": WARNING, FAILED at " + ", ".join(
                          f"{c['dtype']} {c['B']}x{c['V']}" for c in failed)))
    overview = (header + [""] + summary_table(results, device) + [""] + config_table(results, list(configs))
                + [""] + bar_lines(results, device))
    print("\n" + "\n".join(overview))
    text = "\n".join(overview + ["", "Every method:"] + long_table(results)
                     + ["", "Checks:"] + [f"{c['dtype']} {c['B']}x{c['V']}: {c['note']}" for c in checks]) + "\n"

    paths = {k: os.path.join(args.out, f"{k}_processing_{device}.{ext}")
             for k, ext in [("table", "txt"), ("results", "json")]}
    paths["plot"] = os.path.join(args.out, f"processing_{device}.png")
    with open(paths["table"], "w") as table, open(paths["results"], "w") as f:
        table.write(text)
        json.dump({"meta": meta, "configs": {n: CONFIGS[n] for n in config_names},
                   "checks": checks, "results": results}, f, indent=1)
    plotted = not args.no_plot and write_plot(paths["plot"], results, meta, list(configs))
    print("wrote " + ", ".join(p for k, p in paths.items() if k != "plot" or plotted))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
