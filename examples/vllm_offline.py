"""Offline generation in vLLM with syncfree as its sampler (README "Using syncfree in vLLM").

    SYNCFREE_VLLM=1 python examples/vllm_offline.py [--model DIR_OR_HF_NAME]

Without --model it makes a tiny random-weight Llama with an offline-trained tokenizer in a temp dir
(tests/vllm/tiny_model.py: no downloads, so the text is gibberish). It prints what each request
sampled and how many steps syncfree sampled; without the switch vLLM's own sampler runs.
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# An in-process engine starts in seconds on a CPU; vLLM's default (a separate engine process) works too.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def syncfree_stats(worker):
    """Runs in the worker process (the plugin's counters live where the sampler runs)."""
    from syncfree.integrations import vllm as plugin
    return {"syncfree_steps": plugin.STATS["syncfree_steps"], "fallback_steps": dict(plugin.STATS["fallback_steps"]),
            "sampler": type(worker.model_runner.sampler).__name__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory or name (default: a tiny random Llama made here)")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    model = args.model
    if model is None:
        sys.path.insert(0, os.path.join(HERE, "..", "tests", "vllm"))
        from tiny_model import make
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        model = make(os.path.join(tempfile.gettempdir(), "syncfree-tiny-llama"))

    from vllm import LLM, SamplingParams

    llm = LLM(model=model, tokenizer=model, dtype="float32", max_model_len=256, enforce_eager=True,
              max_num_seqs=8, enable_chunked_prefill=False)
    requests = {
        "greedy": SamplingParams(temperature=0.0, max_tokens=args.max_tokens),
        "seeded, top-k 50, top-p 0.9": SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=7,
                                                      max_tokens=args.max_tokens),
        "penalties and a bias": SamplingParams(temperature=1.0, repetition_penalty=1.2, frequency_penalty=0.5,
                                               logit_bias={42: 3.0}, seed=8, max_tokens=args.max_tokens),
        "min-p, 3 logprobs": SamplingParams(temperature=1.0, min_p=0.1, logprobs=3, max_tokens=args.max_tokens),
    }
    prompts = ["The first man", "Once upon a time", "People say that", "Hello there"]
    for (what, _), prompt, out in zip(requests.items(), prompts, llm.generate(prompts, list(requests.values()))):
        sample = out.outputs[0]
        print(f"{what:>28}: {prompt!r} -> {sample.text!r}\n{'':>30}ids {list(sample.token_ids)}")
        if sample.logprobs:
            first = {t: (round(lp.logprob, 3), lp.rank) for t, lp in sample.logprobs[0].items()}
            print(f"{'':>30}first token's logprobs (token: (logprob, rank)): {first}")
    stats = llm.collective_rpc(syncfree_stats)[0]
    if stats["syncfree_steps"]:
        print(f"syncfree sampled {stats['syncfree_steps']} steps (sampler {stats['sampler']}); "
              f"steps handed to vLLM's sampler: {stats['fallback_steps'] or 'none'}")
    else:
        print(f"vLLM's own sampler sampled every step (sampler {stats['sampler']}): set SYNCFREE_VLLM=1")


if __name__ == "__main__":  # vLLM's CPU platform re-imports the main script
    main()
