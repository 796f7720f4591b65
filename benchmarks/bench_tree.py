#!/usr/bin/env python
"""Draft trees: syncfree.verify_tree against a plain-PyTorch tree verifier.

    python benchmarks/bench_tree.py --device cpu  [--quick] [--out DIR]
    python benchmarks/bench_tree.py --device cuda [--quick] [--out DIR]

For (B, N) in {(1, 8), (1, 64), (8, 8), (8, 64), (64, 8)} (B N <= 512: the target and the draft
laws are B N V floats each), V = 128,256, float32 target logits, temperature 0.8, an EAGLE-like
tree (four children at the root, two below, breadth first) and a drafter whose law is the
target's perturbed: proposals (its best tokens in rank order, one-hot) and draft probabilities
(independent draws, each with its law), it times side by side in one run:
  syncfree   syncfree.verify_tree with per-row seed/offset tensors;
  torch.ref  the SpecInfer rule in plain PyTorch, vectorised over rows with a Python loop per
             level and per sibling rank: softmax of the target over [B, N, V], then at each level
             the children in turn (a gather of r and q at the child's token, a uniform compare, the
             residual max(0, r - q) renormalised over V for the rows that rejected), and
             torch.multinomial for the stop token.
Columns: microseconds per call (median), 'x ref' = torch.ref / syncfree (> 1: syncfree faster),
mean tokens emitted, and the napkin model: MB of target logits (and draft laws), full reads of
the target the call makes (CPU: the nodes the walk visits, about twice each for the law and once
for the stop; CUDA: every node twice), launches on CUDA.
Writes table_tree_<device>.txt and results_tree_<device>.json.
"""

import os
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _timing as timing  # noqa: E402
from _common import base_parser, check_device, fmt, write_table  # noqa: E402

syncfree, SYNCFREE_MISSING, _ = timing.import_subjects()
TEMPERATURE = 0.8
V = 128256
SHAPES = [(1, 8), (1, 64), (8, 8), (8, 64), (64, 8)]


def eagle_like(nodes):
    """Parents of a breadth-first tree: up to four children at the root, two below."""
    parents, frontier, i = [-1], [0], 1
    while i < nodes:
        nxt = []
        for node in frontier:
            for _ in range(4 if node == 0 else 2):
                if i < nodes:
                    parents.append(node)
                    nxt.append(i)
                    i += 1
        frontier = nxt
    return parents


def torch_reference(target, ids, parents, q, temperature=TEMPERATURE):
    """The SpecInfer rule in plain PyTorch: (tokens [B, N], num_accepted [B])."""
    b, n, v = target.shape
    device = target.device
    rows = torch.arange(b, device=device)
    p = torch.softmax(target.float() / temperature, dim=-1)
    kids = [[c for c in range(n) if parents[c] == node] for node in range(n)]
    width = max(len(k) for k in kids)
    children = torch.tensor([k + [-1] * (width - len(k)) for k in kids], device=device)  # [N, K]
    node = torch.zeros(b, dtype=torch.int64, device=device)
    alive = torch.ones(b, dtype=torch.bool, device=device)
    tokens = torch.full((b, n), -1, dtype=torch.int64, device=device)
    accepted = torch.zeros(b, dtype=torch.int64, device=device)
    for depth in range(n):
        r = p[rows, node]
        chosen = torch.full((b,), -1, dtype=torch.int64, device=device)
        for k in range(width):
            c = children[node, k]
            live = alive & (c >= 0) & (chosen < 0)
            if not bool(live.any()):  # the reference syncs once per sibling rank
                break
            cc = c.clamp_min(0)
            x = ids[rows, cc]
            qk = q[rows, cc] if q is not None else torch.nn.functional.one_hot(x, v).float()
            u = torch.rand(b, device=device)
            take = live & (u * qk[rows, x] < r[rows, x])
            chosen = torch.where(take, cc, chosen)
            residual = (r - qk).clamp_min(0)
            residual = residual / residual.sum(-1, keepdim=True).clamp_min(1e-30)
            r = torch.where((live & ~take)[:, None], residual, r)
        stop = alive & (chosen < 0)
        r = torch.where(r.sum(-1, keepdim=True) > 0, r, p[rows, node])
        stop_token = torch.multinomial(r, 1).squeeze(-1)
        emitted = torch.where(chosen >= 0, ids[rows, chosen.clamp_min(0)], stop_token)
        tokens[:, depth] = torch.where(alive, emitted, tokens[:, depth])
        accepted += (alive & (chosen >= 0)).long()
        alive = alive & (chosen >= 0)
        node = torch.where(alive, chosen, node)
        if not bool(alive.any()):
            break
    return tokens, accepted


def make_case(b, n, device, seed):
    """A case of each mode on one target: the drafter's law after each node is the target's there,
    perturbed; proposals are its best tokens in rank order (as EAGLE's top-k), draft_probs
    children are independent draws from it (SpecInfer), each carrying that law."""
    g = torch.Generator().manual_seed(seed)
    parents = eagle_like(n)
    target = torch.randn(b, n, V, generator=g) * 3
    drafter = torch.softmax((target + torch.randn(b, n, V, generator=g)) / TEMPERATURE, -1)  # after each node
    ranked = drafter.topk(4, dim=-1).indices  # [B, N, 4]
    proposals = torch.zeros(b, n, dtype=torch.int64)
    samples = torch.zeros(b, n, dtype=torch.int64)
    q = torch.zeros(b, n, V)
    for c in range(1, n):
        parent = parents[c]
        rank = sum(1 for s in range(1, c) if parents[s] == parent)
        proposals[:, c] = ranked[:, parent, rank]
        samples[:, c] = torch.multinomial(drafter[:, parent], 1, generator=g).squeeze(-1)
        q[:, c] = drafter[:, parent]
    common = dict(target=target.to(device), parents=parents, seed=torch.arange(b, device=device),
                  parents_t=torch.tensor(parents, device=device).expand(b, n).contiguous(),
                  offset=torch.zeros(b, dtype=torch.int64, device=device))
    return {"proposals": dict(common, ids=proposals.to(device), q=None),
            "draft_probs": dict(common, ids=samples.to(device), q=q.to(device))}


def main():
    args = base_parser(__doc__).parse_args()  # --vocabs and --dtypes are not used: V and float32 are fixed
    device = args.device
    check_device(device)
    os.makedirs(args.out, exist_ok=True)
    shapes = SHAPES[:3] if args.quick else SHAPES
    timer = timing.time_cuda if device == "cuda" else timing.time_cpu_until
    budget = 0.05 if device == "cuda" else (0.2 if args.quick else 0.5)
    meta = timing.run_meta(device, TEMPERATURE, syncfree, SYNCFREE_MISSING, None)
    results = []
    for b, n in shapes:
        both = [make_case(b, n, device, seed) for seed in range(2)]
        for mode in ("proposals", "draft_probs"):
            cases = [case[mode] for case in both]
            sf = lambda c: syncfree.verify_tree(c["target"], c["ids"], c["parents_t"], c["q"], TEMPERATURE,
                                                seed=c["seed"], offset=c["offset"])
            us_sf = timer(sf, cases, budget_s=budget)
            us_ref = timer(lambda c: torch_reference(c["target"], c["ids"], c["parents"], c["q"]), cases,
                           budget_s=budget)
            accepted = sf(cases[0])[2].float()
            emitted = (accepted + 1).mean().item()
            reads = (2 * n if device == "cuda" else 2 * (accepted + 1).mean().item() + 1) / n
            mb = (b * n * V * 4 * (2 if mode == "draft_probs" else 1)) / 1e6
            row = dict(device=device, B=b, N=n, mode=mode, us=us_sf, ref_us=us_ref, x_ref=us_ref / us_sf,
                       emitted=emitted, mb=mb, reads=reads, launches=2)
            results.append(row)
            print(f"  B={b} N={n} {mode}: syncfree {us_sf:.1f} us  ref {us_ref:.1f} us", flush=True)
    header = [f"syncfree.verify_tree, V = {V}, float32, temperature {TEMPERATURE}, EAGLE-like trees: "
              f"{meta['command']}",
              f"{meta['date_utc']}  {meta['device_name']}  torch {meta['torch']}  threads {meta['threads']}",
              "",
              f"{'drafts':<12}{'B':>4}{'N':>4}{'sf us':>11}{'ref us':>12}{'x ref':>8}{'emitted':>9}{'MB':>8}"
              f"{'reads':>7}{'launch':>7}",
              "  (x ref: torch.ref / syncfree; emitted: mean tokens per row; reads: full reads of the "
              "[B, N, V] target per call; launch: CUDA launches without warpers)"]
    lines = [f"{r['mode']:<12}{r['B']:>4}{r['N']:>4}{r['us']:>11.1f}{r['ref_us']:>12.1f}{r['x_ref']:>8.2f}"
             f"{r['emitted']:>9.2f}{r['mb']:>8.1f}{r['reads']:>7.2f}{r['launches']:>7}" for r in results]
    worst = min(r["x_ref"] for r in results)
    text = "\n".join(header + lines + ["", f"worst ratio to the reference: {fmt(worst, '.2f', 0)}x"]) + "\n"
    write_table(args.out, "tree", device, text, meta, results)


if __name__ == "__main__":
    main()
