"""top-k, top-p, min-p, typical-p: kept sets against a float64 sort-based reference, the sampled law, edge values.

Kept sets must equal the reference's exactly on every row whose mass/ratio
decisions are farther than MARGIN (2e-6) from their thresholds; a row nearer
a boundary (float32 logits vs float64 masses can disagree there) may differ,
and such rows must be rare (< 2% of rows).
"""
import math

import pytest
import torch

import syncfree
from reference import chi_square_pvalue, reference_keep, scaled_logits

MARGIN = 2e-6
ALPHA = 1e-3
INF = float("inf")


def rows(kind, b, v, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "flat":
        return torch.randn(b, v, generator=g) * 0.1
    if kind == "peaked":
        return torch.randn(b, v, generator=g) * 4
    if kind == "zipf":
        ranks = torch.rand(b, v, generator=g).argsort(-1).double() + 1
        return (-1.2 * ranks.log()).float()
    if kind == "ties":
        return (torch.randn(b, v, generator=g) * 2).round() / 2
    if kind == "masked":
        x = torch.randn(b, v, generator=g) * 2
        x[torch.rand(b, v, generator=g) < 0.3] = -INF
        x[torch.rand(b, v, generator=g) < 0.05] = float("nan")
        return x
    raise ValueError(kind)


CONFIGS = [
    dict(top_k=1), dict(top_k=7), dict(top_k=40), dict(top_p=0.9), dict(top_p=0.5), dict(top_p=0.999),
    dict(min_p=0.05), dict(min_p=0.3), dict(typical_p=0.9), dict(typical_p=0.4),
    dict(top_k=50, top_p=0.9), dict(top_k=30, top_p=0.8, min_p=0.02),
    dict(top_k=100, top_p=0.95, min_p=0.01, typical_p=0.9), dict(top_p=0.9, typical_p=0.8),
]


def check_kept_sets(x, temperature, config, per_row=None):
    warped, logprobs = syncfree.warp(x, temperature, **config)
    kept = warped > -INF
    y = scaled_logits(x, temperature)
    differ = 0
    for b in range(x.shape[0]):
        row_config = {k: (v[b].item() if isinstance(v, torch.Tensor) else v) for k, v in config.items()}
        ref, margin = reference_keep(y[b], **row_config)
        if not torch.equal(kept[b], ref):
            assert margin <= MARGIN, f"row {b} {row_config}: {kept[b].sum()} kept, reference {ref.sum()}"
            differ += 1
    assert differ <= max(2, 0.02 * x.shape[0]), f"{differ} rows differ near a boundary"
    # The warped logits are the scaled ones where kept, and logprobs their log_softmax.
    assert torch.equal(warped[kept], y[kept])
    torch.testing.assert_close(logprobs, torch.log_softmax(warped, -1))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("kind", ["flat", "peaked", "zipf", "ties", "masked"])
def test_kept_sets_match_sorting_reference(kind, config):
    x = rows(kind, 96, 1000, seed=len(kind))
    check_kept_sets(x, 0.8, config)


@pytest.mark.parametrize("vocab", [1, 2, 17, 1001, 32000, 262144])
def test_kept_sets_any_vocab(vocab):
    b = 4 if vocab > 10000 else 24
    x = rows("peaked", b, vocab, seed=vocab)
    for config in (dict(top_k=20, top_p=0.9, min_p=0.01, typical_p=0.95), dict(top_p=0.7), dict(typical_p=0.5)):
        check_kept_sets(x, 1.3, config)


def test_per_row_parameters_and_temperatures():
    b = 64
    x = rows("peaked", b, 2000, seed=3)
    g = torch.Generator().manual_seed(4)
    config = dict(top_k=torch.randint(0, 300, (b,), generator=g), top_p=torch.rand(b, generator=g) * 0.9 + 0.1,
                  min_p=torch.rand(b, generator=g) * 0.1, typical_p=torch.rand(b, generator=g) * 0.5 + 0.5)
    temperature = torch.rand(b, generator=g) + 0.3
    check_kept_sets(x, temperature, config)
    # Identity values in some rows leave them alone.
    config["top_k"][::2] = 0
    config["top_p"][::3] = 1.0
    check_kept_sets(x, temperature, config)


def test_out_of_range_values_in_row_tensors_are_clamped():
    x = rows("peaked", 4, 500, seed=5)
    warped, _ = syncfree.warp(x, 1.0, top_k=torch.tensor([-3, 0, 10_000, 5]),
                              top_p=torch.tensor([float("nan"), 2.0, -1.0, 1.0]))
    kept = (warped > -INF).sum(-1)
    assert kept[0] == 500 and kept[1] == 500  # top_k <= 0 and top_p NaN / > 1: off
    assert kept[2] == 1  # top_p <= 0 keeps the most likely token only
    assert kept[3] == 5


@pytest.mark.slow
def test_sampled_law_is_the_renormalised_law():
    """1M draws; chi-square at alpha 1e-3 against softmax over the survivors."""
    row = rows("zipf", 1, 300, seed=6)[0]
    for config in (dict(top_k=40), dict(top_p=0.8), dict(top_k=100, top_p=0.9, min_p=0.02, typical_p=0.9)):
        n = 1_000_000
        tokens = syncfree.sample(row.expand(n, 300), 0.9, seed=7, **config)
        keep, _ = reference_keep(scaled_logits(row, 0.9), **config)
        law = torch.softmax(torch.where(keep, scaled_logits(row, 0.9).double(), torch.tensor(-INF, dtype=torch.float64)), 0)
        assert keep[tokens].all(), "sampled a removed token"
        assert chi_square_pvalue(tokens, law) > ALPHA


def test_logprobs_are_under_the_warped_distribution():
    x = rows("peaked", 32, 3000, seed=8)
    tokens, logprobs = syncfree.sample(x, 0.7, top_k=50, top_p=0.9, seed=9, return_logprobs=True)
    warped, ref = syncfree.warp(x, 0.7, top_k=50, top_p=0.9)
    torch.testing.assert_close(logprobs, ref.gather(1, tokens[:, None]).squeeze(1), atol=2e-5, rtol=1e-5)


def test_degenerate_parameter_values():
    x = rows("peaked", 50, 4000, seed=10)
    assert torch.equal(syncfree.sample(x, 1.0, top_k=1, seed=1), x.argmax(-1))
    assert torch.equal(syncfree.sample(x, 1.0, top_p=1e-9, seed=1), x.argmax(-1))
    assert torch.equal(syncfree.sample(x, 1.0, min_p=1.0, seed=1), x.argmax(-1))
    y = scaled_logits(x, 1.0).double()
    p = torch.softmax(y, -1)
    deviation = (-p.log() + (p * p.log()).sum(-1, keepdim=True)).abs()
    assert torch.equal(syncfree.sample(x, 1.0, typical_p=1e-9, seed=1), deviation.argmin(-1))


def test_greedy_rows_ignore_warpers_and_masked_never_sampled():
    x = rows("masked", 200, 300, seed=11)
    temps = torch.full((200,), 0.8)
    temps[::4] = 0
    tokens = syncfree.sample(x, temps, top_k=10, top_p=0.9, typical_p=0.9, seed=12)
    assert torch.equal(tokens[::4], x[::4].nan_to_num(-INF).argmax(-1))
    assert torch.isfinite(x.gather(1, tokens[:, None])).all()


@pytest.mark.slow
def test_removed_tokens_never_sampled_in_a_million_draws():
    x = rows("masked", 200, 300, seed=11)
    n = 1_000_000
    row = x[1]
    drawn = syncfree.sample(row.expand(n, 300), 0.8, top_k=30, min_p=0.05, seed=13)
    keep, _ = reference_keep(scaled_logits(row, 0.8), top_k=30, min_p=0.05)
    assert keep[drawn].all()


def test_warp_with_temperature_zero_scales_nothing():
    x = rows("peaked", 3, 100, seed=14)
    warped, _ = syncfree.warp(x, 0.0, top_k=5)
    kept = warped > -INF
    assert torch.equal(warped[kept], x[kept]) and (kept.sum(-1) == 5).all()


def test_warp_shapes_and_dtypes():
    x = rows("peaked", 3, 700, seed=15)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        warped, logprobs = syncfree.warp(x.to(dtype), 0.9, top_k=30, top_p=0.9)
        assert warped.dtype == torch.float32 and logprobs.dtype == torch.float32
        assert torch.equal(warped, syncfree.warp(x.to(dtype).float(), 0.9, top_k=30, top_p=0.9)[0])
    one, _ = syncfree.warp(x[1], 0.9, top_k=30)
    assert one.shape == (700,) and torch.equal(one, syncfree.warp(x[1:2], 0.9, top_k=30)[0][0])
    empty, empty_lp = syncfree.warp(torch.randn(0, 5), top_k=2)
    assert empty.shape == (0, 5) and empty_lp.shape == (0, 5)


def test_warped_tokens_do_not_depend_on_thread_count():
    x = rows("zipf", 3, 150_001, seed=16)
    config = dict(top_k=2000, top_p=0.9, min_p=0.001, typical_p=0.95)
    torch.set_num_threads(1)
    one = syncfree.sample(x, 0.8, seed=torch.arange(3), **config)
    torch.set_num_threads(2)
    two = syncfree.sample(x, 0.8, seed=torch.arange(3), **config)
    assert torch.equal(one, two)


def test_typical_p_on_a_near_uniform_row_keeps_the_tokens_nearest_the_mean():
    """A huge temperature leaves logits that differ by less than the fixed-point resolution: the masses
    tie, and typical-p keeps the ceil(typical_p n) tokens nearest E_p[y] = mean(y) (README "Warpers":
    deviation |y - E_p[y]|). The center was once the max (a fuzzing find); typical_spread keeps the
    gap terms in range. (float64 softmax cannot tell these probabilities apart, so the sorting
    reference sees one tie group here; the mean is taken from y directly.)"""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 50, generator=g)
    for temperature in (1e30, 1e20):
        warped, _ = syncfree.warp(x, temperature, typical_p=0.31)
        y = scaled_logits(x, torch.full((3,), temperature)).double()
        nearest = (y - y.mean(1, keepdim=True)).abs().argsort(1)[:, :16]  # ceil(0.31 * 50)
        want = torch.zeros_like(warped, dtype=torch.bool).scatter_(1, nearest, True)
        assert torch.equal(warped > -float("inf"), want)
