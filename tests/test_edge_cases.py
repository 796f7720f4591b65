"""Edge cases of the README's "Semantics" and the argument errors of its "API"."""
import math

import pytest
import torch

import syncfree
import syncfree.distributed as sd

import parity
import ranks

INF, NAN = float("inf"), float("nan")


def test_degenerate_rows_give_an_in_range_token_and_invalid_flag():
    x = torch.randn(4, 100)
    x[1] = -INF
    x[2] = NAN
    tokens, logprobs, valid = syncfree.sample(x, seed=1, return_logprobs=True, return_valid=True)
    assert valid.tolist() == [True, False, False, True]
    assert tokens[1].item() == 0 and tokens[2].item() == 0
    assert ((tokens >= 0) & (tokens < 100)).all()
    assert logprobs[1] == -INF and logprobs[2] == -INF
    probs = torch.rand(3, 50)
    probs[0] = 0
    probs[2] = NAN
    tokens, valid = syncfree.sample_probs(probs, seed=2, return_valid=True)
    assert valid.tolist() == [False, True, False]
    assert ((tokens >= 0) & (tokens < 50)).all()


def test_nan_counts_as_masked():
    x = torch.full((20000, 8), NAN)
    x[:, 5] = 0.0
    x[:, 6] = 0.0
    tokens = syncfree.sample(x, seed=3)
    assert set(tokens.unique().tolist()) == {5, 6}


def test_positive_infinity_wins_lowest_index_first():
    x = torch.randn(3, 300)
    x[0, 250] = INF
    x[1, [40, 7, 290]] = INF
    x[2, 299] = INF
    x[2, :10] = NAN
    tokens, logprobs = syncfree.sample(x, 0.5, seed=4, return_logprobs=True)
    assert tokens.tolist() == [250, 7, 299]
    torch.testing.assert_close(logprobs, torch.tensor([0.0, -math.log(3), 0.0]))
    assert syncfree.sample(x, 0.0).tolist() == [250, 7, 299]
    w = torch.rand(2, 40)
    w[0, [33, 12]] = INF
    assert syncfree.sample_probs(w, seed=1)[0].item() == 12


@pytest.mark.parametrize("vocab", [1, 2, 15, 16, 17, 31, 33, 1000, 8191, 8193, 70001])
def test_any_vocab_size(vocab):
    x = torch.randn(5, vocab)
    tokens = syncfree.sample(x, seed=5)
    assert tokens.shape == (5,) and ((tokens >= 0) & (tokens < vocab)).all()
    assert torch.equal(syncfree.sample(x, 0.0), x.argmax(-1))
    # The last token (in a short last group) can win.
    x[:, -1] = 50
    assert (syncfree.sample(x, seed=6) == vocab - 1).all()


def test_one_dimensional_input_gives_a_scalar():
    x = torch.randn(77)
    token = syncfree.sample(x, seed=1)
    assert token.shape == () and token.dtype == torch.int64
    token, logprob, valid = syncfree.sample(x, seed=1, return_logprobs=True, return_valid=True)
    assert logprob.shape == () and valid.shape == () and valid.item()
    assert syncfree.sample(x, torch.tensor([0.0])).item() == x.argmax().item()


def test_empty_batch():
    tokens, logprobs, valid = syncfree.sample(torch.randn(0, 10), return_logprobs=True, return_valid=True)
    assert tokens.shape == (0,) and logprobs.shape == (0,) and valid.shape == (0,)
    assert syncfree.sample_probs(torch.rand(0, 3)).shape == (0,)


def test_batch_above_grid_y_limit():
    x = torch.randn(70_000, 3)
    x[:, 1] = 30.0
    assert (syncfree.sample(x, seed=7) == 1).all()


def test_any_row_stride():
    wide = torch.randn(32, 1200)
    seeds = torch.arange(32)
    view = wide[:, 100:1100]  # row stride 1200, offset start
    assert torch.equal(syncfree.sample(view, seed=seeds), syncfree.sample(view.contiguous(), seed=seeds))
    every_other = wide[::2, :1000]
    assert torch.equal(syncfree.sample(every_other, seed=seeds[:16]),
                       syncfree.sample(every_other.contiguous(), seed=seeds[:16]))
    repeated = wide[0].expand(32, 1200)  # row stride 0
    assert torch.equal(syncfree.sample(repeated, seed=seeds), syncfree.sample(repeated.contiguous(), seed=seeds))


def test_out_is_filled_and_returned():
    x = torch.randn(6, 40)
    out = torch.full((6,), -1, dtype=torch.int64)
    result = syncfree.sample(x, seed=1, out=out)
    assert result is out and torch.equal(out, syncfree.sample(x, seed=1))
    out2 = torch.empty(12, dtype=torch.int64)[::2]  # strided out
    syncfree.sample(x, 0.0, out=out2)
    assert torch.equal(out2, x.argmax(-1))
    tokens, valid = syncfree.sample_probs(x.exp(), seed=1, out=out, return_valid=True)
    assert tokens is out and valid.all()


def test_per_row_temperature_clamps():
    x = torch.randn(4, 500)
    temps = torch.tensor([NAN, -3.0, 0.0, INF])
    tokens = syncfree.sample(x, temps, seed=1)
    assert tokens[:3].tolist() == x[:3].argmax(-1).tolist()  # NaN and negative clamp to greedy
    assert 0 <= tokens[3].item() < 500


def test_identity_warpers_are_accepted():
    x = torch.randn(3, 100)
    base = syncfree.sample(x, seed=1)
    assert torch.equal(syncfree.sample(x, 1.0, 0, 1.0, 0.0, 1.0, seed=1), base)
    assert torch.equal(syncfree.sample(x, top_k=100, seed=1), base)
    assert torch.equal(syncfree.sample(x, top_k=5000, seed=1), base)


ERRORS = [
    (lambda: syncfree.sample(torch.randint(0, 5, (2, 5))), TypeError, "logits: expected float32"),
    (lambda: syncfree.sample(torch.randn(2, 3, 4)), ValueError, "logits: expected shape"),
    (lambda: syncfree.sample(torch.randn(3, 0)), ValueError, "V = 0"),
    (lambda: syncfree.sample(torch.randn(8, 3).t()), ValueError, "last dim must be contiguous"),
    (lambda: syncfree.sample(torch.randn(2, 5), -1.0), ValueError, "temperature: expected a number >= 0"),
    (lambda: syncfree.sample(torch.randn(2, 5), NAN), ValueError, "temperature: expected a number >= 0"),
    (lambda: syncfree.sample(torch.randn(2, 5), "hot"), TypeError, "temperature: expected a number or a tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), torch.ones(3)), ValueError, "temperature: expected one value per row"),
    (lambda: syncfree.sample(torch.randn(2, 5), torch.ones(2, dtype=torch.int32)), TypeError,
     "temperature: expected a floating-point tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), seed=torch.ones(2)), TypeError, "seed: expected an int64 tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), seed=torch.ones(3, dtype=torch.int64)), ValueError,
     "seed: expected one value per row"),
    (lambda: syncfree.sample(torch.randn(2, 5), seed=1.5), TypeError, "seed: expected an int"),
    (lambda: syncfree.sample(torch.randn(2, 5), offset=torch.zeros(2, dtype=torch.int64)), ValueError,
     "offset: a per-row offset tensor needs a per-row seed tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), seed=1, offset=-2), ValueError, "offset: expected an int in"),
    (lambda: syncfree.sample(torch.randn(2, 5), offset=3), ValueError, "offset: an offset needs a seed"),
    (lambda: syncfree.sample(torch.randn(2, 5), seed=1, generator=torch.Generator()), ValueError,
     "generator: pass either a generator or a seed"),
    (lambda: syncfree.sample(torch.randn(2, 5), generator=3), TypeError, "generator: expected a torch.Generator"),
    (lambda: syncfree.sample(torch.randn(2, 5), out=torch.empty(2, dtype=torch.int32)), TypeError,
     "out: expected an int64 tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), out=torch.empty(3, dtype=torch.int64)), ValueError,
     "out: expected shape"),
    (lambda: syncfree.sample(torch.randn(2, 5), top_k=-1), ValueError, "top_k: expected an int >= 0"),
    (lambda: syncfree.sample(torch.randn(2, 5), top_p=0.0), ValueError, "top_p: expected a number in (0, 1]"),
    (lambda: syncfree.sample(torch.randn(2, 5), min_p=1.5), ValueError, "min_p: expected a number in [0, 1]"),
    (lambda: syncfree.sample(torch.randn(2, 5), typical_p=0.0), ValueError, "typical_p: expected a number in (0, 1]"),
    (lambda: syncfree.sample(torch.randn(2, 5), top_k=2.5), TypeError, "top_k: expected an int"),
    (lambda: syncfree.sample(torch.randn(2, 5), top_k=torch.ones(2)), TypeError, "top_k: expected an integer tensor"),
    (lambda: syncfree.sample(torch.randn(2, 5), top_p=torch.ones(3)), ValueError, "top_p: expected one value per row"),
    (lambda: syncfree.sample(torch.randn(2, 5), min_p=torch.ones(2, dtype=torch.int64)), TypeError,
     "min_p: expected a floating-point tensor"),
    (lambda: syncfree.warp(torch.randn(2, 5), top_p=1.5), ValueError, "top_p: expected a number in (0, 1]"),
    (lambda: syncfree.warp(torch.randn(2, 5), -0.5), ValueError, "temperature: expected a number >= 0"),
    (lambda: syncfree.sample_probs(torch.rand(2, 5).half().to(torch.int16)), TypeError, "probs: expected float32"),
]


@pytest.mark.parametrize("case", range(len(ERRORS)))
def test_bad_input_raises_naming_the_argument(case):
    call, error, message = ERRORS[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        call()


def test_an_out_that_overlaps_an_input_is_refused():
    """An out aliasing the input once changed the logits during the call, and an internal "no index"
    value (2^31 - 1) came out as a token (a fuzzing find)."""
    buf = torch.zeros(3, 32)
    buf[:, 0] = 1.0
    out = buf.view(-1).view(torch.int64)[16::16][:2]  # out[b] overlaps row b + 1
    with pytest.raises(ValueError, match="out: overlaps an input"):
        syncfree.sample_probs(buf[:2], seed=1, out=out)
    seeds = torch.arange(4)
    with pytest.raises(ValueError, match="out: overlaps an input"):
        syncfree.sample(torch.randn(4, 10), seed=seeds, out=seeds)
    with pytest.raises(ValueError, match="out: overlaps itself"):
        syncfree.sample(torch.randn(4, 10), seed=1, out=torch.zeros(1, dtype=torch.int64).expand(4))
    assert syncfree.sample_probs(buf[:2], seed=1, out=torch.empty(2, dtype=torch.int64)).tolist() == [0, 0]


def test_a_winning_group_with_no_winner_answers_an_in_range_token():
    """Note [A winning group with no winner]: racing a group whose tokens are all masked (what a
    changed input can cause) gives token 0, never the internal 2^31 - 1."""
    x = torch.randn(4, 40)
    # One rank of syncfree.distributed: its race picks groups, then the logits change before the
    # token race inside them (a resolve step reading a group with no unmasked token).
    steps = sd._steps(x, 0, 40, *sd._arguments(x, 0, 40, syncfree.SamplingParams(), 3, 0, None)[2:4], None, True,
                      return_valid=True)
    request = next(steps)
    for _ in range(2):  # the layout and the heads: the race has run when it asks for its collective
        request = steps.send(ranks._replies(request[0], [request[1]])[0])
    x[:2] = -INF
    with pytest.raises(StopIteration) as done:
        while True:
            request = steps.send(ranks._replies(request[0], [request[1]])[0])
    tokens, logprobs, valid = done.value.value[:3]
    assert torch.equal(tokens[:2], torch.zeros(2, dtype=torch.int64)) and (logprobs[:2] == -INF).all()
    assert valid.tolist() == [False, False, True, True]  # as syncfree.sample's return_valid says of such a row
    assert torch.equal(tokens[2:], syncfree.sample(x, seed=3)[2:])


def test_a_temperature_that_is_zero_in_float32_is_greedy():  # (and any below 2^-126: tests/test_limits.py)
    x = torch.randn(3, 50)
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    assert torch.equal(syncfree.sample(x, 1e-46, generator=g), x.argmax(-1))
    assert torch.equal(g.get_state(), state), "a greedy call draws no noise"


def test_arguments_of_the_wrong_type_are_named():
    with pytest.raises(TypeError, match="logits: expected a tensor"):
        syncfree.sample([[1.0, 2.0]])
    with pytest.raises(TypeError, match="probs: expected a tensor"):
        syncfree.sample_probs([[1.0, 2.0]])
    with pytest.raises(TypeError, match="logits: expected a tensor"):
        syncfree.warp([[1.0, 2.0]])
    with pytest.raises(TypeError, match="top_k: expected an integer tensor"):
        syncfree.sample(torch.randn(3, 10), top_k=torch.tensor([1 + 1j, 2, 3]), seed=1)
    with pytest.raises(ValueError, match="top_k: expected an int >= 0"):
        syncfree.sample(torch.randn(3, 10), top_k=-2**70, seed=1)
    x = torch.randn(3, 10)
    assert torch.equal(syncfree.sample(x, top_k=2**63, seed=1), syncfree.sample(x, seed=1))  # >= V keeps all


def test_importing_the_unbuilt_source_tree_says_so():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if any(name.startswith("_C") for name in os.listdir(os.path.join(root, "syncfree"))):
        pytest.skip("the source tree holds a build")
    result = subprocess.run([sys.executable, "-c", "import syncfree"], cwd=root, capture_output=True, text=True)
    assert result.returncode != 0 and "not built in" in result.stderr and "circular" not in result.stderr


def test_a_row_that_a_tiny_temperature_scales_to_minus_infinity_answers_its_argmax():
    """Note [Logits past the temperature's range]: the T -> 0 limit, valid, logprob 0 (a fuzzing find:
    once a masked token 0 with valid False)."""
    # 1.2e-38 samples (it is above 2^-126), and a logit of -5 or below over it passes -FLT_MAX.
    tokens, logprobs, valid = syncfree.sample(torch.tensor([[-INF, -5.0, -7.0]]), 1.2e-38, seed=1,
                                              return_logprobs=True, return_valid=True)
    assert tokens.tolist() == [1] and valid.all() and logprobs.tolist() == [0.0]
    x = -torch.rand(5, 3000) * 4 - 5
    x[2] = -INF
    x[3, 100:] = NAN
    x[4, 10] = x[4].max() + 0.5  # and ties: the lowest index
    x[4, 20] = x[4, 10]
    temps = torch.tensor([1.2e-38, 2.0**-126, 1.2e-38, 1.2e-38, 1.2e-38])
    tokens, valid = syncfree.sample(x, temps, seed=torch.arange(5), return_valid=True, top_k=5, top_p=0.5)
    want = torch.where(torch.isnan(x), -INF, x).argmax(-1)
    assert tokens.tolist() == [want[0], want[1], 0, want[3], 10] and valid.tolist() == [True, True, False, True, True]


def test_typical_p_over_shards_of_a_row_spanning_the_float_range():
    """e^(y - m) (m - y) once computed 0 * inf = NaN for a token 6e38 below the max, and converted it to an
    integer (undefined behaviour): the distributed typical-p sums, over two simulated ranks, agree with
    one device."""
    x = torch.tensor([[3e38, -3e38, 0.0, -float("inf"), 3e38, 1.0] * 4])
    for config in (dict(typical_p=0.5), dict(typical_p=0.9, top_p=0.9)):
        want = syncfree.sample(x, seed=1, return_logprobs=True, **config)
        for tokens, logprobs in ranks.simulate(x, [(0, 5), (5, 24)], seed=1, **config):
            assert torch.equal(tokens, want[0]) and torch.equal(logprobs, want[1])


def test_raw_top_n_and_rank_where_rounding_merges_logprobs():
    """Raw top-n and the rank rank by float32 logprob, then the lower id (README "Logprobs"), also
    where rounding gives neighbouring logits one logprob (Note [Raw top-n in the mass's pass]: the
    CPU keeps candidates by logit, and must see where the merge reaches past them)."""
    parity.check_merged_raw_logprobs(parity.Target("cpu"))
