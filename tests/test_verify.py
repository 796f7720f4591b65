"""syncfree.verify_draft on the CPU: the law of the emitted tokens, the acceptance rate, greedy
rows, the noise contract, logprobs, degenerate positions and bad arguments (README
"Speculative decoding"). The emulated CUDA kernels are held to these tokens in test_emulated.py.

Statistical tests use fixed seeds (deterministic) and a stated significance level.
"""
import math

import pytest
import torch

import syncfree

V = 32
# A target law with a 1 % token (index 7) among larger and smaller ones.
P_TARGET = torch.tensor([0.2, 0.15, 0.1, 0.08, 0.07, 0.06, 0.05, 0.01] + [0.0] * 24, dtype=torch.float64)
P_TARGET[8:] = (1 - P_TARGET[:8].sum()) / 24
LOGITS = P_TARGET.log().float()


def chi_square_sf(stat, df):
    """Upper tail of the chi-square law (Wilson-Hilferty; ample at the levels used here)."""
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def assert_law(tokens, p, what, alpha=1e-6, z_max=5.0):
    """Chi-square over the cells with mass (level alpha), and each cell's z-score within z_max
    (two-sided ~6e-7 per cell), so one small cell off by a few percent is caught too."""
    n = tokens.numel()
    counts = torch.bincount(tokens, minlength=p.numel()).double()
    expected = p * n
    assert counts[p == 0].sum() == 0, f"{what}: a token with no target mass was emitted"
    live = p > 0
    stat = ((counts[live] - expected[live]) ** 2 / expected[live]).sum().item()
    assert chi_square_sf(stat, int(live.sum()) - 1) > alpha, f"{what}: chi-square {stat:.1f}"
    z = (counts[live] - expected[live]) / (expected[live] * (1 - p[live])).sqrt()
    assert z.abs().max() < z_max, f"{what}: worst cell z = {z.abs().max():.2f}"


def verify_many(rows, n, draft_law, draft_probs_given, seed0, chunk=200_000, target_law=P_TARGET):
    """verify_draft over `rows` rows of the fixed target law at every position, drafts drawn
    from draft_law; per-row seeds. Returns (tokens, num_accepted)."""
    g = torch.Generator().manual_seed(seed0)
    logits = target_law.log().float()
    all_tokens, all_accepted = [], []
    for start in range(0, rows, chunk):
        b = min(chunk, rows - start)
        target = logits.expand(b, n + 1, V)
        ids = torch.multinomial(draft_law.float(), b * n, replacement=True, generator=g).view(b, n)
        q = draft_law.float().expand(b, n, V) if draft_probs_given else None
        tokens, accepted = syncfree.verify_draft(target, ids, q, seed=torch.arange(start, start + b) + seed0,
                                                 offset=torch.zeros(b, dtype=torch.int64))
        all_tokens.append(tokens)
        all_accepted.append(accepted)
    return torch.cat(all_tokens), torch.cat(all_accepted)


def test_emitted_tokens_follow_the_target_law_for_a_random_draft():
    """1.6M rows: a 5 % relative error on the 1 % token moves its count by 800, 6.3 standard
    deviations (sd = sqrt(N p (1 - p)) = 126), beyond z_max = 5."""
    q = torch.softmax(torch.randn(V, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0)
    tokens, accepted = verify_many(1_600_000, 2, q, True, seed0=11)
    assert_law(tokens[:, 0], P_TARGET, "position 0")
    assert_law(tokens[accepted >= 1, 1], P_TARGET, "position 1 after an acceptance")
    # Acceptance at position 0 has probability sum(min(p, q)).
    rate = (accepted >= 1).double().mean().item()
    want = torch.minimum(P_TARGET, q).sum().item()
    sd = math.sqrt(want * (1 - want) / accepted.numel())
    assert abs(rate - want) < 5 * sd, f"acceptance rate {rate:.5f}, expected {want:.5f}"


@pytest.mark.parametrize("case", ["q=p", "disjoint", "one token", "zeros where p>0", "one-hot"])
def test_emitted_tokens_follow_the_target_law_for_adversarial_drafts(case):
    """1.6M rows each, as above (a 5 % error on the 1 % token is 6.3 sd)."""
    p = P_TARGET
    if case == "q=p":
        q = P_TARGET.clone()
    elif case == "disjoint":  # q lives where the target has no mass (masked logits): every draft fails
        p = P_TARGET.clone()
        p[24:] = 0
        p /= p.sum()
        q = torch.zeros(V, dtype=torch.float64)
        q[24:] = 1 / 8
    elif case == "one token":  # q one-hot at the 1 % token, as a distribution
        q = torch.zeros(V, dtype=torch.float64)
        q[7] = 1.0
    elif case == "zeros where p>0":
        q = P_TARGET.clone()
        q[:4] = 0
        q /= q.sum()
    else:  # draft_probs None: q one-hot at the drafted token, drafted from a skewed law
        q = torch.softmax(torch.arange(V, dtype=torch.float64) / 4, 0)
    tokens, accepted = verify_many(1_600_000, 1, q, case != "one-hot", seed0=23, target_law=p)
    assert_law(tokens[:, 0], p, case)
    if case == "q=p":
        assert bool((accepted == 1).all()), "q = p accepts every draft"
    if case == "disjoint":
        assert bool((accepted == 0).all()), "a draft the target gives no mass is never accepted"
    want = torch.minimum(p, q).sum().item() if case != "one-hot" else (p * q).sum().item()
    rate = accepted.double().mean().item()
    assert abs(rate - want) < 5 * math.sqrt(want * (1 - want) / accepted.numel() + 1e-12)


def test_greedy_rows_accept_the_argmax_prefix():
    g = torch.Generator().manual_seed(3)
    target = torch.randn(6, 5, 100, generator=g)
    argmax = target.argmax(-1)
    ids = argmax[:, :4].clone()
    ids[1, 0] += 1
    ids[2, 2] = (ids[2, 2] + 5) % 100
    ids[3, 3] = (ids[3, 3] + 1) % 100
    tokens, accepted, logprobs = syncfree.verify_draft(target, ids, temperature=0.0, return_logprobs=True)
    assert accepted.tolist() == [4, 0, 2, 3, 4, 4]
    for b in range(6):
        k = accepted[b].item()
        assert tokens[b, :k + 1].tolist() == argmax[b, :k + 1].tolist()
        assert (tokens[b, k + 1:] == -1).all()
        ref = torch.log_softmax(target[b, :k + 1].double(), -1).gather(-1, argmax[b, :k + 1, None]).squeeze(-1)
        torch.testing.assert_close(logprobs[b, :k + 1].double(), ref, atol=1e-5, rtol=1e-5)


def test_rows_do_not_depend_on_their_batch_and_stops_are_sample_calls():
    """Per-row seeds: each row alone gives the same result. The stop token is syncfree.sample's
    over the position (the bonus) or over it with the draft masked (a one-hot rejection), with
    offset[b] + j."""
    g = torch.Generator().manual_seed(5)
    b, n, v = 8, 3, 300
    target = torch.randn(b, n + 1, v, generator=g) * 2
    target[::2] *= 6  # peaked rows drafting their argmax: likely all accepted, a bonus token
    ids = torch.randint(0, v, (b, n), generator=g)
    ids[::2] = target[::2, :n].argmax(-1)
    seeds = torch.randint(0, 2**62, (b,), generator=g)
    offsets = torch.randint(0, 1000, (b,), generator=g)
    temps = torch.rand(b, generator=g) + 0.5
    tokens, accepted = syncfree.verify_draft(target, ids, None, temps, seed=seeds, offset=offsets)
    for row in range(b):
        alone = syncfree.verify_draft(target[row:row + 1], ids[row:row + 1], None, temps[row:row + 1],
                                      seed=seeds[row:row + 1], offset=offsets[row:row + 1])
        assert torch.equal(alone[0][0], tokens[row]) and alone[1].item() == accepted[row].item()
        j = accepted[row].item()
        x = target[row, j].clone()
        if j < n:
            x[ids[row, j]] = -float("inf")
        want = syncfree.sample(x[None], temps[row:row + 1], seed=seeds[row:row + 1], offset=offsets[row:row + 1] + j)
        assert tokens[row, j].item() == want.item()
    bonus = accepted == n
    assert bonus.any() and (~bonus).any(), "both stops are exercised"


def test_warped_targets_and_logprobs():
    """Warpers apply at every position: emitted tokens are kept there, and logprobs are the
    warped log_softmax (syncfree.warp's) of the emitted tokens."""
    g = torch.Generator().manual_seed(7)
    b, n, v = 16, 4, 500
    target = torch.randn(b, n + 1, v, generator=g) * 3
    config = dict(top_k=torch.randint(1, 60, (b,), generator=g), top_p=0.9, min_p=0.02)
    q = torch.softmax(torch.randn(b, n, v, generator=g) * 3, -1)
    ids = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, n)
    temps = torch.full((b,), 0.8)
    tokens, accepted, logprobs, valid = syncfree.verify_draft(target, ids, q, temps, seed=torch.arange(b),
                                                              return_logprobs=True, return_valid=True, **config)
    assert valid.all()
    for row in range(b):
        k = accepted[row].item()
        warped, lp = syncfree.warp(target[row], temps[row].item(), config["top_k"][row].item(), 0.9, 0.02)
        emitted = tokens[row, :k + 1]
        assert (warped.gather(-1, emitted[:, None]) > -float("inf")).all(), "an emitted token was warped away"
        torch.testing.assert_close(logprobs[row, :k + 1], lp[torch.arange(k + 1), emitted], atol=1e-4, rtol=1e-4)
        assert (logprobs[row, k + 1:] == -float("inf")).all()


def test_degenerate_positions_stop_the_row():
    target = torch.randn(3, 3, 10)
    target[0, 0] = -float("inf")
    target[1, 1] = float("nan")
    ids = target[:, :2].argmax(-1)
    tokens, accepted, valid = syncfree.verify_draft(target, ids, None, 0.0, return_valid=True)
    assert accepted.tolist() == [0, 1, 2] and valid.tolist() == [False, False, True]
    assert tokens[0].tolist() == [0, -1, -1] and tokens[1, 1].item() == 0
    tokens, accepted, valid = syncfree.verify_draft(target, ids, None, 1.0, seed=1, return_valid=True)
    assert not valid[0] and tokens[0].tolist() == [0, -1, -1]  # row 1 may stop before its NaN position


def test_out_generator_and_int_seed():
    target = torch.randn(4, 3, 50)
    ids = torch.randint(0, 50, (4, 2))
    out = torch.full((4, 3), -7, dtype=torch.int64)
    tokens, accepted = syncfree.verify_draft(target, ids, seed=9, out=out)
    assert tokens is out and torch.equal(out, syncfree.verify_draft(target, ids, seed=9)[0])
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(syncfree.verify_draft(target, ids, generator=g1)[0],
                       syncfree.verify_draft(target, ids, generator=g2)[0])


@pytest.mark.parametrize("call, match", [
    (lambda t, i, q: syncfree.verify_draft(t[:, 0], i, q), "target_logits: expected shape"),
    (lambda t, i, q: syncfree.verify_draft(t[:, :1], i[:, :0], None), "at least one drafted token"),
    (lambda t, i, q: syncfree.verify_draft(torch.zeros(1, 513, 50), torch.zeros(1, 512, dtype=torch.int64)),
     r"2 <= n \+ 1 <= 512"),
    (lambda t, i, q: syncfree.verify_draft(t, i[:, :1], q), "draft_ids: expected shape"),
    (lambda t, i, q: syncfree.verify_draft(t, i.float(), q), "draft_ids: expected an int64"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q.double()), "draft_probs: expected a float32"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q[:, :, :5]), "draft_probs: expected shape"),
    (lambda t, i, q: syncfree.verify_draft(t, i + 50, q), r"draft_ids: expected ids in \[0, V\)"),
    (lambda t, i, q: syncfree.verify_draft(t, i - 100, q), r"draft_ids: expected ids in \[0, V\)"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q, top_p=1.5), "top_p"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q, temperature=torch.ones(3)), "temperature: expected one value"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q, seed=torch.arange(3)), "seed: expected one value"),
    (lambda t, i, q: syncfree.verify_draft(t, i, q, out=torch.empty(2, 2, dtype=torch.int64)), "out: expected shape"),
])
def test_bad_arguments_are_named(call, match):
    t = torch.randn(2, 3, 50)
    i = torch.randint(0, 50, (2, 2))
    q = torch.softmax(torch.randn(2, 2, 50), -1)
    with pytest.raises((ValueError, TypeError), match=match):
        call(t, i, q)
