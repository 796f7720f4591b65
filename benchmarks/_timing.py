"""Timing helpers shared by the benchmarks.

All times are returned in microseconds. Each timer takes `fn(item)` and a list
of `inputs`; calls rotate through the list so that, with enough distinct
buffers, repeated calls read from device memory rather than from L2.
"""

import math
import statistics
import time

import torch

DEFAULT_L2_BYTES = 50 * 2**20  # H100; used when the device does not report its L2 size


def l2_cache_bytes(device=None):
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES


def rotation_count(bytes_per_input, device, lo=2, hi=512):
    """How many distinct input buffers to rotate through so the set is well over the cache."""
    if torch.device(device).type == "cuda":
        target_bytes = 3 * l2_cache_bytes(device)
    else:
        target_bytes = 128 * 2**20  # larger than the last-level cache of common CPUs
    return int(min(hi, max(lo, math.ceil(target_bytes / max(bytes_per_input, 1)))))


def _repeats_for(seconds_per_call, budget_s, min_repeats, max_repeats):
    # Slow baselines get fewer repeats, fast kernels many, within one time budget.
    if seconds_per_call <= 0:
        return max_repeats
    return int(min(max_repeats, max(min_repeats, budget_s / seconds_per_call)))


def _warm_up_and_estimate(fn, inputs, warmup, sync):
    """Run `warmup` calls (compilation, allocator, handles), then return seconds per call."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    sync()
    probe_calls = 3
    start = time.perf_counter()
    for i in range(probe_calls):
        fn(inputs[i % len(inputs)])
    sync()
    return (time.perf_counter() - start) / probe_calls


def time_cuda(fn, inputs, *, warmup=5, budget_s=0.1, min_repeats=10, max_repeats=1000):
    """Median per-call time of back-to-back calls, each bracketed by CUDA events.

    The CPU runs ahead as it would in a decode loop, so for tiny kernels the
    interval also holds the host's launch overhead: that is the cost a caller pays.
    """
    inputs = list(inputs)
    seconds = _warm_up_and_estimate(fn, inputs, warmup, torch.cuda.synchronize)
    repeats = _repeats_for(seconds, budget_s, min_repeats, max_repeats)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        starts[i].record()
        fn(inputs[i % len(inputs)])
        ends[i].record()
    torch.cuda.synchronize()
    return 1e3 * statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def time_cuda_loop_mean(fn, inputs, *, calls=1000, warmup=5):
    """Mean time per call over `calls` back-to-back calls inside one pair of events."""
    inputs = list(inputs)
    _warm_up_and_estimate(fn, inputs, warmup, torch.cuda.synchronize)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(calls):
        fn(inputs[i % len(inputs)])
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / calls


def time_cuda_isolated(fn, inputs, *, repeats=200, warmup=5):
    """Median launch-to-completion time of one call on an idle device (sync before each)."""
    inputs = list(inputs)
    _warm_up_and_estimate(fn, inputs, warmup, torch.cuda.synchronize)
    times_ms = []
    for i in range(repeats):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times_ms.append(start.elapsed_time(end))
    return 1e3 * statistics.median(times_ms)


def time_cuda_graph(fn, inputs, *, calls_per_graph=None, warmup=3, budget_s=0.1,
                    min_repeats=20, max_repeats=1000):
    """Per-call time with the host out of the way: capture calls in a CUDA graph, time replays."""
    inputs = list(inputs)
    calls = min(len(inputs), calls_per_graph or len(inputs))
    # Warm up on a side stream, as torch.cuda.graphs recommends before capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for item in inputs[:calls]:
            fn(item)
    per_replay_us = time_cuda(lambda _: graph.replay(), [None], warmup=2, budget_s=budget_s,
                              min_repeats=min_repeats, max_repeats=max_repeats)
    return per_replay_us / calls


def time_cpu(fn, inputs, *, warmup=2, budget_s=1.0, min_repeats=3, max_repeats=200):
    """Median wall-clock time per call on the host."""
    inputs = list(inputs)
    seconds = _warm_up_and_estimate(fn, inputs, warmup, lambda: None)
    repeats = _repeats_for(seconds, budget_s, min_repeats, max_repeats)
    times_s = []
    for i in range(repeats):
        item = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(item)
        times_s.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times_s)


def copy_bandwidth_gbps(device="cuda", nbytes=2**30):
    """Device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    device = torch.device(device)
    # Random bytes, never zeros; the buffer is far larger than any cache.
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy = lambda _: dst.copy_(src)
    if device.type == "cuda":
        us = time_cuda(copy, [None], warmup=3, budget_s=0.3, min_repeats=10)
    else:
        us = time_cpu(copy, [None], warmup=1, budget_s=1.0, min_repeats=3)
    del src, dst
    return 2 * nbytes / (us * 1e-6) / 1e9


def empty_kernel_us(device="cuda"):
    """Launch-to-completion of a one-element op, measured the ways the samplers are."""
    x = torch.ones(1, device=device)
    tiny_op = lambda _: x.add_(1)
    return {
        "back_to_back_us": time_cuda(tiny_op, [None], budget_s=0.05, max_repeats=2000),
        "loop_mean_us": time_cuda_loop_mean(tiny_op, [None], calls=2000),
        "isolated_us": time_cuda_isolated(tiny_op, [None], repeats=200),
        "graph_us": time_cuda_graph(tiny_op, [None] * 100, calls_per_graph=100),
    }


def did_sync(fn):
    """True if fn() makes the host wait on the device (per torch's sync debug mode).

    Call it after warm-up: first calls may legitimately sync (lazy init, compilation).
    """
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError as exc:
        if "synchroniz" in str(exc).lower():
            return True
        raise
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def time_cpu_until(fn, inputs, *, warmup=1, budget_s=1.0, min_repeats=3, max_repeats=200):
    """Median wall-clock time per call on the host, for baselines that may take a second a call.

    Unlike time_cpu there is no separate probe: after `warmup` calls, each call is timed and
    counted until at least `min_repeats` calls and `budget_s` seconds (or `max_repeats` calls).
    """
    inputs = list(inputs)
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times_s = []
    deadline = time.perf_counter() + budget_s
    while len(times_s) < max_repeats and (len(times_s) < min_repeats or time.perf_counter() < deadline):
        item = inputs[len(times_s) % len(inputs)]
        start = time.perf_counter()
        fn(item)
        times_s.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times_s)


def run_meta(device, temperature, syncfree, syncfree_missing, flashinfer):
    """What a benchmark run records about itself (and prints a line of): date, command, versions, device."""
    import datetime
    import os
    import platform
    import sys

    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "temperature": temperature,
        "syncfree": getattr(syncfree, "__version__", "?") if syncfree else f"missing: {syncfree_missing}",
        "flashinfer": getattr(flashinfer, "__version__", "?") if flashinfer else None,
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device_name=props.name, sms=props.multi_processor_count,
                    l2_bytes=l2_cache_bytes(0), cuda=torch.version.cuda)
    else:
        meta.update(device_name=platform.processor() or platform.machine())
    print(f"device: {meta['device_name']}  torch {meta['torch']}  syncfree {meta['syncfree']}"
          f"  flashinfer {meta['flashinfer'] or 'n/a'}")
    if device == "cpu":
        print(f"torch.get_num_threads() = {meta['threads']}")
    return meta


def import_subjects():
    """(syncfree or None, why it is missing, flashinfer or None): a benchmark still runs and
    reports its baselines when syncfree is not built or FlashInfer is not installed."""
    try:
        import syncfree
        missing = ""
    except Exception as exc:
        syncfree, missing = None, f"{type(exc).__name__}: {exc}"
    try:
        import flashinfer
        import flashinfer.sampling  # noqa: F401
    except Exception:
        flashinfer = None
    return syncfree, missing, flashinfer
