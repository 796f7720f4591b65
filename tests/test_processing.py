"""Logit processing in syncfree.sample / syncfree.warp (allowed mask, logit bias, repetition,
frequency and presence penalties, top-n logprobs, raw logprobs) against float64 references in
plain PyTorch (reference.process_reference: the vLLM/HF/OpenAI rules of the README).

Every input comes from a fixed seed, so each test always passes or always fails. The
goodness-of-fit tests use alpha = 1e-6 (see test_sampled_law for the error size they catch).
"""
import math

import pytest
import torch

import syncfree
from reference import (chi_square_pvalue, pack_mask, process_reference, sampling_logprobs, top_n_reference,
                       warp_reference)

B, V = 6, 200
INF = math.inf
ARGS = ("mask", "bias", "repetition", "frequency", "presence")


def case(names, per_row, b=B, v=V, seed=0):
    """(logits [b, v], syncfree kwargs, reference kwargs) for the processing arguments in `names`.

    per_row: penalties as [b] tensors, and rows 0 and 3 without the argument's effect (full mask,
    bias or history of -1 only, penalty 1 / 0), so rows with and without it share a batch."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, v, generator=g) * 3
    lib = {}
    if "mask" in names:
        allowed = torch.rand(b, v, generator=g) < 0.6
        if per_row:
            allowed[[0, 3]] = True
        lib["allowed_mask"] = pack_mask(allowed)
    if "bias" in names:
        ids = torch.randint(0, v, (b, 8), generator=g)
        ids[:, 6:] = -1  # padding
        ids[:, 5] = ids[:, 2]  # a duplicate id in every row: the later slot wins
        values = torch.randn(b, 8, generator=g) * 4
        if per_row:
            ids[[0, 3]] = -1
        lib.update(bias_tokens=ids, bias_values=values)
    penalties = {"repetition": ("repetition_penalty", 1.4, [1.0, 1.4, 0.6, 1.0, 2.5, 1.2]),
                 "frequency": ("frequency_penalty", 0.7, [0.0, 0.7, -0.5, 0.0, 1.5, 0.3]),
                 "presence": ("presence_penalty", 1.1, [0.0, 1.1, -0.8, 0.0, 2.0, 0.4])}
    for name, (key, scalar, rows) in penalties.items():
        if name in names:
            lib[key] = torch.tensor(rows[:b]) if per_row else scalar
    if {"repetition", "frequency", "presence"} & set(names):
        # Output ids from a small range so that duplicates are certain; prompt ids anywhere.
        output = torch.randint(-1, 30, (b, 24), generator=g)
        prompt = torch.randint(-1, v, (b, 16), generator=g)
        if per_row:
            output[3] = -1
            prompt[3] = -1
        lib.update(output_tokens=output, prompt_tokens=prompt)
    if "bias_tokens" in lib and "output_tokens" in lib:
        # Bias ids that are also in the history, so the order bias -> repetition penalty matters.
        biased = lib["bias_tokens"][:, 0] != -1
        lib["bias_tokens"][biased, 0] = output[biased, 1]
        lib["bias_tokens"][biased, 1] = prompt[biased, 1]
    ref = {k: w for k, w in lib.items() if k != "allowed_mask"}
    if "mask" in names:
        ref["allowed"] = allowed
    return logits, lib, ref


WARPERS = {"none": {},
           "chain": dict(top_k=torch.tensor([0, 5, 50, 0, 3, 0]), top_p=torch.tensor([1.0, 0.9, 0.8, 1.0, 1.0, 0.95]),
                         min_p=torch.tensor([0.0, 0.0, 0.05, 0.1, 0.0, 0.0]),
                         typical_p=torch.tensor([1.0, 1.0, 1.0, 0.9, 1.0, 0.95]))}
CASES = [(n,) for n in ARGS] + [ARGS]


@pytest.mark.parametrize("warpers", ["none", "chain"])
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar", "per_row"])
@pytest.mark.parametrize("names", CASES, ids=[n[0] if len(n) == 1 else "all" for n in CASES])
def test_warp_matches_reference(names, per_row, warpers):
    """Kept set exact, values to float rounding: processing -> temperature -> warpers."""
    logits, lib, ref = case(names, per_row)
    temperature = torch.tensor([0.7, 1.0, 1.3, 0.5, 2.0, 0.9]) if per_row else 0.7
    warped, logprobs = syncfree.warp(logits, temperature, **WARPERS[warpers], **lib)
    processed = process_reference(logits, **ref)
    expected, margin = warp_reference(processed, temperature, **WARPERS[warpers])
    assert margin > 1e-5  # the fixed inputs keep every mass/ratio decision off its threshold
    assert warped.dtype == torch.float32
    keep = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(warped), keep)
    assert (warped[~keep] == -INF).all()
    torch.testing.assert_close(warped.double()[keep], expected[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logprobs.double()[keep], torch.log_softmax(expected, -1)[keep], rtol=0, atol=1e-4)
    # The reference itself must differ from the unprocessed logits in the rows the argument acts on.
    acted = (processed != logits.double()).any(-1)
    assert acted[[1, 2, 4, 5]].all()
    if per_row:
        assert not acted[[0, 3]].any()


def test_scalar_equals_per_row_tensor():
    """A number means the same as a [B] tensor holding it in every row."""
    logits, lib, _ = case(ARGS, per_row=False)
    rows = {k: torch.full((B,), float(w)) if isinstance(w, float) else w for k, w in lib.items()}
    seed = torch.arange(B)
    a = syncfree.sample(logits, 0.8, seed=seed, return_logprobs=True, return_top_logprobs=5, **lib)
    b = syncfree.sample(logits, 0.8, seed=seed, return_logprobs=True, return_top_logprobs=5, **rows)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def run_sample(logits, temperature, warpers, lib, n, mode, seed=0):
    return syncfree.sample(logits, temperature, **warpers, **lib, seed=torch.arange(logits.shape[0]) + seed,
                           return_logprobs=True, return_valid=True, return_top_logprobs=n, logprobs_mode=mode)


TEMPERATURES = torch.tensor([0.8, 0.0, 1.3, 0.0, 0.6, 1.0])  # rows 1 and 3 greedy


@pytest.mark.parametrize("mode", ["processed", "raw"])
@pytest.mark.parametrize("warpers", ["none", "chain"])
@pytest.mark.parametrize("names", CASES, ids=[n[0] if len(n) == 1 else "all" for n in CASES])
def test_chosen_logprobs_and_top_n(names, warpers, mode):
    """Chosen logprob and top-n (ids exact, values to float rounding) in both modes, greedy rows included."""
    n = 10  # more than top_k = 3 keeps in row 4 of the chain
    logits, lib, ref = case(names, per_row=True, seed=1)
    law, processed, margin = sampling_logprobs(logits, TEMPERATURES, **WARPERS[warpers], **ref)
    assert margin > 1e-5
    ids, lp, valid, top_ids, top_lp = run_sample(logits, TEMPERATURES, WARPERS[warpers], lib, n, mode)
    assert valid.all()
    assert top_ids.shape == (B, n) and top_ids.dtype == torch.int64 and top_lp.dtype == torch.float32
    assert (law.gather(-1, ids[:, None]) > -INF).all()  # never a token the law removes
    greedy = TEMPERATURES == 0
    assert torch.equal(ids[greedy], processed[greedy].argmax(-1))
    measured = law if mode == "processed" else torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(lp.double(), measured.gather(-1, ids[:, None])[:, 0], rtol=0, atol=1e-4)
    # Random logits: no exact ties, and the top-n gaps are far above float32 rounding.
    expected_ids, expected_lp = top_n_reference(measured, n)
    finite = expected_lp[:, :-1].isfinite() & expected_lp[:, 1:].isfinite()
    assert ((expected_lp[:, :-1] - expected_lp[:, 1:])[finite] > 1e-5).all()
    assert torch.equal(top_ids, expected_ids)
    torch.testing.assert_close(top_lp.double(), expected_lp, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["processed", "raw"])
@pytest.mark.parametrize("warpers", ["none", "chain"])
@pytest.mark.parametrize("top_n", [0, 10])
def test_rank_counts_the_tokens_at_least_as_likely(top_n, warpers, mode):
    """The chosen token's rank: how many tokens have a logprob >= its own under the mode's
    distribution (float64 reference; random logits, so no ties within float32 rounding),
    greedy rows included, with top-n or alone; in raw mode also vLLM's own count over float32
    log_softmax. Masked tokens (-inf) never count ahead of a chosen token with mass."""
    logits, lib, ref = case(ARGS, per_row=True, seed=2)
    law, _, _ = sampling_logprobs(logits, TEMPERATURES, **WARPERS[warpers], **ref)
    out = syncfree.sample(logits, TEMPERATURES, **WARPERS[warpers], **lib, seed=torch.arange(B) + 4,
                          return_top_logprobs=top_n, logprobs_mode=mode, return_rank=True)
    ids, rank = out[0], out[-1]
    assert rank.shape == (B,) and rank.dtype == torch.int64
    measured = law if mode == "processed" else torch.log_softmax(logits.double(), -1)
    chosen = measured.gather(-1, ids[:, None])
    assert torch.equal(rank, (measured >= chosen).sum(-1))
    if mode == "processed":  # greedy rows take the argmax (raw mode measures the unprocessed logits)
        assert torch.equal(rank[TEMPERATURES == 0], torch.ones(2, dtype=torch.int64))
    assert (rank > 1).any()  # the sampled rows do not all take their top token
    if mode == "raw":
        lp = torch.log_softmax(logits, -1)
        assert torch.equal(rank, (lp >= lp.gather(-1, ids[:, None])).sum(-1))


def test_rank_with_ties_infinities_and_empty_rows():
    """Ties count (the chosen token and every token as likely); a +inf row ranks by the +inf
    count; a row with nothing left ranks V; a point mass (every logit past the temperature's
    range) ranks 1."""
    v = 50
    logits = torch.randn(5, v, generator=torch.Generator().manual_seed(3))
    logits[0, [4, 9, 31]] = 6.0               # a three-way tie on top, greedy picks id 4
    logits[1, [2, 40]] = INF                  # two +inf tokens
    allowed = torch.ones(5, v, dtype=torch.bool)
    allowed[2] = False                        # nothing left
    logits[3] = -torch.rand(v, generator=torch.Generator().manual_seed(4)) - 5  # T = 1.2e-38: a point mass
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.2e-38, 1.0])
    for mode in ("processed", "raw"):
        tokens, valid, rank = syncfree.sample(logits, temperature, seed=torch.arange(5), return_valid=True,
                                              allowed_mask=pack_mask(allowed), logprobs_mode=mode, return_rank=True)
        assert tokens[0] == 4 and rank[0] == 3
        assert tokens[1] in (2, 40) and rank[1] == 2
        assert not valid[2] and rank[2] == v
        assert valid[3] and rank[3] == (1 if mode == "processed" else (logits[3] >= logits[3, tokens[3]]).sum())
    with pytest.raises(TypeError, match="return_rank"):
        syncfree.sample(logits, return_rank=1)


def test_top_n_ties_and_rows_with_few_kept_tokens():
    """Equal logprobs rank the lower id first; past the kept tokens the rest follow at -inf, lowest ids first."""
    v, n = 40, 6
    logits = -torch.arange(v, dtype=torch.float32) / 10 - 5   # strictly decreasing: id order = rank order
    logits = logits.repeat(4, 1)
    logits[0, [30, 12, 25]] = 2.0           # row 0: a three-way tie on top
    allowed = torch.ones(4, v, dtype=torch.bool)
    allowed[1] = False
    allowed[1, [33, 7]] = True              # row 1: two tokens allowed
    temperature = torch.tensor([1.0, 0.7, 1.0, 0.0])
    top_k = torch.tensor([0, 0, 2, 2])      # row 2 keeps 2 tokens; row 3 is greedy (warpers ignored)
    lib = {"allowed_mask": pack_mask(allowed)}
    ids, lp, valid, top_ids, top_lp = run_sample(logits, temperature, dict(top_k=top_k), lib, n, "processed")
    assert torch.equal(top_ids[0], torch.tensor([12, 25, 30, 0, 1, 2]))
    assert top_lp[0, 0] == top_lp[0, 1] == top_lp[0, 2]
    assert torch.equal(top_ids[1], torch.tensor([7, 33, 0, 1, 2, 3]))
    assert torch.equal(top_ids[2], torch.tensor([0, 1, 2, 3, 4, 5]))
    assert (top_lp[1, 2:] == -INF).all() and (top_lp[2, 2:] == -INF).all() and top_lp[:3, :2].isfinite().all()
    assert torch.equal(top_ids[3], torch.arange(n)) and top_lp[3].isfinite().all()
    law = torch.log_softmax(logits[1, [7, 33]].double() / 0.7, -1)
    torch.testing.assert_close(top_lp[1, :2].double(), law, rtol=0, atol=1e-5)
    # Raw mode ranks the unprocessed logits: masked tokens have raw mass.
    *_, raw_ids, raw_lp = run_sample(logits, temperature, dict(top_k=top_k), lib, n, "raw")
    assert torch.equal(raw_ids[1], torch.arange(n))
    assert torch.equal(raw_ids[0], torch.tensor([12, 25, 30, 0, 1, 2]))
    assert raw_lp.isfinite().all()


def test_result_tuple_layout():
    """top-n appends (top_ids, top_logprobs); nothing else asked gives (ids, top_ids, top_logprobs)."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    ids = syncfree.sample(logits, seed=7)
    only = syncfree.sample(logits, seed=7, return_top_logprobs=4)
    assert len(only) == 3 and torch.equal(only[0], ids) and only[1].shape == (3, 4) and only[2].shape == (3, 4)
    full = syncfree.sample(logits, seed=7, return_logprobs=True, return_valid=True, return_top_logprobs=4)
    assert len(full) == 5 and torch.equal(full[0], ids) and full[2].dtype == torch.bool
    assert torch.equal(full[3], only[1]) and torch.equal(full[4], only[2])
    assert torch.equal(full[3][:, 0], logits.argmax(-1))
    ranked = syncfree.sample(logits, seed=7, return_logprobs=True, return_top_logprobs=4, return_rank=True)
    assert len(ranked) == 5 and torch.equal(ranked[2], only[1]) and ranked[4].shape == (3,)
    alone = syncfree.sample(logits, seed=7, return_rank=True)
    assert len(alone) == 2 and torch.equal(alone[1], ranked[4])
    params = syncfree.sample(logits, syncfree.SamplingParams(), seed=7, return_rank=True)
    assert torch.equal(params.rank, alone[1]) and params.top_ids is None


def draw(row, n, seed, temperature=1.0, warpers=None, **lib):
    """n independent draws from one row: the row and its [1, K] processing arguments repeated n
    times, per-row seeds seed, seed + 1, ... (row b's noise depends only on seed[b])."""
    lib = {k: w.expand(n, -1) if isinstance(w, torch.Tensor) and w.dim() == 2 else w for k, w in lib.items()}
    return syncfree.sample(row.expand(n, row.numel()), temperature, **(warpers or {}), **lib,
                           seed=torch.arange(n) + seed)


ALPHA = 1e-6
N = 400_000
LAW_CASES = [(n,) for n in ARGS] + [ARGS]


def law_row(names, v=50, seed=3):
    """One row whose processing moves real mass: history and bias on the top tokens."""
    logits, lib, ref = case(names, per_row=False, b=1, v=v, seed=seed)
    logits = logits / 2
    top = logits[0].argsort(descending=True)
    if "output_tokens" in lib:
        lib["output_tokens"][0, :6] = top[[0, 0, 0, 1, 2, 2]]  # repeated ids: frequency counts them
        lib["prompt_tokens"][0, :2] = top[[3, 4]]
    if "bias_tokens" in lib:
        lib["bias_tokens"][0, 4:] = -1
        lib["bias_tokens"][0, :4] = top[[0, 5, 6, 6]]
        lib["bias_values"][0, :4] = torch.tensor([-1.0, 1.5, -3.0, 2.0])
    return logits, lib, {**ref, **{k: lib[k] for k in lib if k != "allowed_mask"}}


@pytest.mark.parametrize("names", LAW_CASES, ids=[n[0] if len(n) == 1 else "all" for n in LAW_CASES])
def test_sampled_law(names):
    """Chi-square of N = 400k draws against the float64 reference law, alpha = 1e-6 (df <= 49).

    Error size caught: a 10% relative error on a 5% token (its mass spread over the rest) has
    noncentrality N * (0.005^2 / 0.05 + 0.005^2 / 0.95) = 210 against a critical value of 111
    (df 49): power > 0.999 (scipy.stats.ncx2). The same draws must also reject the law with the
    argument left out, so the test can fail for a sampler that ignores it. The "all" case adds
    temperature 0.8 and top_p 0.9 (after the processing)."""
    logits, lib, ref = law_row(names)
    temperature, warpers = (0.8, {"top_p": 0.9}) if len(names) > 1 else (1.0, {})
    law, _, margin = sampling_logprobs(logits, temperature, **warpers, **ref)
    assert margin > 1e-4
    tokens = draw(logits[0], N, seed=1000, temperature=temperature, warpers=warpers, **lib)
    assert chi_square_pvalue(tokens, law[0].exp()) > ALPHA
    unprocessed = sampling_logprobs(logits, temperature, **warpers)[0][0].exp()
    assert (unprocessed[tokens] == 0).any() or chi_square_pvalue(tokens, unprocessed) < ALPHA


def test_sampled_law_all_arguments_per_row():
    """Two interleaved rows with different per-row penalties, temperatures and top_p: each row's
    draws follow its own law. N / 2 = 200k draws per row, alpha 1e-6: a 10% relative error on a 5%
    token has noncentrality 105 (power 0.98 at df 49), a 15% one 237 (power > 0.999)."""
    logits, lib, ref = law_row(ARGS, seed=4)
    n = N
    params = dict(repetition_penalty=torch.tensor([1.6, 0.8]), frequency_penalty=torch.tensor([0.4, -0.3]),
                  presence_penalty=torch.tensor([0.9, 0.0]))
    temps, top_p = torch.tensor([0.8, 1.2]), torch.tensor([0.9, 1.0])
    rows = {k: w.repeat(n // 2) for k, w in params.items()}
    tokens = draw(logits[0], n, seed=5000, temperature=temps.repeat(n // 2), warpers={"top_p": top_p.repeat(n // 2)},
                  **{k: w for k, w in lib.items() if "penalty" not in k}, **rows)
    for r in range(2):
        row_ref = {**ref, **{k: w[r:r + 1] for k, w in params.items()}}
        law, _, margin = sampling_logprobs(logits, temps[r:r + 1], top_p=top_p[r:r + 1], **row_ref)
        assert margin > 1e-4
        assert chi_square_pvalue(tokens[r::2], law[0].exp()) > ALPHA


def test_large_vocab_long_histories():
    """V = 2000 with hundreds of history and bias ids per row, many of them dense duplicates in a few
    id groups and rows with different padding: warp, chosen logprobs and top-20 match the reference."""
    g = torch.Generator().manual_seed(12)
    b, v = 4, 2000
    logits = torch.randn(b, v, generator=g) * 3
    output = torch.randint(-1, v, (b, 600), generator=g)
    output[:, :200] = torch.randint(0, 64, (b, 200), generator=g)
    output[1, 300:] = -1
    prompt = torch.randint(-1, v, (b, 900), generator=g)
    bias_tokens = torch.randint(-1, v, (b, 300), generator=g)
    bias_tokens[2] = -1
    allowed = torch.rand(b, v, generator=g) < 0.7
    ref = dict(repetition_penalty=torch.tensor([1.3, 0.8, 1.0, 2.0]), frequency_penalty=0.2, presence_penalty=0.3,
               output_tokens=output, prompt_tokens=prompt, bias_tokens=bias_tokens,
               bias_values=torch.randn(b, 300, generator=g) * 2)
    lib = {**ref, "allowed_mask": pack_mask(allowed)}
    ref["allowed"] = allowed
    warped = syncfree.warp(logits, 0.7, **lib)[0]
    expected = process_reference(logits, **ref) / 0.7
    assert torch.equal(warped.isfinite(), expected.isfinite())
    torch.testing.assert_close(warped.double()[warped.isfinite()], expected[expected.isfinite()], rtol=1e-5, atol=1e-5)
    ids, lp, valid, top_ids, top_lp = run_sample(logits, 0.7, {"top_p": 0.9}, lib, 20, "processed")
    law, _, margin = sampling_logprobs(logits, 0.7, top_p=0.9, **ref)
    assert margin > 1e-4 and valid.all()
    torch.testing.assert_close(lp.double(), law.gather(-1, ids[:, None])[:, 0], rtol=0, atol=1e-4)
    expected_ids, expected_lp = top_n_reference(law, 20)
    assert torch.equal(top_ids, expected_ids)
    finite = expected_lp.isfinite()
    assert torch.equal(top_lp.isfinite(), finite)
    torch.testing.assert_close(top_lp.double()[finite], expected_lp[finite], rtol=0, atol=1e-4)
    # out= returns the same tuple, ids written into out.
    out = torch.empty(b, dtype=torch.int64)
    again = syncfree.sample(logits, 0.7, top_p=0.9, **lib, seed=torch.arange(b), out=out, return_logprobs=True,
                            return_valid=True, return_top_logprobs=20)
    assert again[0] is out
    for x, y in zip(again, (ids, lp, valid, top_ids, top_lp)):
        assert torch.equal(x, y)


# ---- degenerate and edge cases ----

def test_padding_only_history_is_no_history():
    logits, lib, _ = case(ARGS, per_row=False, seed=5)
    lib.pop("allowed_mask")
    lib.pop("bias_tokens"), lib.pop("bias_values")
    padded = dict(lib, output_tokens=torch.full((B, 7), -1), prompt_tokens=torch.full((B, 3), -1))
    bare = {k: w for k, w in lib.items() if "tokens" not in k}
    seed = torch.arange(B)
    for kwargs in (padded, dict(padded, bias_tokens=torch.full((B, 2), -1), bias_values=torch.ones(B, 2))):
        assert torch.equal(syncfree.warp(logits, 0.9, **kwargs)[0], syncfree.warp(logits, 0.9)[0])
        a = syncfree.sample(logits, 0.9, seed=seed, return_logprobs=True, return_top_logprobs=3, **kwargs)
        b = syncfree.sample(logits, 0.9, seed=seed, return_logprobs=True, return_top_logprobs=3, **bare)
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_duplicates_in_history_and_bias():
    """Hand-computed values (independent of reference.py): output [5, 5] counts twice for frequency,
    once for presence and repetition; token 9 in prompt and output is penalised once; duplicate bias
    ids take the last slot."""
    logits = torch.zeros(1, 40)
    logits[0, 5], logits[0, 9], logits[0, 7] = 2.0, -1.0, 0.5
    out = torch.tensor([[5, 5, 9, -1]])
    prompt = torch.tensor([[9, 9]])

    def warped(**kw):
        return syncfree.warp(logits, **kw)[0][0]

    assert warped(frequency_penalty=0.5, output_tokens=out)[5] == pytest.approx(2.0 - 2 * 0.5)
    assert warped(presence_penalty=0.5, output_tokens=out)[5] == pytest.approx(2.0 - 0.5)
    w = warped(repetition_penalty=2.0, output_tokens=out, prompt_tokens=prompt)
    assert w[5] == pytest.approx(1.0) and w[9] == pytest.approx(-2.0)
    w = warped(bias_tokens=torch.tensor([[7, 7, -1, 7, 3]]), bias_values=torch.tensor([[1.0, 3.0, 9.0, 5.0, 0.25]]))
    assert w[7] == pytest.approx(5.5) and w[3] == pytest.approx(0.25)
    # Order: bias before the repetition penalty (penalising the biased logit), penalties before T.
    w = warped(temperature=0.5, bias_tokens=torch.tensor([[9]]), bias_values=torch.tensor([[4.0]]),
               repetition_penalty=2.0, prompt_tokens=prompt)
    assert w[9] == pytest.approx((-1.0 + 4.0) / 2.0 / 0.5)


@pytest.mark.parametrize("name", ["output_tokens", "prompt_tokens", "bias_tokens"])
@pytest.mark.parametrize("bad", [40, 1000, -2])
def test_ids_out_of_range_raise(name, bad):
    logits = torch.randn(2, 40)
    ids = torch.tensor([[1, 2], [3, bad]])
    kwargs = {name: ids}
    if name == "bias_tokens":
        kwargs["bias_values"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=name):
        syncfree.sample(logits, seed=0, **kwargs)
    with pytest.raises(ValueError, match=name):
        syncfree.warp(logits, **kwargs)


def test_all_masked_rows_are_degenerate():
    """No finite logit left (all-zero mask, or bias -inf on every token): valid False, id 0, logprob
    -inf, top ids 0..n-1 at -inf; the other rows are untouched, greedy or not."""
    v, n = 40, 4
    logits = torch.randn(4, v, generator=torch.Generator().manual_seed(6)) + 3
    allowed = torch.ones(4, v, dtype=torch.bool)
    allowed[[0, 2]] = False
    bias_tokens = torch.full((4, v), -1)
    bias_tokens[1] = torch.arange(v)
    bias_values = torch.zeros(4, v)
    bias_values[1] = -INF
    lib = dict(allowed_mask=pack_mask(allowed), bias_tokens=bias_tokens, bias_values=bias_values)
    for temperature in (0.9, 0.0):
        ids, lp, valid, top_ids, top_lp = run_sample(logits, temperature, {}, lib, n, "processed")
        assert valid.tolist() == [False, False, False, True]
        assert ids[:3].tolist() == [0, 0, 0] and (lp[:3] == -INF).all()
        assert torch.equal(top_ids[:3], torch.arange(n).repeat(3, 1)) and (top_lp[:3] == -INF).all()
        assert lp[3].isfinite() and top_lp[3].isfinite().all()
    warped, _ = syncfree.warp(logits, 0.9, **lib)
    assert (warped[:3] == -INF).all()


def test_infinite_bias():
    """+inf bias: that token every time (lowest index among several), logprob 0 when it is alone;
    -inf bias: never chosen; +inf bias on a masked token: still masked."""
    n, v = 2000, 40
    logits = torch.randn(v, generator=torch.Generator().manual_seed(7))
    best = int(logits.argmax())

    def sample(tokens, values, mask=None, temperature=1.0):
        lib = dict(bias_tokens=torch.tensor([tokens]), bias_values=torch.tensor([values]))
        if mask is not None:
            lib["allowed_mask"] = pack_mask(mask[None])
        lib = {k: w.expand(n, -1) for k, w in lib.items()}
        return syncfree.sample(logits.expand(n, v), temperature, seed=torch.arange(n), return_logprobs=True, **lib)

    for temperature in (1.0, 0.0, 2.5):
        ids, lp = sample([17, -1], [INF, 0.0], temperature=temperature)
        assert (ids == 17).all() and (lp == 0).all()
        ids, _ = sample([23, 11, 30], [INF, INF, INF], temperature=temperature)
        assert (ids == 11).all()
    ids, _ = sample([best], [-INF])
    assert (ids != best).all() and syncfree.sample(logits, 0.0, bias_tokens=torch.tensor([best]),
                                                   bias_values=torch.tensor([-INF])) == logits.topk(2).indices[1]
    mask = torch.ones(v, dtype=torch.bool)
    mask[17] = False
    ids, lp = sample([17, 4], [INF, INF], mask=mask)
    assert (ids == 4).all() and (lp == 0).all()
    ids, lp = sample([17], [INF], mask=mask)
    assert (ids != 17).all() and lp.isfinite().all()


def test_per_row_clamps_and_scalar_checks():
    """Per-row tensors: repetition NaN or <= 0 -> 1, frequency/presence NaN -> 0. Scalars must be finite (and > 0)."""
    logits, lib, _ = case(("repetition", "frequency", "presence"), per_row=False, b=4, seed=8)
    nan = math.nan
    clamped = syncfree.warp(logits, repetition_penalty=torch.tensor([nan, 0.0, -2.0, 1.0]),
                            frequency_penalty=torch.tensor([nan, 0.0, nan, 0.0]),
                            presence_penalty=torch.tensor([0.0, nan, nan, nan]),
                            output_tokens=lib["output_tokens"], prompt_tokens=lib["prompt_tokens"])[0]
    assert torch.equal(clamped, logits)
    for key, value in [("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", nan),
                       ("repetition_penalty", INF), ("frequency_penalty", nan), ("frequency_penalty", INF),
                       ("presence_penalty", -INF), ("presence_penalty", nan)]:
        with pytest.raises(ValueError, match=key):
            syncfree.sample(logits, seed=0, **{key: value})


def test_bad_arguments_raise():
    logits = torch.randn(2, 40)
    mask = pack_mask(torch.ones(2, 40, dtype=torch.bool))
    with pytest.raises((TypeError, ValueError), match="allowed_mask"):
        syncfree.sample(logits, seed=0, allowed_mask=mask.long())
    for bad in (mask[:, :1], torch.cat([mask, mask], 1), mask[:1]):
        with pytest.raises(ValueError, match="allowed_mask"):
            syncfree.sample(logits, seed=0, allowed_mask=bad)
    with pytest.raises(ValueError, match="bias_values"):
        syncfree.sample(logits, seed=0, bias_tokens=torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="bias_tokens"):
        syncfree.sample(logits, seed=0, bias_values=torch.ones(2, 1))
    with pytest.raises(ValueError, match="bias_values"):
        syncfree.sample(logits, seed=0, bias_tokens=torch.tensor([[1], [2]]), bias_values=torch.ones(2, 2))
    with pytest.raises((TypeError, ValueError), match="output_tokens"):
        syncfree.sample(logits, seed=0, output_tokens=torch.tensor([[1], [2]], dtype=torch.int32))
    with pytest.raises(ValueError, match="output_tokens"):
        syncfree.sample(logits, seed=0, output_tokens=torch.tensor([[1, 2]]))
    for n in (21, -1):
        with pytest.raises(ValueError, match="return_top_logprobs"):
            syncfree.sample(torch.randn(2, 100), seed=0, return_top_logprobs=n)
    with pytest.raises(ValueError, match="return_top_logprobs"):
        syncfree.sample(torch.randn(2, 10), seed=0, return_top_logprobs=11)
    assert syncfree.sample(torch.randn(2, 10), seed=0, return_top_logprobs=10)[1].shape == (2, 10)
    with pytest.raises(ValueError, match="logprobs_mode"):
        syncfree.sample(logits, seed=0, logprobs_mode="x")


def test_mask_bit_layout():
    """Bit 31 (two's complement sign) and a partial last word: exactly the allowed tokens survive."""
    v = 70
    allowed = torch.zeros(1, v, dtype=torch.bool)
    allowed[0, [0, 31, 32, 63, 69]] = True
    mask = pack_mask(allowed)
    assert mask.shape == (1, 3) and mask[0, 0] < 0
    warped = syncfree.warp(torch.randn(1, v), allowed_mask=mask)[0]
    assert torch.equal(warped.isfinite(), allowed)


# ---- batch invariance, 1-D inputs, dtypes ----

def test_rows_do_not_depend_on_the_batch():
    """With per-row seeds, a row's ids, logprobs and top-n are the same alone as in any batch."""
    logits, lib, _ = case(ARGS, per_row=True, seed=9)
    temps = torch.tensor([0.8, 0.0, 1.3, 0.5, 1.0, 0.0])
    seed = torch.arange(B) * 7 + 3
    for mode in ("processed", "raw"):
        batch = syncfree.sample(logits, temps, **WARPERS["chain"], **lib, seed=seed, return_logprobs=True,
                                return_valid=True, return_top_logprobs=5, logprobs_mode=mode)
        for i in range(B):
            one = {k: w[i:i + 1] if isinstance(w, torch.Tensor) else w for k, w in {**WARPERS["chain"], **lib}.items()}
            alone = syncfree.sample(logits[i:i + 1], temps[i:i + 1], **one, seed=seed[i:i + 1], return_logprobs=True,
                                    return_valid=True, return_top_logprobs=5, logprobs_mode=mode)
            for x, y in zip(batch, alone):
                assert torch.equal(x[i:i + 1], y)


def test_one_dimensional_input():
    """[V] logits with [n] history/bias and a [ceil(V / 32)] mask mean the same as one row of [1, V]."""
    logits, lib, _ = case(ARGS, per_row=False, b=1, seed=10)
    flat = {k: w[0] if isinstance(w, torch.Tensor) else w for k, w in lib.items()}
    a = syncfree.sample(logits[0], 0.8, seed=3, return_logprobs=True, return_top_logprobs=4, **flat)
    b = syncfree.sample(logits, 0.8, seed=3, return_logprobs=True, return_top_logprobs=4, **lib)
    assert a[0].dim() == 0
    for x, y in zip(a, b):
        assert torch.equal(x.reshape(-1), y.reshape(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    """Reference on the float32 upcast of the same values; top-n checked by value (low-precision
    logits tie often, and float32 rounding may order near ties either way)."""
    logits, lib, ref = case(ARGS, per_row=True, seed=11)
    logits = logits.to(dtype)
    x = logits.float()
    for mode in ("processed", "raw"):
        ids, lp, valid, top_ids, top_lp = run_sample(logits, TEMPERATURES, WARPERS["chain"], lib, 8, mode)
        law, processed, _ = sampling_logprobs(x, TEMPERATURES, **WARPERS["chain"], **ref)
        measured = law if mode == "processed" else torch.log_softmax(x.double(), -1)
        assert valid.all() and ((ids >= 0) & (ids < V)).all()
        assert (law.gather(-1, ids[:, None]) > -INF).all()
        torch.testing.assert_close(lp.double(), measured.gather(-1, ids[:, None])[:, 0], rtol=0, atol=1e-4)
        torch.testing.assert_close(top_lp.double(), top_n_reference(measured, 8)[1], rtol=0, atol=1e-4)
        torch.testing.assert_close(measured.gather(-1, top_ids), top_lp.double(), rtol=0, atol=1e-4)
    warped = syncfree.warp(logits, 0.7, **lib)[0]
    expected = process_reference(x, **ref) / 0.7
    assert torch.equal(warped.isfinite(), expected.isfinite())
    torch.testing.assert_close(warped.double()[warped.isfinite()], expected[expected.isfinite()], rtol=1e-5, atol=1e-5)
