"""Float64 references for the vLLM tests: what a request may sample, from the logits vLLM's sampler saw.

The processing order is vLLM's (allowed ids, min-tokens, logit bias, repetition, frequency, presence),
then the temperature and the warpers top-k, top-p, min-p with syncfree's rules (README "Warpers"),
which keep the same sets as vLLM's except at float ties and for min-p with top-p (which the plugin
hands to vLLM's sampler). Decisions within TOL of their threshold keep the token (a relaxed set).
"""
import math

import torch

TOL = 1e-6


def processed(logits, *, allowed=None, banned=(), bias=None, prompt=(), output=(), repetition_penalty=1.0,
              frequency_penalty=0.0, presence_penalty=0.0):
    """One row's logits after vLLM's processing, in float64."""
    x = logits.double().clone()
    if allowed is not None:
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[list(allowed)] = True
        x[~keep] = -math.inf
    x[list(banned)] = -math.inf  # min-tokens' stop tokens
    for token, value in (bias or {}).items():
        x[token] += value
    for token in set(prompt) | set(output):
        x[token] = x[token] / repetition_penalty if x[token] > 0 else x[token] * repetition_penalty
    for token in set(output):
        count = list(output).count(token)
        x[token] -= frequency_penalty * count + presence_penalty
    return x


def kept(x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The tokens a sampled row may draw from processed logits x (float64), relaxed by TOL."""
    y = x / temperature
    keep = torch.isfinite(y)
    if 0 < top_k < y.numel() and keep.sum() > top_k:
        keep &= y >= torch.sort(y[keep], descending=True).values[top_k - 1]

    def probs():
        return torch.softmax(torch.where(keep, y, -math.inf), 0)

    if top_p < 1.0:
        # keep t iff the mass of tokens strictly more likely than t is < top_p (ties go together)
        values, order = torch.sort(-y)
        _, group, _ = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
        mass = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, group, probs()[order])
        ahead = torch.cumsum(mass, 0) - mass
        in_top_p = torch.zeros_like(keep)
        in_top_p[order] = (ahead < top_p + TOL)[group]
        keep &= in_top_p
    if min_p > 0.0:
        p = probs()
        keep &= p >= (min_p - TOL) * p.max()
    return keep


def greedy_ok(x, token):
    """Whether `token` is an argmax of x (within TOL of the max)."""
    return bool(x[token] >= x.max() - TOL * max(1.0, abs(float(x.max()))))


def vllm_full_logprobs(logits, md, mode):
    """What vLLM's own Sampler ranks and gathers from in logprobs mode `mode`: [B, V] float32.

    Raw modes read the logits as they come; processed modes run vLLM's processing, temperature and
    warpers (Sampler.sample's processed output; its sampled tokens are thrown away)."""
    from vllm.v1.sample.sampler import Sampler
    if mode == "raw_logprobs":
        return Sampler.compute_logprobs(logits)
    if mode == "raw_logits":
        return logits.float().clone()
    ref = Sampler(logprobs_mode=mode)
    x = ref.apply_logits_processors(logits.float().clone(), md, predict_bonus_token=False)
    return ref.sample(x, md)[1]


def assert_logprobs_match(ours, full, k, atol=1e-4):
    """Our LogprobsTensors against vLLM's `gather_logprobs` of `full` for the tokens we sampled.

    Ids must agree except among values tied within atol; ranks except where another token's value is
    within atol of the sampled token's."""
    from vllm.v1.sample.sampler import Sampler
    ids, values, ranks = ours.logprob_token_ids, ours.logprobs, ours.selected_token_ranks
    tokens = ids[:, 0].long()
    ref = Sampler.gather_logprobs(full, k, token_ids=tokens)
    assert ids.dtype == torch.int32 and ids.shape == ref.logprob_token_ids.shape
    assert ranks.dtype == torch.int64 and ranks.shape == ref.selected_token_ranks.shape
    torch.testing.assert_close(values, ref.logprobs, atol=atol, rtol=1e-5)  # top-k values sorted alike
    torch.testing.assert_close(full.gather(1, ids.long()), values, atol=atol, rtol=1e-5)  # each id's own value
    chosen = full.gather(1, tokens[:, None])
    low, high = (full > chosen + atol).sum(-1) + 1, (full >= chosen - atol).sum(-1)
    assert ((ranks >= low) & (ranks <= high)).all(), (ranks, ref.selected_token_ranks)
    exact = (ranks == ref.selected_token_ranks).float().mean().item()
    return exact
