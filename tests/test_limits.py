"""The rules at the limits, one rule for every entry point (README "API", "Semantics",
"Processing", "Random numbers"): temperatures around the greedy threshold 2^-126, the 2^24-id
cap's message, +inf and empty rows in warp and verify_draft as in sample, degenerate rows in raw
mode, and logprobs that do not depend on the thread count or the batch.
"""
import math

import pytest
import torch

import ranks
import syncfree
from reference import MIN_TEMPERATURE, is_greedy, z_score

INF = float("inf")
# Temperatures that are greedy (below 2^-126 in float32) and the smallest ones that sample.
GREEDY_TEMPERATURES = [0.0, 2.0**-149, 1e-45, 1e-39, 2.0**-126 - 2.0**-149]
SAMPLING_TEMPERATURES = [2.0**-126, 1.2e-38]


def test_the_threshold_is_float32_flt_min():
    assert all(is_greedy(t) for t in GREEDY_TEMPERATURES)
    assert not any(is_greedy(t) for t in SAMPLING_TEMPERATURES)
    assert MIN_TEMPERATURE == torch.finfo(torch.float32).tiny


@pytest.mark.parametrize("t", GREEDY_TEMPERATURES)
def test_temperatures_below_flt_min_are_greedy_at_every_entry_point(t):
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(1))
    x[2, ::3] = -INF
    want = x.argmax(-1)
    want_logprobs = torch.log_softmax(x.double(), -1).gather(1, want[:, None])[:, 0].float()
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    tokens, logprobs = syncfree.sample(x, t, generator=g, return_logprobs=True)
    assert torch.equal(tokens, want) and torch.equal(g.get_state(), state), "a greedy call draws no noise"
    torch.testing.assert_close(logprobs, want_logprobs)
    per_row = torch.full((4,), t)
    per_row[1] = 0.8
    tokens = syncfree.sample(x, per_row, seed=torch.arange(4), offset=torch.zeros(4, dtype=torch.int64), top_k=3)
    assert torch.equal(tokens[[0, 2, 3]], want[[0, 2, 3]])
    # top-n of a greedy row: softmax(logits), in both modes.
    *_, top_ids, top_logprobs = syncfree.sample(x, t, seed=1, return_top_logprobs=4)
    ref = torch.log_softmax(x.double(), -1).topk(4)
    assert torch.equal(top_ids, ref.indices)
    torch.testing.assert_close(top_logprobs, ref.values.float())
    # warp scales nothing, as for temperature 0.
    warped, warp_logprobs = syncfree.warp(x, t)
    assert torch.equal(warped, x)
    torch.testing.assert_close(warp_logprobs, torch.log_softmax(x, -1))
    # verify_draft: the argmax is accepted, anything else is replaced by it.
    target = torch.stack([x, x], 1)  # [4, 2, V]: one draft, then the bonus position
    drafts = torch.stack([want, (want + 1) % 300], 1)[:, :1]
    tokens, accepted = syncfree.verify_draft(target, drafts, None, t, seed=1)
    assert accepted.tolist() == [1] * 4 and torch.equal(tokens[:, 0], want)
    tokens, accepted = syncfree.verify_draft(target, (drafts + 1) % 300, None, t, seed=1)
    assert accepted.tolist() == [0] * 4 and torch.equal(tokens[:, 0], want)
    # syncfree.distributed (simulated ranks): the same greedy answer on any cut.
    for rank_tokens, _ in ranks.simulate(x, [(0, 100), (100, 300)], temperature=t, seed=1):
        assert torch.equal(rank_tokens, want)


def test_the_smallest_sampling_temperature_divides():
    """At T = 2^-126 the logits [0, -2^-126] scale to [0, -1]: softmax gives token 1 probability
    1 / (1 + e) = 0.2689 (scaling by FLT_MAX instead gave 0.418). 200k per-row seeds: the standard
    error is 0.001, so a 1% error is 10 standard errors; |z| < 4.89 is alpha = 1e-6."""
    x = torch.tensor([0.0, -(2.0**-126)])
    warped, logprobs = syncfree.warp(x, 2.0**-126)
    assert warped.tolist() == [0.0, -1.0]
    torch.testing.assert_close(logprobs, torch.log_softmax(torch.tensor([0.0, -1.0]), 0))
    draws = 200_000
    tokens = syncfree.sample(x.expand(draws, 2), 2.0**-126, seed=torch.arange(draws),
                             offset=torch.zeros(draws, dtype=torch.int64))
    p = 1 / (1 + math.e)
    assert abs(z_score(tokens.sum().item(), draws, p)) < 4.89


def test_the_issues_cases_at_a_subnormal_temperature():
    """Each of these once scaled by FLT_MAX; now greedy, as the README says."""
    tokens, logprobs = syncfree.sample(torch.tensor([[0.5, 0.6]]), 1e-39, seed=1, return_logprobs=True)
    assert tokens.tolist() == [1]
    torch.testing.assert_close(logprobs, torch.log_softmax(torch.tensor([[0.5, 0.6]]), -1)[:, 1])
    tokens, accepted = syncfree.verify_draft(torch.tensor([[[0.6, 0.5], [0.5, 0.6]]]), torch.tensor([[1]]), None,
                                             1e-39, seed=1)
    assert accepted.tolist() == [0] and tokens.tolist() == [[0, -1]]


def test_the_id_cap_names_the_arguments_that_fill_it():
    over = 2**24 + 1
    with pytest.raises(ValueError, match=r"^bias_tokens 16777217: at most 2\^24"):
        syncfree.sample(torch.randn(1, 10), bias_tokens=torch.full((1, over), -1),
                        bias_values=torch.zeros(1, over))
    with pytest.raises(ValueError, match=r"^output_tokens 8388608 \+ bias_tokens 8388609: at most 2\^24"):
        syncfree.sample(torch.randn(1, 10), output_tokens=torch.full((1, 2**23), -1),
                        bias_tokens=torch.full((1, 2**23 + 1), -1), bias_values=torch.zeros(1, 2**23 + 1))


def test_warp_logprobs_follow_samples_rules_for_inf_and_empty_rows():
    x = torch.tensor([[1.0, INF, 2.0, INF, INF], [-INF] * 5, [1.0, 2.0, 3.0, -INF, 0.0], [0.0, INF, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[31], [31], [31], [0]], dtype=torch.int32)  # the mask empties row 3
    for kwargs in (dict(), dict(top_k=2), dict(allowed_mask=mask)):
        warped, logprobs = syncfree.warp(x, 0.7, **kwargs)
        assert not torch.isnan(logprobs).any()
        tokens, chosen, valid = syncfree.sample(x, 0.7, seed=3, return_logprobs=True, return_valid=True, **kwargs)
        torch.testing.assert_close(logprobs.gather(1, tokens[:, None])[:, 0][valid], chosen[valid])
        assert (chosen[~valid] == -INF).all() and (logprobs[~valid] == -INF).all()
        assert torch.allclose(logprobs[0], torch.tensor([-INF, -math.log(3), -INF, -math.log(3), -math.log(3)]))


@pytest.mark.parametrize("mode", ["processed", "raw"])
def test_a_row_the_mask_empties_has_no_logprobs_in_either_mode(mode):
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    x[2, 4] = INF
    mask = torch.full((3, 2), -1, dtype=torch.int32)
    mask[1] = 0
    tokens, logprobs, valid, top_ids, top_logprobs = syncfree.sample(
        x, 0.9, seed=1, allowed_mask=mask, return_logprobs=True, return_valid=True, return_top_logprobs=4,
        logprobs_mode=mode)
    assert valid.tolist() == [True, False, True] and tokens[1] == 0 and logprobs[1] == -INF
    assert top_ids[1].tolist() == [0, 1, 2, 3] and (top_logprobs[1] == -INF).all()
    # A +inf row is decided by its +inf token in both modes: logprob -log(1) = 0.
    assert tokens[2] == 4 and logprobs[2] == 0 and top_ids[2, 0] == 4 and top_logprobs[2, 0] == 0


def test_verify_draft_reports_a_point_mass_as_sample_does():
    """A position with count +inf logits: -log(count) for its token, accepted or emitted, sampled
    or greedy, as syncfree.sample reports that row."""
    target = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(3))
    target[:, 0, [2, 7]] = INF
    target[:, 1, [1, 4, 6]] = INF
    for t in (0.9, 0.0):
        want = syncfree.sample(target.reshape(6, 20), t, seed=1, return_logprobs=True)[1].reshape(2, 3)
        tokens, accepted, logprobs = syncfree.verify_draft(target, torch.tensor([[2, 1], [2, 9]]), None, t, seed=1,
                                                           return_logprobs=True)
        assert accepted.tolist() == [2, 1] and tokens.tolist() == [[2, 1, tokens[0, 2].item()], [2, 1, -1]]
        torch.testing.assert_close(logprobs[:, :2], want[:, :2])
        assert math.isclose(logprobs[0, 0].item(), -math.log(2), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_logprobs_do_not_depend_on_the_thread_count_or_the_batch(dtype):
    """Rows long enough to be cut into chunks: the cut depends on V alone, so the masses merge in one
    order on any number of threads and in any batch (bit for bit)."""
    v = 128256 + 17
    x = (torch.randn(3, v, generator=torch.Generator().manual_seed(4)) * 4).to(dtype)
    kwargs = dict(seed=torch.tensor([5, 6, 7]), offset=torch.arange(3), return_logprobs=True, return_valid=True,
                  return_top_logprobs=5, repetition_penalty=1.2, output_tokens=torch.tensor([[1, 2]] * 3))
    results = []
    for mode in ("processed", "raw"):
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            results.append((mode, threads, syncfree.sample(x, 0.9, top_p=0.95, logprobs_mode=mode, **kwargs)))
        alone = syncfree.sample(x[1:2], 0.9, top_p=0.95, logprobs_mode=mode,
                                **{k: (v[1:2] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
        for got, want in zip(alone, results[-1][2]):
            assert torch.equal(got[0], want[1]), f"{mode}: a row alone differs from the row in a batch"
    for mode, threads, result in results:
        first = next(r for m, _, r in results if m == mode)
        for got, want in zip(result, first):
            assert torch.equal(got, want), f"{mode}: {threads} threads differ from 1"
