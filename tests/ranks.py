"""Ranks for syncfree.distributed's tests: a free port for real process groups, and simulated
ranks in one process (every rank's steps run in lockstep, the collectives computed here), which
run the shard ops on the CPU path or, inside cuda_on_cpu.emulating(), on the emulated CUDA kernels.
"""
import socket

import torch

import syncfree
import syncfree.distributed as sd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_device(logits, kwargs, return_valid=False):
    """syncfree.sample (tokens, logprobs[, valid]) on the unsharded logits with simulate()'s kwargs:
    a generator_seed becomes a fresh CPU generator seeded with it, as every simulated rank gets."""
    single = dict(kwargs)
    if "generator_seed" in single:
        single["generator"] = torch.Generator().manual_seed(single.pop("generator_seed"))
    return syncfree.sample(logits, return_logprobs=True, return_valid=return_valid, **single)


def _replies(kind, values):
    """What each rank receives for its request: the layout check, or a collective's result."""
    if kind == "layout":
        return [torch.ops.syncfree._shard_layout(torch.tensor(values, dtype=torch.int64))] * len(values)
    if kind == "gather":
        return [torch.stack(values)] * len(values)
    if kind == "sum":
        return [torch.stack(values).sum(0).to(values[0].dtype)] * len(values)
    if kind == "max":
        return [torch.stack(values).amax(0)] * len(values)
    assert kind is None, kind
    return values


def simulate(logits, bounds, generator_seed=None, return_logprobs=True, return_valid=False, top=None, out=None,
             **kwargs):
    """syncfree.distributed.sample over shards [start, end) of logits ([B, V]), one simulated rank
    per shard; each rank's (tokens, logprobs), (tokens, logprobs, valid) with return_valid, or with
    top = (return_top_logprobs, raw logprobs_mode) (tokens, logprobs, valid, top_ids, top_logprobs).
    generator_seed: every rank gets a CPU generator seeded with it (ranks must hold generators in
    one state). The processing tensors are the whole rows', on every rank. out: a function giving
    each rank its out= tensor."""
    vocab = logits.shape[-1]
    ranks = []
    for start, end in bounds:
        generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
        params = kwargs.get("params") or syncfree.SamplingParams(
            **{k: v for k, v in kwargs.items() if k not in ("seed", "offset", "params")})
        x, _, params, rng, _ = sd._arguments(logits[:, start:end], start, vocab, params, kwargs.get("seed"),
                                             kwargs.get("offset"), generator)
        ranks.append(sd._steps(x, start, vocab, params, rng, generator, return_logprobs, return_valid or bool(top),
                               out() if out else None, top or (0, False)))
    requests = [next(r) for r in ranks]
    while True:
        kinds = {kind for kind, _ in requests}
        assert len(kinds) == 1, f"ranks disagree on the next step: {kinds}"
        replies = _replies(kinds.pop(), [value for _, value in requests])
        results, requests = [], []
        for rank, reply in zip(ranks, replies):
            try:
                requests.append(rank.send(reply))
            except StopIteration as done:
                results.append(done.value if top else done.value[:3] if return_valid else done.value[:2])
        if results:
            assert len(results) == len(ranks), "some ranks finished before the others"
            return results
