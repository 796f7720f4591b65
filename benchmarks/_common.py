"""Pieces shared by bench_sample.py and bench_warpers.py: inputs, methods, one measurement,
table cells and the command line they have in common. Timers live in _timing.py."""

import argparse
import dataclasses
import json
import os
import sys
import traceback
from typing import Callable, Optional

import torch

import _timing as timing

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class Case:
    """One input buffer set; timers rotate through several of these."""
    logits: torch.Tensor
    scaled: Optional[torch.Tensor]  # logits / T, for FlashInfer, which takes no temperature
    probs: Optional[torch.Tensor]   # softmax(logits / T) in float32, for the probs samplers
    seed: torch.Tensor
    offset: torch.Tensor


@dataclasses.dataclass
class Method:
    name: str
    run: Optional[Callable[[Case], torch.Tensor]]
    missing: str = ""  # why it is 'n/a' when run is None
    needs: str = ""    # extra inputs: "probs" or "scaled"
    devices: tuple = ("cuda", "cpu")
    # A failure that will repeat on every shape of a dtype (compilation): skip the rest.
    failure_is_per_dtype: bool = False


def shape_grid(device, quick, cpu_quick_vocabs=(32000, 128256)):
    """(batches, vocabs, dtypes); the scripts differ only in the quick CPU vocabularies."""
    if device == "cuda":
        if quick:
            return [1, 64], [32000, 151936], [torch.float32, torch.bfloat16]
        return [1, 8, 64, 256], [32000, 128256, 151936, 262144], [torch.float32, torch.bfloat16]
    if quick:
        return [1, 8], list(cpu_quick_vocabs), [torch.float32]
    return [1, 8, 64], [32000, 128256], [torch.float32]


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def make_cases(batch, vocab, dtype, device, needs, temperature):
    """Enough Cases to rotate through; `needs` names the extra inputs ("scaled", "probs") to make."""
    elem = torch.tensor([], dtype=dtype).element_size()
    count = timing.rotation_count(batch * vocab * elem, device)
    gen = torch.Generator(device=device).manual_seed(batch * 1_000_003 + vocab)
    # Made once per shape; random (never zeros), with a realistic spread of logits.
    logits = (torch.randn(count, batch, vocab, device=device, generator=gen) * 3).to(dtype)
    scaled = (logits.float() / temperature).to(dtype) if "scaled" in needs else None
    probs = torch.softmax(logits.float() / temperature, -1) if "probs" in needs else None
    seeds = torch.randint(0, 2**62, (count, batch), device=device, generator=gen)
    offsets = torch.arange(batch, device=device).repeat(count, 1)
    return [Case(logits[i], None if scaled is None else scaled[i],
                 None if probs is None else probs[i], seeds[i], offsets[i])
            for i in range(count)]


def short_error(exc):
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:120]


def measure(method, cases, device, budget_s, cpu_timer=timing.time_cpu):
    """Returns (us, synced, note); synced is None on the CPU or when the check failed."""
    if method.run is None:
        return None, None, method.missing
    try:
        timer = timing.time_cuda if device == "cuda" else cpu_timer
        us = timer(method.run, cases, budget_s=budget_s)
    except Exception as exc:
        if os.environ.get("SYNCFREE_BENCH_TRACEBACK"):
            traceback.print_exc()
        if device == "cuda":
            torch.cuda.synchronize()
        return None, None, short_error(exc)
    if device != "cuda":
        return us, None, ""
    try:
        synced = timing.did_sync(lambda: method.run(cases[0]))
        torch.cuda.synchronize()
        return us, synced, ""
    except Exception as exc:
        return us, None, "sync check failed: " + short_error(exc)


# --- table cells ----------------------------------------------------------------------------

def fmt(value, spec, width):
    return format("n/a", f">{width}") if value is None else format(value, f">{width}{spec}")


def sync_cell(r):
    return "-" if r["synced"] is None else ("YES" if r["synced"] else "no")


def ratio_cell(r, key):
    """r[key] as '1.23x', else the time; '!' when the method synced, '-' when not run."""
    if r is None:
        return "-"
    if r[key] is not None:
        return f"{r[key]:.2f}x" + ("!" if r["synced"] else "")
    if r["us"] is not None:
        return f"{r['us']:.0f}us" + ("!" if r["synced"] else "")
    return "n/a"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when it is not importable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not importable; skipping the plot")
        return None
    return plt


# --- command line ---------------------------------------------------------------------------

def base_parser(doc):
    """--device, --out, --quick and the grid overrides, as every single-process benchmark takes them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default=default_out())
    parser.add_argument("--quick", action="store_true", help="small grid, fewer repeats")
    parser.add_argument("--batches", help="comma-separated batch sizes, instead of the grid's (e.g. 1,64)")
    parser.add_argument("--vocabs", help="comma-separated vocabulary sizes, instead of the grid's (e.g. 128256)")
    parser.add_argument("--dtypes", help="comma-separated dtypes, instead of the grid's (e.g. float32,bfloat16)")
    return parser


def grid_from_args(args, **shape_grid_kwargs):
    """shape_grid for args.device and args.quick, with --batches/--vocabs/--dtypes replacing its lists."""
    batches, vocabs, dtypes = shape_grid(args.device, args.quick, **shape_grid_kwargs)
    if args.batches:
        batches = [int(b) for b in args.batches.split(",") if b]
    if args.vocabs:
        vocabs = [int(v) for v in args.vocabs.split(",") if v]
    if args.dtypes:
        names = [d for d in args.dtypes.split(",") if d]
        bad = [d for d in names if d not in ("float32", "float16", "bfloat16")]
        if bad:
            sys.exit(f"--dtypes: expected float32, float16 or bfloat16, got {bad}")
        dtypes = [getattr(torch, d) for d in names]
    return batches, vocabs, dtypes


def default_out():
    return os.environ.get("SYNCFREE_BENCH_OUT") or os.path.join(BENCH_DIR, "out")


def check_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu")


def write_table(out_dir, name, device, text, meta, results):
    """Prints the table and writes table_<name>_<device>.txt and results_<name>_<device>.json."""
    print("\n" + text)
    with open(os.path.join(out_dir, f"table_{name}_{device}.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"results_{name}_{device}.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
