"""Float64 references in plain PyTorch: the exact categorical law the sampler must follow."""
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


def scaled_logits(logits, temperature):
    """y = logits * (1/T) in float32 exactly as syncfree computes it (T = 0 scales nothing); NaN -> -inf."""
    x = logits.float()
    t = torch.as_tensor(temperature, dtype=torch.float32)
    inv = torch.where(t > 0, 1.0 / t, torch.ones_like(t))
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
