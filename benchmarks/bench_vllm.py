"""vLLM's Sampler.forward against the syncfree plugin's on the same SamplingMetadata and logits, and
end-to-end tokens/s of a tiny model with and without the plugin (README "Using syncfree in vLLM").

    python benchmarks/bench_vllm.py [--device cpu|cuda] [--quick] [--skip-e2e]

Needs the vLLM venv (.ci/vllm_tier.sh). Part 1: B 1, 8, 64 x V 128,256; temperature only; top-k 50 +
top-p 0.9; + repetition/frequency/presence penalties (512 prompt and 128 output tokens a row); + 20
raw logprobs; at 1 thread and at the default thread count (CPU). Each call gets a fresh copy of the
logits outside the timed region (vLLM's sampler writes into them); times are medians. Part 2: the
tiny random Llama of tests/vllm (V 4000: the sampler is a large share of a step there), 8 requests
x 64 tokens, top-k 50 + top-p 0.9, through LLM.generate, each sampler in fresh processes, alternating.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
V = 128256
CONFIGS = ("temperature", "top-k + top-p", "+ penalties", "+ 20 logprobs")
PROMPTS = ["The first man", "Hello there", "What time is it", "A long day of work", "People say that",
           "Give me JSON:", "Once upon a time", "We will go"]
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the tables only


def metadata(b, config, device):
    """SamplingMetadata as vLLM's InputBatch builds it for b sampled rows of one configuration."""
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    level = CONFIGS.index(config)
    g = torch.Generator().manual_seed(1)
    full = lambda value, dtype=torch.float32: torch.full((b,), value, dtype=dtype, device=device)  # noqa: E731
    penalties = level >= 2
    prompts = torch.randint(0, V, (b, 512), generator=g).to(device) if penalties else None
    outputs = torch.randint(0, V, (b, 128), generator=g).tolist() if penalties else [[] for _ in range(b)]
    return SamplingMetadata(
        temperature=full(0.8), all_greedy=False, all_random=True,
        top_p=full(0.9) if level >= 1 else None, top_k=full(50, torch.int32) if level >= 1 else None,
        generators={}, max_num_logprobs=20 if level >= 3 else None, no_penalties=not penalties,
        prompt_token_ids=prompts, frequency_penalties=full(0.2 if penalties else 0.0),
        presence_penalties=full(0.1 if penalties else 0.0), repetition_penalties=full(1.1 if penalties else 1.0),
        output_token_ids=outputs, allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=LogitsProcessors())


def median_ms(fn, logits, buffer, repeats, device):
    """Median time of fn(buffer) with buffer refreshed from logits before each call (untimed)."""
    times = []
    for _ in range(repeats):
        buffer.copy_(logits)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(buffer)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_samplers(device, quick):
    from vllm.v1.sample.sampler import Sampler

    from syncfree.integrations import vllm as plugin

    vllm_sampler, ours = Sampler(), plugin.SyncfreeSampler()
    thread_counts = [1, torch.get_num_threads()] if device == "cpu" else [None]
    print(f"## Sampler.forward, V {V:,}, {device}: vLLM's vs the syncfree plugin's (ms, median)\n")
    print("| threads | B | configuration | vLLM | syncfree | vLLM / syncfree |")
    print("|---|---|---|---|---|---|")
    for threads in dict.fromkeys(thread_counts):
        if threads:
            torch.set_num_threads(threads)
        for b in (1, 8, 64):
            logits = torch.randn(b, V, generator=torch.Generator().manual_seed(b)).mul_(3).to(device)
            buffer = torch.empty_like(logits)
            for config in CONFIGS:
                md = metadata(b, config, device)
                # A steady batch, as in decode: the same metadata object every step (the plugin's caches hit).
                ours.step_context = plugin.StepContext(req_ids=[f"r{i}" for i in range(b)], steps=[128] * b,
                                                       engine_seed=0)
                repeats = max(3, (5 if quick else 20) // max(1, b // 8))
                for fn in (lambda x: vllm_sampler(x, md), lambda x: ours(x, md)):
                    median_ms(fn, logits, buffer, 3, device)  # warm-up: compilation, allocator, thread pool
                t_vllm = median_ms(lambda x: vllm_sampler(x, md), logits, buffer, repeats, device)
                t_ours = median_ms(lambda x: ours(x, md), logits, buffer, repeats, device)
                print(f"| {threads or '-'} | {b} | {config} | {t_vllm:.3f} | {t_ours:.3f} | {t_vllm / t_ours:.2f}x |",
                      flush=True)
    assert plugin.STATS["fallback_steps"] == {}, plugin.STATS["fallback_steps"]


def end_to_end_child(plugin_on, tokens_per_request, repeats):
    """One engine in this process (a fresh process per setting: a second engine in one process runs
    slower); prints the generation rates as one JSON line."""
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
                      TRANSFORMERS_OFFLINE="1")
    if plugin_on:
        os.environ["SYNCFREE_VLLM"] = "1"
    else:
        os.environ.pop("SYNCFREE_VLLM", None)
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "vllm"))
    from tiny_model import make
    from vllm import LLM, SamplingParams

    from syncfree.integrations import vllm as plugin

    model = make(os.path.join(tempfile.gettempdir(), "syncfree-tiny-llama"))
    params = [SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=i, max_tokens=tokens_per_request,
                             ignore_eos=True) for i in range(len(PROMPTS))]
    llm = LLM(model=model, tokenizer=model, dtype="float32", max_model_len=256, enforce_eager=True,
              max_num_seqs=8, max_num_batched_tokens=256, enable_chunked_prefill=False)
    llm.generate(PROMPTS, params, use_tqdm=False)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start))
    assert plugin.STATS["syncfree_steps"] > 0 if plugin_on else plugin.STATS["syncfree_steps"] == 0
    assert not plugin.STATS["fallback_steps"]
    print(json.dumps(rates))


def bench_end_to_end(tokens_per_request, repeats, rounds=2):
    """Alternates fresh processes with the plugin off and on (`rounds` each); the median over all."""
    print(f"\n## End to end: tiny Llama (V 4000, 2 layers), {len(PROMPTS)} requests x {tokens_per_request} tokens, "
          f"top-k 50 + top-p 0.9, CPU, {rounds} processes x {repeats} generations per sampler\n")
    rates = {"off": [], "on": []}
    for _ in range(rounds):
        for setting in rates:
            run = subprocess.run([sys.executable, os.path.abspath(__file__), "--e2e-child", setting,
                                  "--e2e-tokens", str(tokens_per_request), "--e2e-repeats", str(repeats)],
                                 capture_output=True, text=True, check=True)
            rates[setting] += json.loads(run.stdout.strip().splitlines()[-1])
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print("| sampler | tokens/s (median) |\n|---|---|")
    print(f"| vLLM's | {off:.0f} |\n| syncfree plugin | {on:.0f} |\n\nsyncfree / vLLM: {on / off:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--skip-e2e", action="store_true", help="part 1 only")
    parser.add_argument("--e2e-child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--e2e-tokens", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e_child:
        return end_to_end_child(args.e2e_child == "on", args.e2e_tokens, args.e2e_repeats)
    import vllm
    import syncfree
    print(f"vllm {vllm.__version__}, torch {torch.__version__}, syncfree {syncfree.__version__}, "
          f"{os.cpu_count()} CPUs, default threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews the times)\n")
    bench_samplers(args.device, args.quick)
    if not args.skip_e2e:
        bench_end_to_end(64, 3 if args.quick else 5)


if __name__ == "__main__":  # vLLM's CPU platform re-imports the main script
    main()
