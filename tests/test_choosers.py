"""The next-token choosers and the end-to-end demo (CPU; CUDA parts skip)."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

import syncfree
from conftest import requires_cuda

INF = float("inf")


def logits(b=6, v=3000, seed=0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_chooser_greedy_and_warning():
    x = logits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chooser = syncfree.NextTokenChooser(temperature=0.0, top_k=5, do_sample=True, seed=3)
    assert len(caught) == 1 and "greedy" in str(caught[0].message)
    ids, logprobs = chooser(x[0])
    assert ids.tolist() == [x[0].argmax().item()]
    torch.testing.assert_close(logprobs, torch.log_softmax(x[0], -1)[ids])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = syncfree.NextTokenChooser(temperature=0.7, top_k=5, do_sample=False)
    assert not caught
    assert plain(x[1])[0].tolist() == [x[1].argmax().item()]  # do_sample=False is greedy


def test_heterogeneous_batch_mixes_greedy_and_sampling():
    x = logits(b=4)
    chooser = syncfree.HeterogeneousNextTokenChooser(
        temperature=[0.7, 1.0, 0.0, 1.3], top_k=[20, 0, 0, 5], top_p=[0.9, 1.0, 1.0, 1.0],
        typical_p=[1.0, 1.0, 1.0, 0.9], do_sample=[True, False, True, True], seeds=[1, 2, 3, 4])
    ids, logprobs = chooser(x)
    assert ids[1] == x[1].argmax() and ids[2] == x[2].argmax()
    kept0 = syncfree.warp(x[0:1], 0.7, top_k=20, top_p=0.9)[0][0] > -INF
    assert kept0[ids[0]]
    assert x[3].topk(5).indices.tolist().count(ids[3].item()) == 1


def test_seeds_reproduce_across_batch_compositions():
    """Request r's tokens depend on its seed and step only, not on who shares the batch."""
    x = logits(b=3, v=5000)
    params = dict(temperature=[0.9, 0.9, 0.9], top_k=[50, 50, 50], top_p=[0.95, 0.95, 0.95],
                  typical_p=[1.0, 1.0, 1.0], seeds=[11, 22, 33])
    together = syncfree.HeterogeneousNextTokenChooser(**params)
    alone = syncfree.HeterogeneousNextTokenChooser(temperature=[0.9], top_k=[50], top_p=[0.95], typical_p=[1.0],
                                                   seeds=[22])
    for _ in range(5):
        ids, _ = together(x)
        ids_alone, _ = alone(x[1:2])
        assert ids[1] == ids_alone[0]


def test_chooser_verifies_drafts_with_each_requests_parameters():
    """verify: syncfree.verify_draft with the requests' values and seeds at their steps; the steps
    advance by the tokens emitted, so the next call continues each request's stream."""
    g = torch.Generator().manual_seed(9)
    target = torch.randn(3, 4, 400, generator=g) * 3
    drafts = target[:, :3].argmax(-1)
    params = dict(temperature=[0.8, 0.0, 1.1], top_k=[20, 0, 0], top_p=[0.9, 1.0, 1.0], typical_p=[1.0, 1.0, 1.0],
                  do_sample=[True, False, True], seeds=[5, 6, 7])
    chooser = syncfree.HeterogeneousNextTokenChooser(**params)
    tokens, accepted, logprobs = chooser.verify(target, drafts)
    want = syncfree.verify_draft(target, drafts, None, torch.tensor([0.8, 0.0, 1.1]), torch.tensor([20, 0, 0]),
                                 torch.tensor([0.9, 1.0, 1.0]), seed=torch.tensor([5, 6, 7]),
                                 offset=torch.zeros(3, dtype=torch.int64), return_logprobs=True)
    assert torch.equal(tokens, want[0]) and torch.equal(accepted, want[1])
    assert torch.equal(chooser.steps, accepted + 1)
    assert accepted[1] == 3 and torch.equal(tokens[1], target[1].argmax(-1))  # greedy: the argmax prefix
    alone = syncfree.HeterogeneousNextTokenChooser(temperature=[1.1], top_k=[0], top_p=[1.0], typical_p=[1.0],
                                                   seeds=[7])
    assert torch.equal(alone.verify(target[2:], drafts[2:])[0][0], tokens[2])


def test_filter_and_concatenate_keep_each_requests_stream():
    x = logits(b=3, v=5000)
    make = lambda seeds: syncfree.HeterogeneousNextTokenChooser(
        temperature=[0.9] * len(seeds), top_k=[0] * len(seeds), top_p=[1.0] * len(seeds),
        typical_p=[1.0] * len(seeds), seeds=seeds)
    full = make([11, 22, 33])
    full(x)  # step 0 for everyone
    kept = full.filter([2, 0])
    reference = make([33, 11])
    reference(x[[2, 0]])
    assert torch.equal(kept(x[[2, 0]])[0], reference(x[[2, 0]])[0])  # both at step 1
    joined = syncfree.HeterogeneousNextTokenChooser.concatenate([kept, make([44])])
    assert len(joined) == 3 and joined.steps.tolist() == [2, 2, 0]
    ids, _ = joined(x)
    assert ids.shape == (3,)


def test_demo_runs_on_cpu(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import generate

    results = generate.main(["--device", "cpu", "--batch", "2", "--steps", "4", "--vocab", "300", "--dim", "32",
                             "--layers", "1", "--heads", "2"])
    printed = capsys.readouterr().out
    assert "(a) torch.multinomial" in printed and "(c) syncfree eager" in printed and "tokens/s" in printed
    tokens = results["(c) syncfree eager"]
    assert tokens.shape == (2, 4) and ((tokens >= 0) & (tokens < 300)).all()


@pytest.mark.cuda
@requires_cuda
def test_choosers_no_sync_on_cuda():
    x = logits(b=4, v=32000).cuda()
    chooser = syncfree.HeterogeneousNextTokenChooser(
        temperature=[0.7, 1.0, 0.0, 1.3], top_k=[20, 0, 0, 5], top_p=[0.9, 1.0, 1.0, 1.0],
        typical_p=[1.0, 1.0, 1.0, 0.9], seeds=[1, 2, 3, 4], device="cuda")
    chooser(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        chooser(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = syncfree.HeterogeneousNextTokenChooser(
        temperature=[0.7, 1.0, 0.0, 1.3], top_k=[20, 0, 0, 5], top_p=[0.9, 1.0, 1.0, 1.0],
        typical_p=[1.0, 1.0, 1.0, 0.9], seeds=[1, 2, 3, 4])
    cpu(x.cpu())
    assert torch.equal(chooser(x)[0].cpu(), cpu(x.cpu())[0])


def test_chooser_arguments_are_checked():
    """A single-request chooser takes [V] or [1, V] only (a batch was once flattened into one row)."""
    one = syncfree.NextTokenChooser(temperature=0.7, do_sample=True, seed=3)
    with pytest.raises(ValueError, match="logits"):
        one(torch.randn(4, 10))
    with pytest.raises(ValueError, match="logits"):
        one(torch.randn(1, 2, 10))
    assert one(torch.randn(10))[0].shape == (1,) and one(torch.randn(1, 10))[0].shape == (1,)
    many = syncfree.HeterogeneousNextTokenChooser([0.5, 1.0], [0, 5], [1.0, 0.9], [1.0, 1.0], seeds=[1, 2])
    with pytest.raises(ValueError, match="choosers"):
        syncfree.HeterogeneousNextTokenChooser.concatenate([])
    with pytest.raises(TypeError, match="choosers"):
        syncfree.HeterogeneousNextTokenChooser.concatenate([many, "x"])
    for bad, error in (("x", TypeError), ([0.5], TypeError), ([True], TypeError), (torch.tensor([0.5]), TypeError),
                       ([2], ValueError), ([-3], ValueError)):
        with pytest.raises(error, match="indices"):
            many.filter(bad)
    assert len(many.filter([-1])) == 1 and len(many.filter(torch.tensor([1, 0]))) == 2
