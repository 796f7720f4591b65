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
