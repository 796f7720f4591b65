"""syncfree.verify_draft with processing (README "Speculative decoding"): position j of a row sees the
row's history followed by its drafts before j, its prompt and bias, and its mask (per row or per
position), inside the verification's own passes. The emulated CUDA kernels are held to these tokens
in test_emulated.py (parity.check_verify_processing).

Statistical tests use fixed seeds (deterministic) and a stated significance level.
"""
import pytest
import torch

import parity
import syncfree
from reference import pack_mask, process_reference
from test_verify import assert_law


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_processing_in_the_passes_equals_a_processed_copy(dtype):
    """Bit for bit: tokens, counts, logprobs and valid, with draft probabilities and one-hot drafts."""
    g = torch.Generator().manual_seed(31)
    rows, n, v = 10, 4, 700
    x = (torch.randn(rows, n + 1, v, generator=g) * 3).to(dtype)
    params = parity.verify_processing(rows, n, v, g)
    params = params.replace(temperature=params.temperature.index_fill(0, torch.tensor([2, 7]), 0.0))
    q = torch.softmax(torch.randn(rows, n, v, generator=g) * 3, -1)
    ids = x[:, :n].float().argmax(-1)
    ids[::2] = torch.multinomial(q[::2].reshape(-1, v), 1, generator=g).view(-1, n)
    copy = parity.processed_copy(x, ids, params)
    for draft_probs in (q, None):
        got = syncfree.verify_draft(x, ids, draft_probs, params, seed=torch.arange(rows), return_logprobs=True,
                                    return_valid=True)
        want = syncfree.verify_draft(copy, ids, draft_probs, parity.warpers_of(params), seed=torch.arange(rows),
                                     return_logprobs=True, return_valid=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    assert (got.num_accepted > 0).any() and (got.num_accepted < n).any()


def test_penalties_see_the_drafts_before_each_position():
    """The law at position 1 after an accepted draft is the target processed with that draft in
    the history. 400k rows, one-hot drafts of token 3, frequency penalty 2: p1(3) is 0.041
    against p0(3) = 0.235, so a position that missed its draft would be off by ~450 standard
    deviations; chi-square at alpha = 1e-6 and each cell within z = 5."""
    v, rows = 32, 400_000
    logits = torch.linspace(2.0, -2.0, v)
    logits[3] = 2.0
    params = syncfree.SamplingParams(frequency_penalty=2.0, presence_penalty=0.5,
                                     output_tokens=torch.tensor([[5, -1]]).expand(rows, 2))
    target = logits.expand(rows, 2, v)
    ids = torch.full((rows, 1), 3)
    tokens, accepted = syncfree.verify_draft(target, ids, None, params, seed=torch.arange(rows))[:2]
    p0 = torch.softmax(process_reference(logits[None], frequency_penalty=2.0, presence_penalty=0.5,
                                         output_tokens=torch.tensor([[5]]))[0], 0)
    p1 = torch.softmax(process_reference(logits[None], frequency_penalty=2.0, presence_penalty=0.5,
                                         output_tokens=torch.tensor([[5, 3]]))[0], 0)
    rejected = accepted == 0
    # Position 0: accept 3 with probability p0(3), else the residual p0 without 3; together p0.
    assert_law(tokens[:, 0], p0, "position 0")
    assert_law(tokens[~rejected, 1], p1, "position 1 after the draft")


def test_a_mask_per_position():
    """allowed_mask [B, n + 1, W]: each position keeps only its own tokens; a greedy row follows
    the argmax of each position's masked logits."""
    g = torch.Generator().manual_seed(4)
    rows, n, v = 3, 3, 64
    x = torch.randn(rows, n + 1, v, generator=g)
    allowed = torch.zeros(rows, n + 1, v, dtype=torch.bool)
    for j in range(n + 1):
        allowed[:, j, 16 * j:16 * j + 16] = True  # position j: tokens [16 j, 16 j + 16)
    mask = torch.stack([pack_mask(allowed[:, j]) for j in range(n + 1)], 1)
    masked = x.masked_fill(~allowed, -float("inf"))
    ids = masked[:, :n].argmax(-1)
    tokens, accepted = syncfree.verify_draft(x, ids, params=syncfree.SamplingParams(temperature=0.0,
                                                                                   allowed_mask=mask))[:2]
    assert accepted.tolist() == [n] * rows and torch.equal(tokens, masked.argmax(-1))
    sampled = syncfree.verify_draft(x, ids, params=syncfree.SamplingParams(allowed_mask=mask), seed=torch.arange(rows))
    for row in range(rows):
        for j in range(sampled.num_accepted[row].item() + 1):
            assert allowed[row, j, sampled.tokens[row, j]], "a token outside its position's mask"


def test_the_choosers_verify_in_the_passes():
    """The chooser passes its history and bias to verify_draft: the same tokens as the processed copy
    it used to write, and the history grows by the emitted tokens."""
    g = torch.Generator().manual_seed(9)
    chooser = syncfree.HeterogeneousNextTokenChooser([0.8, 0.0, 1.0], [0, 0, 20], [1.0, 1.0, 0.9], [1.0] * 3,
                                                     seeds=[1, 2, 3], repetition_penalty=[1.5, 1.2, None],
                                                     frequency_penalty=[0.5, None, 1.0],
                                                     logit_bias=[{4: 3.0}, None, {7: -2.0}], history_size=8)
    x = torch.randn(3, 4, 50, generator=g) * 2
    ids = x[:, :3].argmax(-1)
    params = chooser.params.replace(output_tokens=chooser.history.clone())
    want = syncfree.verify_draft(parity.processed_copy(x, ids, params), ids, None, parity.warpers_of(params),
                                 seed=torch.tensor([1, 2, 3]), offset=torch.zeros(3, dtype=torch.int64),
                                 return_logprobs=True)
    tokens, accepted, logprobs = chooser.verify(x, ids)
    assert torch.equal(tokens, want.tokens) and torch.equal(accepted, want.num_accepted)
    assert torch.equal(logprobs, want.logprobs)
    assert torch.equal(chooser.steps, accepted + 1)


@pytest.mark.parametrize("fields, match", [
    (dict(allowed_mask=torch.zeros(2, 2, 2, dtype=torch.int32)), "allowed_mask: expected shape"),
    (dict(allowed_mask=torch.zeros(2, 3, 2, dtype=torch.int64)), "allowed_mask: expected an int32"),
    (dict(output_tokens=torch.zeros(3, 2, dtype=torch.int64), repetition_penalty=1.2), "output_tokens: expected shape"),
    (dict(output_tokens=torch.tensor([[0, 50], [1, 2]]), repetition_penalty=1.2), r"output_tokens: expected ids"),
    (dict(bias_tokens=torch.zeros(2, 1, dtype=torch.int64)), "bias_values"),
    (dict(frequency_penalty=torch.zeros(3)), "frequency_penalty: expected one value"),
])
def test_bad_processing_is_named(fields, match):
    t = torch.randn(2, 3, 50)
    i = torch.randint(0, 50, (2, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        syncfree.verify_draft(t, i, params=syncfree.SamplingParams(**fields))
