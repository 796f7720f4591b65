"""torch.library integration: schemas, meta/fake kernels, torch.compile."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import syncfree


def op_args(x, probs=False, seed=None, offset=None, seed_value=None, offset_value=0, logprobs=False, valid=False,
            top=0, raw=False, rank=False, **params):
    """The sample op's arguments: the parameters' two lists come from SamplingParams, as in the wrappers."""
    return (x, probs, *syncfree.SamplingParams(**params).op_args(), seed, offset, seed_value, offset_value, None,
            logprobs, valid, top, raw, rank)


CASES = [
    lambda: op_args(torch.randn(4, 100), seed=torch.arange(4), offset=torch.arange(4), logprobs=True, valid=True),
    lambda: op_args(torch.randn(3, 50).bfloat16(), temperature=torch.rand(3) + 0.1, seed=torch.arange(3)),
    lambda: op_args(torch.randn(100), temperature=0.0, logprobs=True),
    lambda: op_args(torch.rand(5, 33), probs=True, seed_value=3, offset_value=4, valid=True),
    lambda: op_args(torch.randn(6, 300), seed=torch.arange(6), top_k=20, top_p=0.9, min_p=0.01, typical_p=0.95,
                    logprobs=True),
    lambda: op_args(torch.randn(3, 99), seed=torch.arange(3), top_k=torch.tensor([0, 5, 50]),
                    top_p=torch.tensor([1.0, 0.5, 0.9]), min_p=torch.zeros(3), typical_p=torch.ones(3)),
    lambda: op_args(torch.randn(5, 40), seed=torch.arange(5), top_k=4, rank=True),
    lambda: op_args(torch.randn(3, 70), seed=torch.arange(3), top_k=10, logprobs=True, top=5, raw=True, rank=True,
                    repetition_penalty=torch.tensor([1.0, 1.3, 0.8]), frequency_penalty=0.5, presence_penalty=0.25,
                    output_tokens=torch.tensor([[1, 2, 2, -1]] * 3), prompt_tokens=torch.tensor([[5, 6]] * 3),
                    bias_tokens=torch.tensor([[3], [4], [-1]]), bias_values=torch.tensor([[2.0], [-1.0], [0.0]]),
                    allowed_mask=torch.full((3, 3), -1, dtype=torch.int32)),
]


def test_opcheck_warp():
    params = syncfree.SamplingParams
    torch.library.opcheck(torch.ops.syncfree.warp.default,
                          (torch.randn(4, 200), *params(temperature=0.7, top_k=20, top_p=0.9).op_args()))
    torch.library.opcheck(torch.ops.syncfree.warp.default,
                          (torch.randn(200).half(),
                           *params(temperature=0.0, top_p=torch.tensor([0.8]), typical_p=0.9, repetition_penalty=1.2,
                                   output_tokens=torch.tensor([3, 7])).op_args()))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_opcheck_sample(case):
    torch.library.opcheck(torch.ops.syncfree.sample.default, CASES[case]())


@pytest.mark.parametrize("case", range(len(CASES)))
def test_opcheck_sample_into(case):
    args = CASES[case]()
    out = torch.empty(args[0].shape[:-1], dtype=torch.int64)
    torch.library.opcheck(torch.ops.syncfree.sample_into.default, (out, *args))


def test_meta_tensors_give_shapes_without_reading_values():
    x = torch.empty(7, 1000, device="meta", dtype=torch.bfloat16)
    tokens, logprobs, valid = syncfree.sample(x, torch.empty(7, device="meta"), return_logprobs=True,
                                              return_valid=True)
    assert tokens.device.type == "meta" and tokens.shape == (7,) and tokens.dtype == torch.int64
    assert logprobs.shape == (7,) and logprobs.dtype == torch.float32 and valid.dtype == torch.bool
    assert syncfree.sample_probs(torch.empty(5, device="meta")).shape == ()
    warped, logprobs = syncfree.warp(x, 0.5, top_k=3, top_p=torch.empty(7, device="meta"))
    assert warped.shape == (7, 1000) and warped.dtype == torch.float32 and logprobs.device.type == "meta"
    with pytest.raises(ValueError, match="temperature: expected one value per row"):
        syncfree.sample(x, torch.empty(3, device="meta"))


def test_fake_tensor_mode():
    with FakeTensorMode():
        x = torch.randn(3, 64)
        tokens, logprobs = syncfree.sample(x, 0.7, seed=torch.arange(3), return_logprobs=True)
        assert tokens.shape == (3,) and logprobs.shape == (3,)


# Inductor generates and compiles C++ for the code around the ops: ~20 s the first time on a fresh
# machine, so its runs are in the slow tier; aot_eager traces the same graph (fake kernels,
# functionalization of out=) without code generation.
BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    def step(logits, temperature, seeds, offsets):
        tokens, logprobs = syncfree.sample(logits, temperature, seed=seeds, offset=offsets, return_logprobs=True)
        return tokens + 1, logprobs * 2

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x = torch.randn(8, 3000)
    temps, seeds, offsets = torch.rand(8) + 0.2, torch.arange(8) * 11, torch.arange(8)
    eager = step(x, temps, seeds, offsets)
    got = compiled(x, temps, seeds, offsets)
    assert torch.equal(got[0], eager[0])
    torch.testing.assert_close(got[1], eager[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_default_generator_and_scalars(backend):
    def step(logits):
        return syncfree.sample(logits, 0.8, out=None), syncfree.sample(logits, 0.0)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x = torch.randn(4, 500)
    torch.manual_seed(3)
    got = compiled(x)
    assert torch.equal(got[1], x.argmax(-1))
    assert ((got[0] >= 0) & (got[0] < 500)).all()


def test_import_against_another_torch_says_how_to_rebuild(monkeypatch):
    from syncfree import _native

    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    with pytest.raises(ImportError, match="built for torch .* but torch 0.0.0\\+other is installed.*"
                                          "pip install --no-build-isolation"):
        _native._load()


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_with_out(backend):
    def step(logits, seeds, out):
        syncfree.sample(logits, 0.9, seed=seeds, out=out)
        return out * 2

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x, seeds = torch.randn(5, 700), torch.arange(5)
    out = torch.full((5,), -1, dtype=torch.int64)
    doubled = compiled(x, seeds, out)
    expected = syncfree.sample(x, 0.9, seed=seeds)
    assert torch.equal(out, expected) and torch.equal(doubled, expected * 2)


def verify_args(tree, q=True, **params):
    """verify_draft's or verify_tree's op arguments, as the wrappers build them."""
    g = torch.Generator().manual_seed(1)
    target = torch.randn(3, 5, 60, generator=g)
    ids = torch.randint(0, 60, (3, 5 if tree else 4), generator=g)
    draft_probs = torch.softmax(torch.randn(3, ids.shape[1], 60, generator=g), -1) if q else None
    parents = (torch.tensor([[-1, 0, 0, 1, 2]] * 3),) if tree else ()
    return (target, ids, *parents, draft_probs, *syncfree.SamplingParams(**params).op_args(), torch.arange(3),
            torch.arange(3), None, 0, None, True, True)


VERIFY_CASES = [dict(), dict(q=False, temperature=torch.tensor([0.0, 0.7, 1.2]), top_k=5),
                dict(top_p=0.9, repetition_penalty=1.2, output_tokens=torch.tensor([[1, 2, -1]] * 3))]


@pytest.mark.parametrize("case", range(len(VERIFY_CASES)))
@pytest.mark.parametrize("op", ["verify_draft", "verify_tree"])
def test_opcheck_verify(op, case):
    args = verify_args(op == "verify_tree", **VERIFY_CASES[case])
    torch.library.opcheck(getattr(torch.ops.syncfree, op).default, args)
    out = torch.empty(3, 5, dtype=torch.int64)
    torch.library.opcheck(getattr(torch.ops.syncfree, op + "_into").default, (out, *args))
