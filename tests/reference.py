"""Float64 references in plain PyTorch: the exact categorical law the sampler must follow."""
import math

import numpy as np
import torch
from scipy import stats


def softmax_law(logits, temperature=1.0):
    """softmax(logits / T) in float64, NaN and -inf masked (probability 0)."""
    x = logits.double().clone()
    x[torch.isnan(x)] = -float("inf")
    return torch.softmax(x / temperature, dim=-1)


def weights_law(weights):
    w = weights.double().clone()
    w[~(w > 0)] = 0
    return w / w.sum(-1, keepdim=True)


def chi_square_pvalue(tokens, probs):
    """Goodness of fit of sampled tokens to probs ([V], float64); bins with expected count < 5 are pooled."""
    n = tokens.numel()
    observed = torch.bincount(tokens, minlength=probs.numel()).double().numpy()
    expected = probs.numpy() * n
    assert observed[expected == 0].sum() == 0, "sampled a token of probability 0"
    order = np.argsort(expected)
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for i in order:
        if expected[i] == 0:
            continue
        pool_o += observed[i]
        pool_e += expected[i]
        if pool_e >= 5:
            obs.append(pool_o)
            exp.append(pool_e)
            pool_o = pool_e = 0.0
    if pool_e > 0:
        obs[-1] += pool_o
        exp[-1] += pool_e
    obs, exp = np.array(obs), np.array(exp)
    statistic = ((obs - exp) ** 2 / exp).sum()
    return stats.chi2.sf(statistic, len(obs) - 1)


def z_score(count, n, p):
    return (count - n * p) / np.sqrt(n * p * (1 - p))


# README "API": a temperature below FLT_MIN = 2^-126 in float32 (0, subnormal, negative, NaN) is greedy.
MIN_TEMPERATURE = 2.0 ** -126


def is_greedy(temperature):
    """Whether a temperature (a number) means greedy, judged on its float32 value as the kernels see it."""
    return not float(torch.tensor(float(temperature), dtype=torch.float32)) >= MIN_TEMPERATURE


def scaled_logits(logits, temperature):
    """y = logits * (1/T) in float32 exactly as syncfree computes it (greedy T scales nothing); NaN -> -inf."""
    x = logits.float()
    t = torch.as_tensor(temperature, dtype=torch.float32)
    inv = torch.where(t >= MIN_TEMPERATURE, 1.0 / t, torch.ones_like(t))
    if inv.dim() == 1:
        inv = inv[:, None]
    y = x * inv
    return torch.where(torch.isnan(y), torch.full_like(y, -float("inf")), y)


def _mass_rule(order_value, p, fraction):
    """Keep t iff the mass of tokens with strictly smaller order_value is < fraction; ties together.

    Returns (keep mask, margin): margin is the distance of `fraction` from the
    nearest decision point (the exclusive mass of a tie group)."""
    values, order = torch.sort(order_value)
    ps = p[order]
    unique, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    group_mass = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, ps)
    exclusive = torch.cumsum(group_mass, 0) - group_mass
    keep_group = exclusive < fraction
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order] = keep_group[inverse]
    return keep, (exclusive - fraction).abs().min().item()


def reference_keep(y, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0):
    """The warper chain of the README's "Warpers" on one row of float32 scaled logits, by sorting in float64.

    Returns (keep mask, margin): margin is the smallest distance of a mass or
    ratio decision from its threshold (inf when only top-k acts)."""
    y64 = y.double()
    keep = torch.isfinite(y64)
    margin = float("inf")
    vocab = y.numel()
    if keep.sum() == 0:
        return keep, margin

    def probs():
        z = torch.where(keep, y64, torch.full_like(y64, -float("inf")))
        return torch.softmax(z, 0)

    if 0 < top_k < vocab and keep.sum() > top_k:
        kth = torch.sort(y64[keep], descending=True).values[top_k - 1]
        keep &= y64 >= kth
    if top_p < 1.0:
        k, m = _mass_rule(torch.where(keep, -y64, torch.full_like(y64, float("inf"))), probs(), top_p)
        keep &= k
        margin = min(margin, m)
    if min_p > 0.0:
        p = probs()
        ratio = p / p.max()
        keep &= ratio >= min_p
        if (p > 0).any():
            margin = min(margin, (ratio[p > 0] - min_p).abs().min().item())
    if typical_p < 1.0:
        p = probs()
        logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
        entropy = -(p * logp).sum()
        deviation = torch.where(p > 0, (-logp - entropy).abs(), torch.full_like(p, float("inf")))
        k, m = _mass_rule(deviation, p, typical_p)
        keep &= k
        margin = min(margin, m)
    return keep, margin


def pack_mask(allowed):
    """bool [B, V] -> int32 [B, ceil(V / 32)] in xgrammar's layout: bit j of word w allows token 32w + j."""
    b, v = allowed.shape
    words = (v + 31) // 32
    bits = torch.zeros(b, words * 32, dtype=torch.int64)
    bits[:, :v] = allowed.long()
    packed = (bits.view(b, words, 32) << torch.arange(32)).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # two's complement bit 31


def _per_row(value, b, clamp=None):
    """A number or [B] tensor as B Python floats; clamp maps each tensor entry (per-row rules)."""
    if isinstance(value, torch.Tensor):
        return [clamp(v) if clamp else v for v in value.double().tolist()]
    return [float(value)] * b


def _ids(tokens, i):
    return [] if tokens is None else [t for t in tokens[i].tolist() if t != -1]


def process_reference(logits, *, repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
                      output_tokens=None, prompt_tokens=None, bias_tokens=None, bias_values=None, allowed=None):
    """The README's "Processing" in float64, row by row: allowed mask (bool [B, V]) -> logit bias (last
    duplicate wins) -> repetition penalty (HF, prompt + output) -> frequency/presence (OpenAI, output)."""
    x = logits.double().clone()
    b = x.shape[0]
    rep = _per_row(repetition_penalty, b, lambda r: 1.0 if math.isnan(r) or r <= 0 else r)
    freq = _per_row(frequency_penalty, b, lambda f: 0.0 if math.isnan(f) else f)
    pres = _per_row(presence_penalty, b, lambda p: 0.0 if math.isnan(p) else p)
    for i in range(b):
        row = x[i]
        if allowed is not None:
            row[~allowed[i]] = -math.inf
        bias = {}
        if bias_tokens is not None:
            for t, value in zip(bias_tokens[i].tolist(), bias_values[i].double().tolist()):
                if t != -1:
                    bias[t] = value  # a later slot overwrites an earlier one
        for t, value in bias.items():
            if allowed is None or allowed[i, t]:  # a masked token stays masked, even under a +inf bias
                row[t] += value
        for t in set(_ids(prompt_tokens, i)) | set(_ids(output_tokens, i)):
            row[t] = row[t] / rep[i] if row[t] > 0 else row[t] * rep[i]
        counts = {}
        for t in _ids(output_tokens, i):
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            row[t] -= freq[i] * c + pres[i]
    return x


def warp_reference(processed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, greedy_warps=True):
    """(processed / T with the warpers' removed tokens at -inf, smallest decision margin), float64.

    A greedy T scales nothing; greedy rows are warped as syncfree.warp does (greedy_warps) or left
    whole, as the sampler's greedy rows are (greedy_warps=False)."""
    b = processed.shape[0]
    temps = _per_row(temperature, b)
    ks = [int(k) for k in _per_row(top_k, b)]
    ps, mins, typs = _per_row(top_p, b), _per_row(min_p, b), _per_row(typical_p, b)
    out = torch.empty_like(processed)
    margin = math.inf
    for i in range(b):
        sampled = not is_greedy(temps[i])
        y = processed[i] / temps[i] if sampled else processed[i].clone()
        if sampled or greedy_warps:
            keep, m = reference_keep(y.float(), ks[i], ps[i], mins[i], typs[i])
            y = torch.where(keep, y, torch.full_like(y, -math.inf))
            margin = min(margin, m)
        out[i] = y
    return out, margin


def sampling_logprobs(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, **processing):
    """(float64 log-probs [B, V] of the law each row is sampled from, processed logits, margin)."""
    processed = process_reference(logits, **processing)
    warped, margin = warp_reference(processed, temperature, top_k, top_p, min_p, typical_p, greedy_warps=False)
    return torch.log_softmax(warped, -1), processed, margin


def top_n_reference(logprobs, n):
    """(ids, values) of the n highest log-probs per row, highest first, ties to the lower id."""
    order = torch.sort(-logprobs, dim=-1, stable=True).indices[:, :n]
    return order, logprobs.gather(-1, order)
