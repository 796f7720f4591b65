"""End to end through `vllm.LLM.generate` on the tiny random Llama: the plugin on and off, greedy identity
with vLLM's sampler, seeded batch invariance, kept sets, logprobs and ranks, structured output.

Engines are shared (conftest: `llm_off`, then `llm_on`); the logits the sampler saw are captured by
wrapping SyncfreeSampler.forward for the length of one test."""
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest

pytest.importorskip("vllm.v1.sample.sampler")  # not "vllm": tests/vllm would pass for it
from vllm import SamplingParams  # noqa: E402
from vllm.sampling_params import StructuredOutputsParams  # noqa: E402
from vllm.v1.sample.sampler import Sampler  # noqa: E402

import law  # noqa: E402
from engine_setup import new_llm, sampler_class  # noqa: E402
from syncfree.integrations import vllm as plugin  # noqa: E402

pytestmark = pytest.mark.vllm
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["The first man", "Hello there", "What time is it", "A long day of work", "People say that",
           "Give me JSON:", "Once upon a time", "We will go"]
MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


def fallbacks():
    return Counter(plugin.STATS["fallback_steps"])


def tokens(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def generate(llm, prompts, params):
    return llm.generate(prompts, params, use_tqdm=False)


@pytest.fixture
def capture(monkeypatch):
    """Records every syncfree step: (request ids, steps, logits, metadata-derived extras, output);
    `check(self, logits, md, output)` may compare against vLLM's code while the metadata is live."""
    steps, checks = [], []
    forward = plugin.SyncfreeSampler.forward

    def recording(self, logits, sampling_metadata, predict_bonus_token=False, logprobs_mode_override=None):
        md, saw = sampling_metadata, logits.clone()
        out = forward(self, logits, md, predict_bonus_token, logprobs_mode_override)
        ctx = self.step_context
        steps.append((list(ctx.req_ids), list(ctx.steps), saw, out))
        for check in checks:
            check(self, saw, md, out)
        return out

    monkeypatch.setattr(plugin.SyncfreeSampler, "forward", recording)
    return steps, checks


def test_entry_point_is_installed():
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="vllm.general_plugins")}
    assert found.get("syncfree") == "syncfree.integrations.vllm:register"


def test_off_without_the_switch(llm_off):
    before = plugin.STATS["syncfree_steps"]
    generate(llm_off, PROMPTS[:2], SamplingParams(temperature=1.0, max_tokens=4))
    assert plugin.STATS["register_calls"] >= 1  # vLLM called the entry point ...
    assert not plugin.STATS["enabled"] and plugin.STATS["syncfree_steps"] == before  # ... which did nothing
    assert sampler_class(llm_off) is Sampler


def test_on_with_the_switch(llm_on):
    before, fell_back = plugin.STATS["syncfree_steps"], fallbacks()
    out = generate(llm_on, PROMPTS[:3], SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True))
    assert sampler_class(llm_on) is plugin.SyncfreeSampler
    assert plugin.STATS["syncfree_steps"] - before == 5  # one call per step for the whole batch
    assert all(len(t) == 5 for t in tokens(out)) and fallbacks() == fell_back


def test_greedy_is_vllms_greedy(llm_off, llm_on):
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    assert tokens(generate(llm_on, PROMPTS, params)) == tokens(generate(llm_off, PROMPTS, params))


def test_seeded_tokens_do_not_depend_on_run_or_batch(llm_on):
    mine = SamplingParams(temperature=1.0, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)
    alone = tokens(generate(llm_on, [PROMPTS[0]], mine))[0]
    assert tokens(generate(llm_on, [PROMPTS[0]], mine))[0] == alone  # another run
    # beside others that start, sample differently and finish at other steps
    others = [SamplingParams(temperature=0.8, max_tokens=3 + 5 * i, seed=None if i % 2 else i, ignore_eos=True)
              for i in range(5)]
    crowd = generate(llm_on, PROMPTS[1:6] + [PROMPTS[0]], others + [mine])
    assert tokens(crowd)[-1] == alone
    # and a seed is the request's own: the same seed on another prompt draws other tokens
    assert tokens(generate(llm_on, [PROMPTS[1]], mine))[0] != alone


@pytest.fixture(scope="session")
def llm_tight(llm_on, tiny_model):
    """An engine (switch on) with 9 KV blocks of 32 tokens: 8 requests of 60 tokens get preempted.

    Kept to the session's end: engines in one process share vLLM's process groups, which the
    shutdown of any of them (also by garbage collection) destroys."""
    return new_llm(tiny_model, num_gpu_blocks_override=9, block_size=32, disable_log_stats=False)


def test_seeded_tokens_survive_preemption(llm_tight, llm_on):
    """vLLM preempts requests and recomputes them, and each seeded request still draws what it draws
    alone (its noise is its seed and step), and what it draws in another engine."""
    llm = llm_tight
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS)]
    params = [SamplingParams(temperature=1.0, top_k=50, seed=100 + i, max_tokens=60, ignore_eos=True)
              for i in range(len(prompts))]
    alone = [tokens(generate(llm, [p], s))[0] for p, s in zip(prompts, params)]
    assert tokens(generate(llm, prompts, params)) == alone
    assert sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions") > 0
    assert tokens(generate(llm_on, prompts[:1], params[0]))[0] == alone[0]


KEPT_SET_REQUESTS = [
    dict(temperature=0.9, top_k=5),
    dict(temperature=1.0, top_p=0.7),
    dict(temperature=1.3, min_p=0.2),
    dict(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.3),
    dict(temperature=1.0, top_k=20, frequency_penalty=0.6, presence_penalty=0.4),
    dict(temperature=1.1, top_p=0.95, logit_bias={7: 5.0, 8: -100.0, 100: 3.0}),
    dict(temperature=1.0, allowed_token_ids=list(range(200, 600)), min_p=0.05),
    dict(temperature=0.0, repetition_penalty=1.5, logit_bias={50: 2.0}),
]


def test_every_token_in_the_float64_kept_set(llm_on, capture):
    steps, _ = capture
    params = [SamplingParams(seed=i, max_tokens=20, ignore_eos=True, **kw) for i, kw in enumerate(KEPT_SET_REQUESTS)]
    outs = generate(llm_on, PROMPTS, params)
    by_id = {o.request_id: (o, kw) for o, kw in zip(outs, KEPT_SET_REQUESTS)}
    checked = removed = 0
    for req_ids, request_steps, logits, out in steps:
        for row, (rid, step) in enumerate(zip(req_ids, request_steps)):
            o, kw = by_id[rid.rsplit("-", 1)[0]]  # vLLM appends 8 random characters to the request id
            token = int(out.sampled_token_ids[row])
            assert o.outputs[0].token_ids[step] == token
            history = list(o.outputs[0].token_ids[:step])
            x = law.processed(logits[row], allowed=kw.get("allowed_token_ids"), bias=kw.get("logit_bias"),
                              prompt=o.prompt_token_ids, output=history,
                              repetition_penalty=kw.get("repetition_penalty", 1.0),
                              frequency_penalty=kw.get("frequency_penalty", 0.0),
                              presence_penalty=kw.get("presence_penalty", 0.0))
            if kw["temperature"] == 0:
                assert law.greedy_ok(x, token), (kw, step)
            else:
                keep = law.kept(x, kw["temperature"], kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0))
                assert keep[token], (kw, step, token)
                removed += int((~keep).sum() > 0)
            checked += 1
    assert checked == 8 * 20 and removed >= 7 * 20  # every sampled row had tokens taken away


def test_min_tokens_hold_back_the_stop_tokens(llm_on):
    fell_back = fallbacks()
    # Stop on the token greedy decoding picks first, but not before 6 tokens.
    first = tokens(generate(llm_on, [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=1)))[0][0]
    out = generate(llm_on, [PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=12, min_tokens=6,
                                                        stop_token_ids=[first]))
    ids = tokens(out)[0]
    assert len(ids) >= 6 and first not in ids[:6]
    assert fallbacks() == fell_back


def test_logprobs_and_ranks_are_vllms(llm_on, capture):
    """logprobs=5 in the four modes: our values, top-5 ids and ranks against vLLM's own code on the
    same logits and metadata, for the tokens we sampled; and what LLM.generate returns is ours."""
    steps, checks = capture
    matched = []

    def against_vllm(sampler, logits, md, out):
        for mode in MODES:
            ours = plugin.SyncfreeSampler.sample_step(sampler, logits.clone(), md, mode)
            assert ours.sampled_token_ids.equal(out.sampled_token_ids)  # same noise whatever the mode
            matched.append(law.assert_logprobs_match(ours.logprobs_tensors,
                                                     law.vllm_full_logprobs(logits, md, mode), 5))

    checks.append(against_vllm)
    requests = [dict(temperature=0.0), dict(temperature=1.0, seed=3), dict(temperature=0.8, top_k=10),
                dict(temperature=1.0, top_p=0.9), dict(temperature=1.2, repetition_penalty=1.4, logit_bias={5: 2.0}),
                dict(temperature=1.0, min_p=0.1, allowed_token_ids=list(range(0, 4000, 2)))]
    outs = generate(llm_on, PROMPTS[:6], [SamplingParams(max_tokens=8, logprobs=5, ignore_eos=True, **kw)
                                          for kw in requests])
    assert len(matched) == 8 * 4 and sum(matched) / len(matched) > 0.9  # ranks exact but for near ties
    print(f"ranks equal to vLLM's in {sum(matched) / len(matched):.1%} of rows")
    # The engine's mode (raw_logprobs): LLM.generate's logprobs are our tensors.
    by_id = {o.request_id: o for o in outs}
    for req_ids, request_steps, _, out in steps:
        lp = out.logprobs_tensors
        for row, (rid, step) in enumerate(zip(req_ids, request_steps)):
            entry = by_id[rid.rsplit("-", 1)[0]].outputs[0].logprobs[step]
            token = int(lp.logprob_token_ids[row, 0])
            assert entry[token].rank == int(lp.selected_token_ranks[row])
            assert entry[token].logprob == pytest.approx(float(lp.logprobs[row, 0]), abs=1e-6)
            assert set(lp.logprob_token_ids[row, 1:].tolist()) <= set(entry)


def test_no_logprobs_and_zero_logprobs(llm_on, capture):
    steps, _ = capture
    out = generate(llm_on, PROMPTS[:2], SamplingParams(temperature=1.0, max_tokens=3, logprobs=0, seed=2))
    assert all(len(entry) == 1 for o in out for entry in o.outputs[0].logprobs)
    assert all(s[3].logprobs_tensors.logprobs.shape == (2, 1) for s in steps)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}, "ok": {"type": "boolean"}}}


def test_json_structured_output(llm_on):
    jsonschema = pytest.importorskip("jsonschema")
    before, fell_back = plugin.STATS["syncfree_steps"], fallbacks()
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=80,
                             structured_outputs=StructuredOutputsParams(json=SCHEMA)) for s in range(4)]
    for o in generate(llm_on, ["Give me JSON:"] * 4, params):
        assert o.outputs[0].finish_reason == "stop", o.outputs[0].text
        jsonschema.validate(json.loads(o.outputs[0].text), SCHEMA)
    assert plugin.STATS["syncfree_steps"] > before and fallbacks() == fell_back


def test_what_syncfree_cannot_express_falls_back(llm_on):
    fell_back, lines = fallbacks(), []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    plugin.logger.addHandler(handler)
    requests = [SamplingParams(temperature=1.0, min_p=0.1, top_p=0.9, max_tokens=3, seed=1),
                SamplingParams(temperature=0.0, bad_words=["the"], max_tokens=3)]
    try:
        for params in requests:
            before = plugin.STATS["syncfree_steps"]
            out = generate(llm_on, [PROMPTS[0]], params)
            assert len(tokens(out)[0]) == 3 and plugin.STATS["syncfree_steps"] == before
    finally:
        plugin.logger.removeHandler(handler)
    why = Counter({"min-p and top-p in one request": 3, "bad words": 3})
    assert fallbacks() - fell_back == why
    for reason in why:  # one line the first time a reason comes up in the process
        assert sum(reason in line for line in lines) == (0 if fell_back[reason] else 1), lines


def test_example_runs_with_the_entry_point(tiny_model):
    """examples/vllm_offline.py in a fresh process started with SYNCFREE_VLLM=1: vLLM itself loads the
    entry point with the switch on (the path a user takes)."""
    env = dict(os.environ, SYNCFREE_VLLM="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "vllm_offline.py"), "--model", tiny_model],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "syncfree sampled" in run.stdout and "vLLM's own sampler" not in run.stdout, run.stdout
