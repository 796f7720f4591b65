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


# Penalties, logit bias and the output history (README "Choosers: penalties, logit bias and the output history").

def processed(x, outputs, prompt=(), repetition=1.0, frequency=0.0, presence=0.0, bias=None):
    """Plain-PyTorch reference of README "Processing" for one row x [V] (float32): bias, the HF
    repetition rule over prompt + outputs, the OpenAI frequency/presence rule over outputs."""
    x = x.clone()
    for t, b in (bias or {}).items():
        x[t] += b
    for t in set(prompt) | set(outputs):
        x[t] = x[t] / repetition if x[t] > 0 else x[t] * repetition
    for t in set(outputs):
        x[t] -= frequency * outputs.count(t) + presence
    return x


def ring(tokens, size, keep=None):
    """The ring a request's history should be: emission e at slot e % size, the last `keep` (default size)."""
    out = [-1] * size
    for e, t in enumerate(tokens):
        if e >= len(tokens) - (size if keep is None else keep):
            out[e % size] = t
    return out


def favourite_logits(b, v, step, seed=0):
    """Rows whose greedy choice never changes without penalties: a few strong tokens, small per-step noise."""
    base = 0.3 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))
    base[:, :6] += torch.tensor([10.0, 8.5, 7.0, 5.5, 4.0, 2.5])
    return base + 0.05 * torch.randn(b, v, generator=torch.Generator().manual_seed(1000 + step))


PENALIZED = [dict(repetition=1.5, prompt=[0]), dict(frequency=1.0, presence=0.5), dict(),
             dict(repetition=1.2, frequency=0.3, presence=0.1, bias={5: 3.0, 0: -2.0}, prompt=[2, 2, 40])]


def chooser_for(rows, history_size=None, greedy=True, seeds=None, device="cpu"):
    n = len(rows)
    return syncfree.HeterogeneousNextTokenChooser(device=device,
        temperature=[0.0 if greedy else 0.8] * n, top_k=[0] * n, top_p=[1.0] * n, typical_p=[1.0] * n,
        do_sample=[not greedy] * n, seeds=seeds or list(range(n)),
        repetition_penalty=[r.get("repetition") for r in rows], frequency_penalty=[r.get("frequency") for r in rows],
        presence_penalty=[r.get("presence") for r in rows], logit_bias=[r.get("bias") for r in rows],
        prompt_tokens=[r.get("prompt") for r in rows], history_size=history_size)


def test_penalties_over_greedy_steps_match_a_reference():
    """6 greedy steps: each row's ids are the argmax of its logits processed with its history so far."""
    b, v = len(PENALIZED), 64
    chooser = chooser_for(PENALIZED)
    assert chooser.history.shape == (b, 256) and (chooser.history == -1).all()
    outputs = [[] for _ in range(b)]
    for step in range(6):
        x = favourite_logits(b, v, step)
        ids, logprobs = chooser(x)
        for r, row in enumerate(PENALIZED):
            want = processed(x[r], outputs[r], **row)
            assert ids[r].item() == want.argmax().item(), (step, r)
            torch.testing.assert_close(logprobs[r], torch.log_softmax(want, -1)[ids[r]])
            outputs[r].append(ids[r].item())
    assert outputs[2] == [0] * 6  # no penalty: the favourite every time
    assert all(len(set(o)) > 1 for i, o in enumerate(outputs) if i != 2)  # the penalties moved the argmax
    assert outputs[0][0] == 1 and outputs[3][0] == 1  # the prompt's repetition and the bias act from step 0
    assert chooser.steps.tolist() == [6] * b
    assert chooser.history[:, :6].tolist() == outputs and (chooser.history[:, 6:] == -1).all()


def test_sampled_rows_get_their_history():
    """do_sample rows: the chooser's draw is syncfree.sample's with the same history, seed and step."""
    rows = [dict(frequency=0.8, presence=0.4), dict(repetition=1.3, prompt=[0, 3], bias={9: 1.5})]
    chooser = chooser_for(rows, greedy=False, seeds=[5, 6])
    outputs = [[], []]
    for step in range(5):
        x = favourite_logits(2, 50, step, seed=3)
        ids, _ = chooser(x)
        for r, row in enumerate(rows):
            history = torch.tensor(outputs[r] + [-1] * (8 - len(outputs[r])))
            want = syncfree.sample(x[r:r + 1], 0.8, seed=torch.tensor([5 + r]), offset=torch.tensor([step]),
                                   output_tokens=history[None],
                                   prompt_tokens=torch.tensor([row.get("prompt", [-1])]),
                                   repetition_penalty=row.get("repetition", 1.0),
                                   frequency_penalty=row.get("frequency", 0.0),
                                   presence_penalty=row.get("presence", 0.0),
                                   bias_tokens=torch.tensor([list(row.get("bias", {-1: 0.0}))]),
                                   bias_values=torch.tensor([list(row.get("bias", {-1: 0.0}).values())]))
            assert ids[r] == want[0], (step, r)
            outputs[r].append(ids[r].item())


def test_history_is_a_ring_of_the_most_recent_tokens():
    """Past history_size tokens the oldest slot is overwritten: the penalties see the last history_size."""
    rows = [dict(frequency=2.0), dict(repetition=3.0)]
    chooser = chooser_for(rows, history_size=3)
    outputs = [[], []]
    for step in range(7):
        x = favourite_logits(2, 40, step, seed=1)
        ids, _ = chooser(x)
        for r, row in enumerate(rows):
            assert ids[r].item() == processed(x[r], outputs[r][-3:], **row).argmax().item(), (step, r)
            outputs[r].append(ids[r].item())
        assert chooser.history.tolist() == [ring(o, 3) for o in outputs]
    assert chooser.steps.tolist() == [7, 7] and chooser.history_size == 3


def test_logit_bias_dicts_and_the_single_request_chooser():
    x = favourite_logits(1, 30, 0)[0]
    forced = syncfree.NextTokenChooser(logit_bias={17: 100.0})
    assert forced(x)[0].tolist() == [17] and forced.history_size == 0  # bias only: no history kept
    banned = syncfree.NextTokenChooser(logit_bias={0: -float("inf"), 1: -float("inf")})
    assert banned(x)[0].tolist() == [2]
    one = syncfree.NextTokenChooser(repetition_penalty=1.4, frequency_penalty=0.2, prompt_tokens=[0], history_size=16)
    outputs = []
    for step in range(5):
        x = favourite_logits(1, 30, step)[0]
        ids, _ = one(x)
        assert ids.tolist() == [processed(x, outputs, [0], 1.4, 0.2).argmax().item()]
        outputs.append(ids.item())
    assert one.history[0, :5].tolist() == outputs and one.history.shape == (1, 16)
    # A heterogeneous chooser takes the [V] form too, and one dict applies to every request.
    both = syncfree.HeterogeneousNextTokenChooser([0.0, 0.0], [0, 0], [1.0, 1.0], [1.0, 1.0], do_sample=[False] * 2,
                                                  logit_bias={3: 50.0})
    assert both(favourite_logits(2, 30, 0))[0].tolist() == [3, 3]
    single = syncfree.HeterogeneousNextTokenChooser([0.0], [0], [1.0], [1.0], do_sample=[False],
                                                    repetition_penalty=[9.0], prompt_tokens=[[0]])
    ids, _ = single(x)
    assert ids.shape == () and ids.item() == processed(x, [], [0], 9.0).argmax().item() == 1


def test_no_penalty_keeps_no_history_unless_asked():
    plain = syncfree.HeterogeneousNextTokenChooser([0.7, 1.0], [0, 5], [1.0, 0.9], [1.0, 1.0], seeds=[1, 2])
    assert plain.history.shape == (2, 0) and plain._process == {}
    kept = syncfree.HeterogeneousNextTokenChooser([0.7, 1.0], [0, 5], [1.0, 0.9], [1.0, 1.0], seeds=[1, 2],
                                                  history_size=4)
    x = logits(b=2, v=100)
    ids, _ = kept(x)
    assert torch.equal(ids, plain(x)[0]) and kept._process == {}  # same draws; the history is only recorded
    assert kept.history[:, 0].tolist() == ids.tolist()


def test_filter_and_concatenate_carry_histories():
    """A filtered or joined chooser gives each request the tokens it would get alone."""
    b, v = len(PENALIZED), 64
    full = chooser_for(PENALIZED, history_size=8)
    for step in range(3):
        full(favourite_logits(b, v, step))
    kept = full.filter([3, 0])
    by_tensor = full.filter(torch.tensor([3, 0]))
    assert torch.equal(kept.history, full.history[[3, 0]]) and torch.equal(kept.steps, full.steps[[3, 0]])
    assert kept._process.keys() == full._process.keys()
    assert torch.equal(kept.prompt_tokens, full.prompt_tokens[[3, 0]]) and torch.equal(kept.bias_tokens,
                                                                                      full.bias_tokens[[3, 0]])
    only_plain = full.filter([2])
    assert only_plain._process == {}  # a list: exactly the kept requests' needs
    assert by_tensor._process.keys() == full._process.keys()  # a tensor: what any request needed
    for step in range(3, 6):
        x = favourite_logits(b, v, step)
        want = full(x)[0]
        assert torch.equal(kept(x[[3, 0]])[0], want[[3, 0]])
        assert torch.equal(by_tensor(x[[3, 0]])[0], want[[3, 0]])
        assert torch.equal(only_plain(x[[2]])[0], want[[2]])
    # Join: a penalized chooser (width 8), a plain one (no history) and a fresh penalized one.
    plain = syncfree.HeterogeneousNextTokenChooser([0.0], [0], [1.0], [1.0], do_sample=[False])
    plain(favourite_logits(1, v, 0))
    fresh = chooser_for([dict(frequency=1.0)], history_size=8)
    joined = syncfree.HeterogeneousNextTokenChooser.concatenate([kept, plain, fresh])
    assert joined.history_size == 8 and joined.steps.tolist() == [6, 6, 1, 0]
    assert torch.equal(joined.history[:2], kept.history) and (joined.history[2:] == -1).all()
    assert joined.prompt_tokens.shape == (4, 3) and joined.prompt_tokens[2:].eq(-1).all()
    assert joined.bias_tokens[2:].eq(-1).all() and joined.bias_values[2:].eq(0).all()
    for step in range(6, 9):
        x = favourite_logits(4, v, step)
        want = torch.cat([kept(x[:2])[0], plain(x[2:3])[0], fresh(x[3:])[0]])
        assert torch.equal(joined(x)[0], want)
    assert torch.equal(joined.history[[0, 1, 3]], torch.cat([kept.history, fresh.history]))


def test_concatenate_relays_rings_of_other_widths():
    """Rings of 3 and 6 slots (one wrapped) joined into 6: each keeps its most recent tokens at slot e % 6."""
    narrow = chooser_for([dict(frequency=1.0)], history_size=3)
    wide = chooser_for([dict(repetition=2.0)], history_size=6)
    outs = [[], []]
    for step in range(5):
        x = favourite_logits(2, 40, step)
        outs[0].append(narrow(x[:1])[0].item())
        if step < 4:
            outs[1].append(wide(x[1:])[0].item())
    joined = syncfree.HeterogeneousNextTokenChooser.concatenate([narrow, wide])
    assert joined.history.tolist() == [ring(outs[0], 6, keep=3), ring(outs[1], 6)]
    x = favourite_logits(2, 40, 9)
    ids = joined(x)[0]
    assert ids[0].item() == processed(x[0], outs[0][-3:], frequency=1.0).argmax().item()
    assert ids[1].item() == processed(x[1], outs[1], repetition=2.0).argmax().item()
    shrunk = syncfree.HeterogeneousNextTokenChooser.concatenate([wide.filter([0])])
    assert torch.equal(shrunk.history, wide.history)


def sequential_greedy(target, history, drafts, row):
    """Greedy speculative decoding by hand: position j's logits processed with history + drafts[:j]."""
    tokens = []
    for j in range(target.shape[0]):
        tok = processed(target[j], history + drafts[:j], **row).argmax().item()
        tokens.append(tok)
        if j == len(drafts) or tok != drafts[j]:
            break
    return tokens


def test_verify_applies_penalties_per_position_and_appends_the_emitted_tokens():
    rows = [dict(repetition=1.5, prompt=[1]), dict(frequency=1.0, presence=0.5), dict(),
            dict(repetition=1.2, frequency=0.3, bias={5: 3.0, 0: -9.0})]
    chooser = chooser_for(rows, history_size=8)
    outputs = [[] for _ in rows]
    for step in range(2):
        ids, _ = chooser(favourite_logits(4, 64, step))
        for r in range(4):
            outputs[r].append(ids[r].item())
    target = torch.stack([favourite_logits(4, 64, 10 + j) for j in range(4)], 1)  # [4, 4, 64]
    paths = [sequential_greedy(target[r], outputs[r], [-1] * 3, rows[r]) for r in range(4)]  # free-running path
    drafts = [paths[r][:3] + [0] * (3 - len(paths[r][:3])) for r in range(4)]
    drafts[1][1] = (drafts[1][1] + 1) % 64  # row 1: rejected at position 1
    tokens, accepted, logprobs = chooser.verify(target, torch.tensor(drafts))
    for r in range(4):
        want = sequential_greedy(target[r], outputs[r], drafts[r], rows[r])
        assert tokens[r, :len(want)].tolist() == want and (tokens[r, len(want):] == -1).all(), r
        assert accepted[r].item() == len(want) - 1
        outputs[r] += want
    assert accepted.tolist()[1] == 1 and accepted.tolist()[0] == 3
    assert chooser.steps.tolist() == [len(o) for o in outputs]
    assert chooser.history.tolist() == [ring(o, 8) for o in outputs]
    for step in range(3):  # the next steps see the verified tokens, and the ring wraps
        x = favourite_logits(4, 64, 20 + step)
        ids, _ = chooser(x)
        for r in range(4):
            assert ids[r].item() == processed(x[r], outputs[r][-8:], **rows[r]).argmax().item()
            outputs[r].append(ids[r].item())
    assert chooser.history.tolist() == [ring(o, 8) for o in outputs]


def test_verify_append_wraps_a_small_ring():
    """More emitted tokens than slots: the ring keeps the last history_size, at slot e % size."""
    chooser = syncfree.HeterogeneousNextTokenChooser([0.0, 0.0], [0, 0], [1.0, 1.0], [1.0, 1.0],
                                                     do_sample=[False] * 2, history_size=3)
    chooser(favourite_logits(2, 30, 0))
    first = chooser.history[:, 0].tolist()
    target = torch.randn(2, 6, 30, generator=torch.Generator().manual_seed(4))
    drafts = target[:, :5].argmax(-1)
    drafts[1, 2] = (drafts[1, 2] + 1) % 30
    tokens, accepted, _ = chooser.verify(target, drafts)
    assert accepted.tolist() == [5, 2]
    for r in range(2):
        emitted = [first[r]] + tokens[r, :accepted[r] + 1].tolist()
        assert chooser.history[r].tolist() == ring(emitted, 3)
    assert chooser.steps.tolist() == [7, 4]


def test_penalty_arguments_are_checked():
    make = lambda **kw: syncfree.HeterogeneousNextTokenChooser([1.0, 1.0], [0, 0], [1.0, 1.0], [1.0, 1.0], **kw)  # noqa
    for kw, error, match in ((dict(repetition_penalty=[0.0, 1.0]), ValueError, "repetition_penalty"),
                             (dict(repetition_penalty=[float("inf"), 1.0]), ValueError, "repetition_penalty"),
                             (dict(frequency_penalty=[float("nan"), None]), ValueError, "frequency_penalty"),
                             (dict(presence_penalty=["x", 0.0]), TypeError, "presence_penalty"),
                             (dict(presence_penalty=[0.0]), ValueError, "presence_penalty"),
                             (dict(logit_bias=[{1: float("nan")}, None]), ValueError, "logit_bias"),
                             (dict(logit_bias=[{-2: 1.0}, None]), ValueError, "logit_bias"),
                             (dict(logit_bias=[[1, 2], None]), TypeError, "logit_bias"),
                             (dict(prompt_tokens=[1, 2]), TypeError, "prompt_tokens"),
                             (dict(prompt_tokens=[[1, -1], None]), ValueError, "prompt_tokens"),
                             (dict(prompt_tokens=[[1]]), ValueError, "prompt_tokens"),
                             (dict(history_size=-1), ValueError, "history_size"),
                             (dict(frequency_penalty=0.5, history_size=0), ValueError, "history_size")):
        with pytest.raises(error, match=match):
            make(**kw)
    ok = make(repetition_penalty=torch.tensor([1.2, 1.0]), prompt_tokens=[torch.tensor([3, 4]), None],
              logit_bias=[None, {2: -1.0}])
    assert ok.prompt_tokens.tolist() == [[3, 4], [-1, -1]] and ok.bias_tokens.tolist() == [[-1], [2]]
    assert ok.history_size == 256 and set(ok._process) == {"repetition_penalty", "prompt_tokens", "output_tokens",
                                                           "bias_tokens", "bias_values"}


@pytest.mark.cuda
@requires_cuda
def test_penalized_choosers_no_sync_and_graph_replay_on_cuda():
    """Calls, verify, filter (by a device tensor) and concatenate with penalties do not sync; a
    captured call replays the eager CPU chooser's tokens and history step by step."""
    n, v = len(PENALIZED), 32000
    x = favourite_logits(n, v, 0).cuda()
    index, last = torch.tensor([3, 1], device="cuda"), torch.tensor([0], device="cuda")  # host copies: before
    target, drafts, x_joined = torch.stack([x, x], 1), x.argmax(-1, keepdim=True), x[torch.tensor([3, 1, 0]).cuda()]
    chooser = chooser_for(PENALIZED, history_size=8, greedy=False, seeds=[1, 2, 3, 4], device="cuda")
    chooser(x)
    torch.cuda.set_sync_debug_mode("error")
    try:
        chooser(x)
        chooser.verify(target, drafts)
        joined = syncfree.HeterogeneousNextTokenChooser.concatenate([chooser.filter(index), chooser.filter(last)])
        joined(x_joined)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = chooser_for(PENALIZED, history_size=8, greedy=False, seeds=[1, 2, 3, 4])
    graphed = chooser_for(PENALIZED, history_size=8, greedy=False, seeds=[1, 2, 3, 4], device="cuda")
    static_x, out = x.clone(), {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            graphed(static_x)
    torch.cuda.current_stream().wait_stream(s)
    graphed.history.fill_(-1)  # the warm-up's tokens out: the replays start from step 0
    graphed.steps.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out["ids"] = graphed(static_x)[0]
    for step in range(5):
        static_x.copy_(favourite_logits(n, v, step))
        graph.replay()
        want, _ = cpu(favourite_logits(n, v, step))
        assert torch.equal(out["ids"].cpu(), want), step
    assert torch.equal(graphed.history.cpu(), cpu.history) and graphed.steps.tolist() == [5] * n


def test_verify_tree_walks_each_request_and_appends_its_path():
    """verify_tree: greedy requests with penalties follow the argmax path of the processed logits,
    where node i sees the history plus its path's tokens (not its siblings'); the steps advance by
    the tokens emitted and the history gains them, so the next call continues each request."""
    from trees import greedy_walk
    rows = [dict(repetition=1.5), dict(frequency=1.0, presence=0.5), dict()]
    chooser = chooser_for(rows, history_size=8)
    outputs = [[] for _ in rows]
    ids, _ = chooser(favourite_logits(3, 64, 0))
    for r in range(3):
        outputs[r].append(ids[r].item())
    parents = [-1, 0, 0, 1, 1, 2, 3]
    target = torch.stack([favourite_logits(3, 64, 10 + j) for j in range(7)], 1)  # [3, 7, 64]
    draft = torch.tensor([0, 0, 1, 1, 2, 0, 2]).expand(3, 7).contiguous()
    tokens, path, accepted, logprobs = chooser.verify_tree(target, draft, torch.tensor(parents).expand(3, 7))
    for r in range(3):
        # The processed logits of each node, with the history plus the path's tokens.
        prefixes = [[]]
        for i in range(1, 7):
            prefixes.append(prefixes[parents[i]] + [draft[r, i].item()])
        x = torch.stack([processed(target[r, i], outputs[r] + prefixes[i], **rows[r]) for i in range(7)])
        want, want_path = greedy_walk(x, draft[r], parents)
        assert tokens[r, :len(want)].tolist() == want and path[r, :len(want)].tolist() == want_path, r
        assert accepted[r].item() == len(want) - 1
        outputs[r] += want
    assert len(set(accepted.tolist())) > 1, "the requests stopped at different depths"
    assert chooser.steps.tolist() == [len(o) for o in outputs]
    assert chooser.history.tolist() == [ring(o, 8) for o in outputs]
