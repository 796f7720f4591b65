"""syncfree.SamplingParams (README "Parameters"): one field list, every entry point, the keyword form."""
import dataclasses

import pytest
import torch

import ranks
import syncfree
from syncfree.params import FIELDS, KEYWORDS

V = 300
ROWS = 4


def test_the_fields_are_the_extensions_list():
    fields = dataclasses.fields(syncfree.SamplingParams)
    assert [f.name for f in fields] == [name for name, *_ in syncfree._C.sampling_fields()]
    assert [f.default for f in fields] == [identity for _, _, identity, _ in syncfree._C.sampling_fields()]
    assert {kind for _, kind, _, _ in FIELDS} == {"float", "int", "tensor"}


def full_params(rows=ROWS, v=V):
    """Every field off its identity, per-row tensors and numbers mixed."""
    g = torch.Generator().manual_seed(5)
    mask = torch.full((rows, (v + 31) // 32), -1, dtype=torch.int32)
    mask[:, 0] = 0x0FFFFFFF  # tokens 28..31 masked
    return syncfree.SamplingParams(
        temperature=torch.rand(rows, generator=g) + 0.5, top_k=torch.tensor([0, 5, 50, 300])[:rows], top_p=0.95,
        min_p=0.01, typical_p=torch.full((rows,), 0.97), repetition_penalty=torch.full((rows,), 1.3),
        frequency_penalty=0.4, presence_penalty=torch.full((rows,), 0.2),
        output_tokens=torch.randint(-1, v, (rows, 6), generator=g), prompt_tokens=torch.randint(0, v, (rows, 3),
                                                                                                generator=g),
        bias_tokens=torch.randint(0, v, (rows, 2), generator=g), bias_values=torch.randn(rows, 2, generator=g),
        allowed_mask=mask)


def keywords(params):
    return {name: getattr(params, name) for name in KEYWORDS}


def test_sample_takes_the_object_as_the_keyword_form():
    x = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(1))
    p = full_params()
    seeds = torch.arange(ROWS)
    got = syncfree.sample(x, p, seed=seeds, return_logprobs=True, return_valid=True, return_top_logprobs=3)
    assert isinstance(got, syncfree.SampleOutput)
    want = syncfree.sample(x, seed=seeds, return_logprobs=True, return_valid=True, return_top_logprobs=3,
                           **keywords(p))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    again = syncfree.sample(x, params=p, seed=seeds)
    assert torch.equal(again.tokens, got.tokens)
    assert again.logprobs is None and again.valid is None and again.top_ids is None and again.top_logprobs is None
    assert not torch.isin(got.tokens, torch.arange(28, 32)).any()  # the mask reached the kernels


def test_each_field_reaches_its_own_argument():
    """A tensor of the wrong length in one field is reported under that field's name by the C++
    checks: the two lists carry each field to its own member (Note [One field list])."""
    x = torch.randn(ROWS, V)
    for name, kind, _, _ in FIELDS:
        bad = torch.zeros(ROWS + 1, dtype=torch.int64 if kind != "float" else torch.float32)
        if kind == "tensor":
            bad = bad.reshape(1, -1)
        fields = {name: bad}
        if name in ("bias_tokens", "bias_values"):  # the bias needs both
            fields = {"bias_tokens": torch.zeros(ROWS, 1, dtype=torch.int64), "bias_values": torch.zeros(ROWS, 1),
                      name: bad}
        with pytest.raises((ValueError, TypeError), match=f"^{name}:"):
            syncfree.sample(x, syncfree.SamplingParams(**fields), seed=torch.arange(ROWS))


def test_warp_and_the_chain_take_the_object():
    x = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(2))
    p = full_params()
    for a, b in zip(syncfree.warp(x, p), syncfree.warp(x, **keywords(p))):
        assert torch.equal(a, b)
    scalars = syncfree.SamplingParams(temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.2)
    chain = syncfree.WarperChain(scalars)
    assert chain.params == syncfree.WarperChain(0.8, 40, 0.9, repetition_penalty=1.2).params
    out = torch.randint(0, V, (ROWS, 5))
    for a, b in zip(chain(x, output_tokens=out), syncfree.warp(x, scalars.replace(output_tokens=out))):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="^top_p:"):
        syncfree.WarperChain(syncfree.SamplingParams(top_p=torch.full((ROWS,), 0.9)))
    with pytest.raises(TypeError, match="^output_tokens:"):
        syncfree.WarperChain(syncfree.SamplingParams(output_tokens=out))


def test_verify_draft_takes_the_object():
    g = torch.Generator().manual_seed(3)
    target, drafts = torch.randn(ROWS, 4, V, generator=g), torch.randint(0, V, (ROWS, 3), generator=g)
    for params in (syncfree.SamplingParams(temperature=torch.full((ROWS,), 0.7), top_k=30, top_p=0.9), full_params()):
        got = syncfree.verify_draft(target, drafts, None, params, seed=torch.arange(ROWS), return_valid=True)
        assert isinstance(got, syncfree.VerifyOutput) and got.logprobs is None
        want = syncfree.verify_draft(target, drafts, None, seed=torch.arange(ROWS), return_valid=True,
                                     **keywords(params))
        for a, b in zip([part for part in got if part is not None], want):
            assert torch.equal(a, b)


def test_distributed_sample_takes_the_object():
    x = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(4))
    p = syncfree.SamplingParams(temperature=0.9, top_k=torch.tensor([0, 5, 50, 300]), min_p=0.02)
    seeds = torch.arange(ROWS)
    want = syncfree.sample(x, p, seed=seeds, return_logprobs=True)
    for tokens, logprobs in ranks.simulate(x, [(0, 100), (100, 130), (130, V)], params=p, seed=seeds):
        assert torch.equal(tokens, want.tokens)
        torch.testing.assert_close(logprobs, want.logprobs)
    p = p.replace(presence_penalty=0.5, output_tokens=x.argmax(-1, keepdim=True))
    want = syncfree.sample(x, p, seed=seeds, return_logprobs=True)
    for tokens, logprobs in ranks.simulate(x, [(0, 100), (100, 130), (130, V)], params=p, seed=seeds):
        assert torch.equal(tokens, want.tokens)
        torch.testing.assert_close(logprobs, want.logprobs)


def test_the_choosers_build_one_per_batch():
    chooser = syncfree.HeterogeneousNextTokenChooser([0.7, 1.0], [10, 0], [1.0, 0.9], [1.0, 1.0], seeds=[1, 2],
                                                     repetition_penalty=[1.3, None])
    assert isinstance(chooser.params, syncfree.SamplingParams)
    assert chooser.params.given("processing") == ["repetition_penalty", "output_tokens"]
    x = torch.randn(2, V)
    ids, _ = chooser(x)
    want = syncfree.sample(x, chooser.params.replace(output_tokens=torch.full((2, 256), -1)), seed=torch.tensor([1, 2]),
                           offset=torch.zeros(2, dtype=torch.int64))
    assert torch.equal(ids, want.tokens)


def test_bad_objects_and_mixed_forms_name_the_argument():
    x = torch.randn(2, V)
    with pytest.raises(TypeError, match="^temperature: expected a number"):
        syncfree.SamplingParams(temperature="hot")
    with pytest.raises(TypeError, match="^top_k: expected an int"):
        syncfree.SamplingParams(top_k=2.5)
    with pytest.raises(TypeError, match="^allowed_mask: expected a tensor or None"):
        syncfree.SamplingParams(allowed_mask=[1, 2])
    with pytest.raises(TypeError, match="^params: expected a syncfree.SamplingParams"):
        syncfree.sample(x, params={"top_k": 5})
    with pytest.raises(TypeError, match="^min_p: sample got both params and the keyword min_p"):
        syncfree.sample(x, params=syncfree.SamplingParams(), min_p=0.1)
    with pytest.raises(TypeError, match="^top_k: warp got both"):
        syncfree.warp(x, syncfree.SamplingParams(), top_k=torch.tensor([1, 2]))
    # A keyword left at its identity may accompany the object.
    assert syncfree.sample(x, syncfree.SamplingParams(temperature=0), top_k=0).tokens.shape == (2,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        syncfree.SamplingParams().top_k = 3
    with pytest.raises(ValueError, match="^top_p: expected a number in"):  # ranges: the C++ checks
        syncfree.sample(x, syncfree.SamplingParams(top_p=1.5))


def test_the_ops_reject_lists_of_another_length():
    tensors, values = syncfree.SamplingParams().op_args()
    with pytest.raises(ValueError, match=f"^sample: expected {len(FIELDS)} params and param_values"):
        torch.ops.syncfree.sample(torch.randn(3, 10), False, tensors[:-1], values[:-1], None, None, None, 0, None,
                                  False, False, 0, False, False)


def test_processing_fields_with_probs_raise():
    with pytest.raises(ValueError, match="^probs: repetition_penalty: penalties"):
        tensors, values = syncfree.SamplingParams(repetition_penalty=1.5).op_args()
        torch.ops.syncfree.sample(torch.rand(3, 10), True, tensors, values, None, None, None, 0, None, False, False,
                                  0, False, False)
