"""The plugin's SamplingMetadata -> syncfree mapping, on metadata built by hand with vLLM's own builtin
logits processors (no engine): fields, mask bits, noise, fallbacks, and tokens and logprobs against
vLLM's own Sampler on the same logits."""
import math
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm.v1.sample.sampler")  # not "vllm": tests/vllm would pass for it
import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.sampling_params import StructuredOutputsParams  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessors  # noqa: E402
from vllm.v1.sample.logits_processor.interface import BatchUpdate, LogitsProcessor  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402
from vllm.v1.sample.sampler import Sampler  # noqa: E402

import law  # noqa: E402
from syncfree.integrations import vllm as plugin  # noqa: E402

pytestmark = pytest.mark.vllm
V = 300
MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


def metadata(requests, k=None, prompts=None, outputs=None, bad_words=None):
    """SamplingMetadata for vLLM SamplingParams `requests`, built as vLLM's InputBatch builds it, with
    the builtin processors fed the batch the way the runner feeds them."""
    n = len(requests)
    prompts = prompts or [[5, 6, 7][: 1 + i % 3] for i in range(n)]
    outputs = outputs or [[] for _ in range(n)]
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=n))
    procs = [plugin.MinPLogitsProcessor(config, torch.device("cpu"), False),
             plugin.LogitBiasLogitsProcessor(config, torch.device("cpu"), False),
             plugin.MinTokensLogitsProcessor(config, torch.device("cpu"), False)]
    update = BatchUpdate(batch_size=n, removed=[], moved=[],
                         added=[(i, sp, prompts[i], outputs[i]) for i, sp in enumerate(requests)])
    for p in procs:
        p.update_state(update)
    greedy = [sp.temperature < 1e-5 for sp in requests]
    temps = torch.tensor([0.0 if g else sp.temperature for g, sp in zip(greedy, requests)])
    top_k = torch.tensor([sp.top_k if 0 < sp.top_k < V else V for sp in requests], dtype=torch.int32)
    top_p = torch.tensor([sp.top_p for sp in requests])
    banned = None
    if any(sp.allowed_token_ids for sp in requests):
        banned = torch.zeros(n, V, dtype=torch.bool)
        for i, sp in enumerate(requests):
            if sp.allowed_token_ids:
                banned[i] = True
                banned[i, sp.allowed_token_ids] = False
    penalties = [(sp.repetition_penalty, sp.frequency_penalty, sp.presence_penalty) for sp in requests]
    no_penalties = all(p == (1.0, 0.0, 0.0) for p in penalties)
    width = max(map(len, prompts))
    return SamplingMetadata(
        temperature=None if all(greedy) else temps, all_greedy=all(greedy), all_random=not any(greedy),
        top_p=None if (top_p == 1).all() else top_p, top_k=None if (top_k == V).all() else top_k,
        generators={i: torch.Generator().manual_seed(sp.seed) for i, sp in enumerate(requests) if sp.seed is not None},
        max_num_logprobs=k, no_penalties=no_penalties,
        prompt_token_ids=torch.tensor([p + [V] * (width - len(p)) for p in prompts]),
        repetition_penalties=torch.tensor([p[0] for p in penalties]),
        frequency_penalties=torch.tensor([p[1] for p in penalties]),
        presence_penalties=torch.tensor([p[2] for p in penalties]),
        output_token_ids=outputs, allowed_token_ids_mask=banned, bad_words_token_ids=bad_words or {},
        logitsprocs=LogitsProcessors(procs))


def context(md, n, steps=None):
    """What the wrapped runner `_sample` would tell the sampler: request ids, steps, host top-p."""
    return plugin.StepContext(req_ids=[f"req{i}" for i in range(n)], steps=steps or [0] * n,
                              top_p=None if md.top_p is None else md.top_p.numpy(), engine_seed=0)


def logits(n, seed=0):
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_pack_allowed_is_xgrammar_layout():
    banned = torch.rand(3, 77, generator=torch.Generator().manual_seed(1)) < 0.5
    words = plugin.pack_allowed(banned)
    assert words.dtype == torch.int32 and words.shape == (3, 3)
    bits = [[(int(words[b, t // 32]) >> (t % 32)) & 1 for t in range(96)] for b in range(3)]
    assert torch.tensor(bits)[:, :77].bool().equal(~banned)
    assert not torch.tensor(bits)[:, 77:].any()  # tokens past V are never allowed


def test_fields():
    requests = [SamplingParams(temperature=0.0, repetition_penalty=1.3, logit_bias={4: 2.0}),
                SamplingParams(temperature=0.7, top_k=20, min_p=0.1, seed=3, frequency_penalty=0.5,
                               min_tokens=5, stop_token_ids=[9, 4]),
                SamplingParams(temperature=1.2, top_p=0.9, allowed_token_ids=[1, 2, 3], presence_penalty=0.2)]
    outputs = [[3, 3], [8], [1, 2, 1]]
    md = metadata(requests, outputs=outputs)
    sampler = plugin.SyncfreeSampler()
    p = sampler.params(logits(3), md)
    assert p.temperature.tolist() == pytest.approx([0.0, 0.7, 1.2])
    assert p.top_k.tolist() == [V, 20, V] and p.top_p.tolist() == pytest.approx([1.0, 1.0, 0.9])
    assert p.min_p.tolist() == pytest.approx([0.0, 0.1, 0.0])
    assert p.prompt_tokens.tolist() == [[5, -1, -1], [5, 6, -1], [5, 6, 7]]  # vLLM's V padding -> -1
    assert p.output_tokens.tolist() == [[3, 3, -1], [8, -1, -1], [1, 2, 1]]
    assert p.repetition_penalty.tolist() == pytest.approx([1.3, 1.0, 1.0])
    bias = [dict((t, v) for t, v in zip(ts, vs) if t != -1)
            for ts, vs in zip(p.bias_tokens.tolist(), p.bias_values.tolist())]
    # min-tokens' stop tokens become -inf entries, overriding a bias on the same token
    assert bias == [{4: 2.0}, {9: -math.inf, 4: -math.inf}, {}]
    assert p.allowed_mask.shape == (3, (V + 31) // 32)
    assert p.allowed_mask[:2].eq(plugin.pack_allowed(torch.zeros(2, V, dtype=torch.bool))).all()
    assert p.allowed_mask[2, 0].item() == 0b1110


def test_greedy_tokens_and_logprobs_match_vllm():
    """Every greedy processing feature, one row each, tokens and logprobs in the four modes."""
    x = logits(8, seed=2)
    x[:, 10] = 12.0  # the argmax everywhere, until processing moves it
    x[6] = -math.inf  # a structured-output row whose grammar left only the stop tokens 10 and 11
    x[6, 10:12] = 1.0
    requests = [SamplingParams(temperature=0.0),
                SamplingParams(temperature=0.0, logit_bias={10: -30.0, 11: 25.0}),
                SamplingParams(temperature=0.0, repetition_penalty=2.0),  # 10 was output: 12 -> 6
                SamplingParams(temperature=0.0, frequency_penalty=2.0, presence_penalty=2.0),
                SamplingParams(temperature=0.0, allowed_token_ids=[3, 4, 5]),
                SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[10]),
                SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[10, 11],
                               structured_outputs=StructuredOutputsParams(json={"type": "object"})),
                SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[10],  # a row with more left
                               structured_outputs=StructuredOutputsParams(json={"type": "object"}))]
    outputs = [[], [], [10], [10, 10], [], [1], [1], [1]]
    for k in (None, 0, 3):
        md = metadata(requests, k=k, outputs=outputs)
        theirs = Sampler()(x.clone(), md)
        for mode in MODES if k is not None else (None,):
            ours = plugin.SyncfreeSampler()(x.clone(), md, logprobs_mode_override=mode)
            assert ours.sampled_token_ids.dtype == torch.int32 and ours.sampled_token_ids.shape == (8, 1)
            assert ours.sampled_token_ids.equal(theirs.sampled_token_ids)
            if k is None:
                assert ours.logprobs_tensors is None
            else:
                law.assert_logprobs_match(ours.logprobs_tensors, law.vllm_full_logprobs(x, md, mode), k)
    assert theirs.sampled_token_ids[6].item() in (10, 11)  # vLLM restored the stop tokens; so did we
    assert theirs.sampled_token_ids[7].item() != 10  # here it did not: other tokens were left


@pytest.mark.parametrize("mode", MODES)
def test_sampled_logprobs_match_vllm(mode):
    """Sampled rows with warpers and processing: our tokens' logprobs, top-5 and ranks against vLLM's."""
    requests = [SamplingParams(temperature=1.0, seed=1),
                SamplingParams(temperature=0.8, top_k=7, seed=2),
                SamplingParams(temperature=1.1, top_p=0.8),
                SamplingParams(temperature=0.0),
                SamplingParams(temperature=0.9, min_p=0.05, repetition_penalty=1.4, logit_bias={3: 4.0}),
                SamplingParams(temperature=1.3, top_k=30, top_p=0.95, allowed_token_ids=list(range(0, V, 3)),
                               frequency_penalty=0.4)]
    md = metadata(requests, k=5, outputs=[[], [1], [2, 2], [], [3, 4], [6]])
    sampler = plugin.SyncfreeSampler()
    for step in range(4):
        x = logits(6, seed=10 + step)
        sampler.step_context = context(md, 6, steps=[step] * 6)
        out = sampler(x.clone(), md, logprobs_mode_override=mode)
        law.assert_logprobs_match(out.logprobs_tensors, law.vllm_full_logprobs(x, md, mode), 5)


def test_sampled_tokens_in_kept_set():
    requests = [SamplingParams(temperature=1.0, top_k=4), SamplingParams(temperature=0.7, top_p=0.6),
                SamplingParams(temperature=1.5, min_p=0.3), SamplingParams(temperature=1.0, top_k=40, top_p=0.9,
                                                                           repetition_penalty=1.5),
                SamplingParams(temperature=1.0, logit_bias={0: 50.0, 1: 49.0}, presence_penalty=1.0)]
    outputs = [[], [], [], [5, 6], [0]]
    md = metadata(requests, outputs=outputs)
    sampler = plugin.SyncfreeSampler()
    for step in range(30):
        x = logits(5, seed=step)
        sampler.step_context = context(md, 5, steps=[step] * 5)
        tokens = sampler(x, md).sampled_token_ids.view(-1).tolist()
        for i, sp in enumerate(requests):
            row = law.processed(x[i], bias=sp.logit_bias, prompt=md.prompt_token_ids[i][:1 + i % 3].tolist(),
                                output=outputs[i], repetition_penalty=sp.repetition_penalty,
                                presence_penalty=sp.presence_penalty)
            keep = law.kept(row, sp.temperature, sp.top_k, sp.top_p, sp.min_p)
            assert keep[tokens[i]], (i, step)


def test_noise_is_the_requests_seed_and_step():
    requests = [SamplingParams(temperature=1.0, seed=11), SamplingParams(temperature=1.0),
                SamplingParams(temperature=1.0, seed=12)]
    md = metadata(requests)
    states = {i: g.get_state() for i, g in md.generators.items()}
    sampler = plugin.SyncfreeSampler()
    sampler.step_context = context(md, 3, steps=[4, 0, 9])
    seed, offset = sampler.noise(md, 3, torch.device("cpu"))
    assert seed[0] == 11 and seed[2] == 12 and offset.tolist() == [4, 0, 9]
    assert all(md.generators[i].get_state().equal(s) for i, s in states.items())  # never drawn from
    # the seed is read once per request: a later batch's generator is not consulted again
    md2 = metadata(requests[::-1])
    md2.generators[2] = torch.Generator().manual_seed(99)
    sampler.step_context = plugin.StepContext(req_ids=["req2", "req1", "req0"], steps=[0, 0, 0], engine_seed=0)
    seed2, _ = sampler.noise(md2, 3, torch.device("cpu"))
    assert seed2.tolist() == seed.flip(0).tolist()
    # unseeded: the engine seed mixed with the request id
    other = plugin.SyncfreeSampler()
    other.step_context = plugin.StepContext(req_ids=["req0", "req1", "req2"], steps=[0] * 3, engine_seed=1)
    assert other.noise(md, 3, torch.device("cpu"))[0][1] != seed[1]


def test_a_row_samples_the_same_alone_and_in_any_batch():
    lone = SamplingParams(temperature=1.0, top_k=50, seed=5)
    x = logits(4, seed=3)
    sampler = plugin.SyncfreeSampler()
    sampler.step_context = plugin.StepContext(req_ids=["r"], steps=[7], engine_seed=0)
    alone = sampler(x[2:3].clone(), metadata([lone])).sampled_token_ids.item()
    batch = [SamplingParams(temperature=0.5), SamplingParams(temperature=1.0, seed=1), lone,
             SamplingParams(temperature=2.0, top_p=0.5)]
    sampler = plugin.SyncfreeSampler()
    sampler.step_context = plugin.StepContext(req_ids=["a", "b", "r", "c"], steps=[0, 3, 7, 1], engine_seed=0)
    assert sampler(x.clone(), metadata(batch)).sampled_token_ids[2].item() == alone


@pytest.mark.parametrize("case", ["bad words", "min-p and top-p", "all logprobs", "bonus token",
                                  "logprob_token_ids", "custom processor"])
def test_fallback_is_vllms_sampler(case):
    requests = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0)]
    kwargs, bonus = {}, False
    if case == "min-p and top-p":
        requests[1] = SamplingParams(temperature=1.0, min_p=0.1, top_p=0.9)
    md = metadata(requests, k=V if case == "all logprobs" else None, **kwargs)
    if case == "bad words":
        md.bad_words_token_ids = {0: [[10]]}
    if case == "bonus token":
        bonus = True
    if case == "logprob_token_ids":
        md.logprob_token_ids = {0: [1, 2]}
    if case == "custom processor":
        md.logitsprocs = LogitsProcessors(list(md.logitsprocs.all) + [_Custom()])
    sampler = plugin.SyncfreeSampler()
    sampler.step_context = context(md, 2)
    why = sampler.unsupported(md, bonus, 2)
    assert why is not None
    before = dict(plugin.STATS["fallback_steps"])
    x = logits(2, seed=4)
    x[:, 10] = 30.0
    ours = sampler(x.clone(), md, predict_bonus_token=bonus)
    assert plugin.STATS["fallback_steps"][why] == before.get(why, 0) + 1
    if case not in ("min-p and top-p",):  # greedy rows: vLLM's own tokens
        assert ours.sampled_token_ids.equal(Sampler()(x.clone(), md, predict_bonus_token=bonus).sampled_token_ids)


class _Custom(LogitsProcessor):
    def __init__(self):
        pass

    def is_argmax_invariant(self):
        return False

    def update_state(self, batch_update):
        pass

    def apply(self, logits):
        return logits
