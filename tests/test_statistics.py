"""The sampled law equals the exact categorical law (CPU; the CUDA path gives the same tokens).

Every test draws with fixed seeds, so it is deterministic: it either always
passes or always fails. Significance level for the goodness-of-fit tests:
alpha = 1e-3. Sample sizes are chosen for the error each test must catch:
N = 1.1M draws give a per-token z-test power > 0.9 at |z| > 3.9 against a 5%
relative error in a 1%-probability token (0.05 * sqrt(N * 0.01 / 0.99) = 5.2).
The tests that draw hundreds of thousands of samples or more are the `slow` tier (README "Tests"):
`pytest tests -m slow`.
"""
import math

import pytest
import torch

import syncfree
from reference import chi_square_pvalue, softmax_law, weights_law, z_score

ALPHA = 1e-3
N = 1_100_000


def draw(row, n, seed, **kwargs):
    """n independent draws from one row: the row repeated with stride 0, rows get distinct noise."""
    return syncfree.sample(row.expand(n, row.numel()), seed=seed, **kwargs)


def distributions():
    g = torch.Generator().manual_seed(1234)
    flat = torch.zeros(50)
    peaked = torch.randn(200, generator=g) * 3
    zipf = -1.1 * torch.log(torch.arange(1, 1001, dtype=torch.float64)).float()  # heavy tail
    masked = torch.randn(300, generator=g)
    masked[::3] = -float("inf")
    masked[1::7] = float("nan")
    # One token at exactly 1% with the rest spread evenly: the z-test target.
    one_percent = torch.full((100,), math.log(0.99 / 99))
    one_percent[37] = math.log(0.01)
    return {"flat": flat, "peaked": peaked, "zipf": zipf, "masked": masked, "one_percent": one_percent}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flat", "peaked", "zipf", "masked", "one_percent"])
def test_goodness_of_fit(name):
    row = distributions()[name]
    tokens = draw(row, N, seed=11)
    law = softmax_law(row)
    assert chi_square_pvalue(tokens, law) > ALPHA
    if name == "one_percent":
        count = (tokens == 37).sum().item()
        assert abs(z_score(count, N, 0.01)) < 3.9


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_goodness_of_fit_other_dtypes(dtype):
    row = distributions()["peaked"].to(dtype)
    tokens = draw(row, N // 2, seed=12)
    assert chi_square_pvalue(tokens, softmax_law(row.float())) > ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.6, 5.0])
def test_temperature_scaling(temperature):
    row = distributions()["peaked"] / 3
    tokens = draw(row, N // 2, seed=13, temperature=temperature)
    assert chi_square_pvalue(tokens, softmax_law(row, temperature)) > ALPHA


@pytest.mark.slow
def test_per_row_temperature_tensor():
    row = distributions()["peaked"] / 3
    n = N // 2
    temps = torch.tensor([0.5, 2.0]).repeat(n // 2)
    tokens = syncfree.sample(row.expand(n, row.numel()), temps, seed=14)
    for k, t in enumerate((0.5, 2.0)):
        assert chi_square_pvalue(tokens[k::2], softmax_law(row, t)) > ALPHA


@pytest.mark.slow
def test_infinite_temperature_is_uniform_over_unmasked():
    row = distributions()["masked"]
    tokens = draw(row, N // 4, seed=15, temperature=float("inf"))
    law = torch.isfinite(row).double()
    assert chi_square_pvalue(tokens, law / law.sum()) > ALPHA


@pytest.mark.slow
def test_sample_probs_law():
    g = torch.Generator().manual_seed(5)
    weights = torch.rand(120, generator=g) ** 3 * 7  # unnormalised
    weights[::5] = 0
    tokens = syncfree.sample_probs(weights.expand(N, 120), seed=16)
    assert chi_square_pvalue(tokens, weights_law(weights)) > ALPHA


@pytest.mark.slow
def test_tail_mass_at_two_to_minus_twenty():
    """Tokens of relative probability 2^-20 keep their mass (fp32 exponential_ noise loses
    tokens below 2^-24; a noise floor at 2^-20 or worse fails this).

    One heavy token and 4095 tail tokens of relative weight 2^-20 each (total
    tail mass ~2^-8), both inside the heavy token's group and in groups of
    their own. N = 2^20 draws: ~4090 tail hits expected, sd ~64; the bound of
    5 sd flags any tail loss above ~8%.
    """
    vocab = 4096
    row = torch.full((vocab,), -20 * math.log(2))
    row[0] = 0.0
    n = 1 << 20
    tokens = draw(row, n, seed=17)
    p_tail = 4095 * 2.0 ** -20 / (1 + 4095 * 2.0 ** -20)
    tail = (tokens != 0).sum().item()
    assert abs(z_score(tail, n, p_tail)) < 5
    # Same-group tail tokens (1..15) are picked too: expected ~15 hits.
    assert ((tokens >= 1) & (tokens < 16)).sum().item() > 0


@pytest.mark.slow
def test_masked_tokens_never_sampled():
    """2M draws each from logits with -inf/NaN and from weights with zeros/NaN/negatives."""
    row = torch.randn(64, generator=torch.Generator().manual_seed(3))
    row[1::2] = -float("inf")
    row[2] = float("nan")
    tokens = draw(row, 2_000_000, seed=18, temperature=3.0)
    assert torch.isfinite(row[tokens]).all()
    weights = torch.rand(64, generator=torch.Generator().manual_seed(4))
    weights[::2] = 0
    weights[3] = float("nan")
    weights[5] = -1.0
    tokens = syncfree.sample_probs(weights.expand(2_000_000, 64), seed=19)
    assert (weights[tokens] > 0).all()


def test_greedy_is_exact_argmax():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 5000, generator=g)
    x[:, 17] = x.max(-1).values  # a tie with the max: the lower index wins
    expected = x.argmax(-1)
    assert torch.equal(syncfree.sample(x, 0.0), expected)
    assert torch.equal(syncfree.sample(x, torch.zeros(300)), expected)


def test_logprobs_match_float64_reference():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(256, 3000, generator=g) * 4
    x[:, ::11] = -float("inf")
    for temperature in (0.7, 1.0, 2.5):
        tokens, logprobs = syncfree.sample(x, temperature, seed=20, return_logprobs=True)
        ref = torch.log_softmax(x.double() / temperature, -1).gather(1, tokens[:, None]).squeeze(1)
        torch.testing.assert_close(logprobs.double(), ref, atol=2e-5, rtol=1e-5)
    # Greedy rows report log softmax(logits): temperature 0 scales nothing.
    tokens, logprobs = syncfree.sample(x, 0.0, return_logprobs=True)
    ref = torch.log_softmax(x.double(), -1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs.double(), ref, atol=2e-5, rtol=1e-5)
