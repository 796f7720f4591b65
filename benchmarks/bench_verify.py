#!/usr/bin/env python
"""Speculative decoding's verification: syncfree.verify_draft against a PyTorch rejection sampler.

    python benchmarks/bench_verify.py --device cpu  [--quick] [--out DIR]
    python benchmarks/bench_verify.py --device cuda [--quick] [--out DIR]

For each B in {1, 8, 64}, n in {1, 3, 5, 8} drafted tokens and V = 128,256 (float32 target
logits, temperature 0.8, top-k 50 + top-p 0.9 off/on, drafts with probabilities) it times,
side by side in one run:
  syncfree   syncfree.verify_draft with per-row seed/offset tensors;
  torch.ref  the rejection sampler as vLLM's PyTorch reference writes it: softmax of the
             target over [B, n + 1, V], gather of p and q at the drafts, a uniform compare, the
             residual max(0, p - q) normalised, torch.multinomial for the recovered and bonus
             tokens (no warpers: the reference would add a sort per position);
  sf.sample  syncfree.sample over the same [B (n + 1), V] logits: the GPU bar's baseline
             (verify within 1.5x of it).
Columns: microseconds per call (median), 'x ref' = torch.ref / syncfree (> 1: syncfree
faster; the CPU bar is >= 5x), 'x sample' = syncfree / sf.sample, and the napkin model:
MB of target logits and draft probabilities in the call, full reads syncfree makes of them
(CPU: positions read until the first rejection plus the stop position's race; CUDA: every
position, once where the positions kernel keeps it on chip, plus the stop's race), launches on CUDA.
Writes table_verify_<device>.txt and results_verify_<device>.json (no plot: one table).
"""

import os
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _timing as timing  # noqa: E402
from _common import base_parser, check_device, fmt, write_table  # noqa: E402

sys.path.append(os.path.join(os.path.dirname(BENCH_DIR), "tests"))  # the napkin model's helper
from cuda_on_cpu.napkin import positions_reads  # noqa: E402

syncfree, SYNCFREE_MISSING, _ = timing.import_subjects()
TEMPERATURE = 0.8
V = 128256
STATIC_BOUND = 1024  # bytes: a bound on the positions kernel's static shared memory


def torch_reference(target, draft_ids, draft_probs, temperature=TEMPERATURE):
    """Rejection sampling in plain PyTorch, as vLLM's reference sampler does it."""
    b, n1, v = target.shape
    n = n1 - 1
    p = torch.softmax(target.float() / temperature, dim=-1)                       # [B, n + 1, V]
    p_draft = p[:, :n].gather(-1, draft_ids[..., None]).squeeze(-1)              # [B, n]
    q_draft = draft_probs.gather(-1, draft_ids[..., None]).squeeze(-1)
    u = torch.rand(b, n, device=target.device)
    accepted = u * q_draft < p_draft
    rejected_at = torch.where(accepted.all(-1), n, (~accepted).int().argmax(-1))  # [B]
    residual = (p[:, :n] - draft_probs).clamp_min(0)
    residual = residual / residual.sum(-1, keepdim=True).clamp_min(1e-30)
    recovered = torch.multinomial(residual.view(-1, v), 1).view(b, n)
    bonus = torch.multinomial(p[:, n], 1).squeeze(-1)
    positions = torch.arange(n1, device=target.device)
    tokens = torch.cat([draft_ids, bonus[:, None]], -1)
    stop = torch.cat([recovered, bonus[:, None]], -1).gather(-1, rejected_at[:, None]).squeeze(-1)
    tokens = torch.where(positions == rejected_at[:, None], stop[:, None], tokens)
    tokens = torch.where(positions > rejected_at[:, None], -1, tokens)
    return tokens, rejected_at


def make_case(b, n, device, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, n + 1, V, generator=g) * 3
    # The drafter: the target's law sharpened and perturbed, so some drafts are accepted.
    q = torch.softmax((target[:, :n] + torch.randn(b, n, V, generator=g)) / TEMPERATURE, -1)
    ids = torch.multinomial(q.view(-1, V), 1, generator=g).view(b, n)
    return dict(target=target.to(device), ids=ids.to(device), q=q.to(device),
                seed=torch.arange(b, device=device), offset=torch.zeros(b, dtype=torch.int64, device=device))


def main():
    args = base_parser(__doc__).parse_args()  # --vocabs and --dtypes are not used: V and float32 are fixed
    device = args.device
    check_device(device)
    os.makedirs(args.out, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 8] if args.quick else [1, 8, 64]
    drafts = [1, 5] if args.quick else [1, 3, 5, 8]
    timer = timing.time_cuda if device == "cuda" else timing.time_cpu_until
    budget = 0.05 if device == "cuda" else (0.2 if args.quick else 0.5)
    meta = timing.run_meta(device, TEMPERATURE, syncfree, SYNCFREE_MISSING, None)
    # The positions kernel's dynamic shared memory: the opt-in maximum less its static bytes (at most
    # STATIC_BOUND: tests/test_emulated.py holds the compiled kernels to it).
    shared_limit = (torch.cuda.get_device_properties(0).shared_memory_per_block_optin - STATIC_BOUND
                    if device == "cuda" else 0)
    rows = []
    for warped in (False, True):
        warpers = dict(top_k=50, top_p=0.9) if warped else {}
        for b in batches:
            for n in drafts:
                cases = [make_case(b, n, device, seed) for seed in range(2)]
                sf = lambda c: syncfree.verify_draft(c["target"], c["ids"], c["q"], TEMPERATURE, seed=c["seed"],
                                                     offset=c["offset"], **warpers)
                flat = lambda c: syncfree.sample(c["target"].view(-1, V), TEMPERATURE, **warpers)
                us_sf = timer(sf, cases, budget_s=budget)
                us_sample = timer(flat, cases, budget_s=budget)
                us_ref = None if warped else timer(lambda c: torch_reference(c["target"], c["ids"], c["q"]), cases,
                                                   budget_s=budget)
                accepted = sf(cases[0])[1].float()
                # The napkin model. CPU: positions read = accepted + 1 per row (the stop's race reads
                # it once more). CUDA: the positions kernel reads every node (once where it keeps the
                # row on chip, Note [A node's row on chip]), the stop's race one node more. Draft
                # probabilities: the accepted positions' entries and one row. (Warpers' passes aside.)
                if device == "cuda":
                    reads = positions_reads(V, 4, shared_limit) + 1 / (n + 1)
                else:
                    reads = ((accepted + 2) / (n + 1)).mean().item()
                mb = (b * (n + 1) * V * 4 + b * n * V * 4) / 1e6
                row = dict(device=device, B=b, n=n, warpers="k50+p0.9" if warped else "none", us=us_sf,
                           ref_us=us_ref, sample_us=us_sample, x_ref=us_ref / us_sf if us_ref else None,
                           x_sample=us_sf / us_sample, mb=mb, reads=reads, launches=7 if warped else 2,
                           accepted=accepted.mean().item())
                rows.append(row)
                print(f"  B={b} n={n} {row['warpers']}: syncfree {us_sf:.1f} us  ref {fmt(us_ref, '.1f', 0)}  "
                      f"sample {us_sample:.1f} us", flush=True)
    header = [f"syncfree.verify_draft, V = {V}, float32, temperature {TEMPERATURE}: {meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  threads {meta['threads']}",
              "",
              f"{'warpers':<10}{'B':>4}{'n':>3}{'sf us':>10}{'ref us':>11}{'x ref':>8}{'sample us':>11}"
              f"{'x sample':>9}{'MB':>8}{'reads':>7}{'launch':>7}{'accepted':>9}",
              "  (x ref: torch.ref / syncfree; x sample: syncfree / syncfree.sample over the [B (n + 1), V] "
              "logits; reads: full reads of the [B, n + 1, V] target per call, mean over rows; launch: "
              "CUDA launches and memsets; accepted: mean drafts accepted)"]
    lines = [f"{r['warpers']:<10}{r['B']:>4}{r['n']:>3}{r['us']:>10.1f}{fmt(r['ref_us'], '.1f', 11)}"
             f"{fmt(r['x_ref'], '.2f', 8)}{r['sample_us']:>11.1f}{r['x_sample']:>9.2f}{r['mb']:>8.1f}"
             f"{r['reads']:>7.2f}{r['launches']:>7}{r['accepted']:>9.2f}" for r in rows]
    worst = min((r["x_ref"] for r in rows if r["x_ref"]), default=None)
    verdict = [f"CPU bar, syncfree >= 5x faster than the reference at every shape: "
               f"{'n/a' if worst is None else f'worst {worst:.2f}x -> ' + ('met' if worst >= 5 else 'NOT met')}"
               + (" (for information: the bar is the CPU's)" if device == "cuda" else "")]
    if device == "cuda":
        slowest = max(r["x_sample"] for r in rows)
        verdict.append(f"GPU bar, within 1.5x of syncfree.sample over the same logits: worst {slowest:.2f}x -> "
                       + ("met" if slowest <= 1.5 else "NOT met"))
    text = "\n".join(header + lines + [""] + verdict) + "\n"
    write_table(args.out, "verify", device, text, meta, rows)


if __name__ == "__main__":
    main()
