"""syncfree as vLLM's sampler: one `syncfree.sample` call per step (README "Using syncfree in vLLM").

vLLM loads `register` from the `vllm.general_plugins` entry point in every process it starts. It
does nothing unless SYNCFREE_VLLM=1; then it rebinds the `Sampler` name that the V1 model runner
(GPU and CPU) builds its sampler from to `SyncfreeSampler`, and wraps the runner's `_sample` so the
sampler learns what `SamplingMetadata` does not carry: the rows' request ids and steps.

Each step's `SamplingMetadata` becomes one `syncfree.SamplingParams`: temperature (vLLM's greedy rows,
temperature < 1e-5, become 0), top-k, top-p, min-p (the builtin min-p processor's state), the three
penalties with the prompt and output histories, the logit bias and min-tokens (the builtin
processors' dicts, as bias entries), the allowed-token-ids mask (as xgrammar bit words), and the
top-n logprobs and the sampled token's rank in vLLM's four logprobs modes.

What syncfree cannot express exactly goes to vLLM's own sampler (the parent class's `forward`) for
that step, logged once per reason and counted in STATS["fallback_steps"]: see `unsupported`.

Noise: row b draws from (seed, offset) = (its request's seed, its request's step = output tokens so
far), so a seeded request's tokens do not depend on the batch, the run or a preemption. A seeded
request's seed is its generator's `initial_seed()`, read once per request; unseeded requests mix the
engine's seed with their request id. No generator is read or advanced in the step.
"""
import functools
import hashlib
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from vllm.utils.torch_utils import PIN_MEMORY
from vllm.v1.outputs import LogprobsTensors, SamplerOutput
from vllm.v1.sample.logits_processor.builtin import (LogitBiasLogitsProcessor, MinPLogitsProcessor,
                                                     MinTokensLogitsProcessor)
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.sampler import Sampler

import syncfree

SWITCH = "SYNCFREE_VLLM"
GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS: a temperature below it is greedy
MAX_TOP_LOGPROBS = 20  # syncfree's return_top_logprobs limit
BUILTIN = (MinPLogitsProcessor, LogitBiasLogitsProcessor, MinTokensLogitsProcessor)
MODES = {"raw_logprobs": "raw", "raw_logits": "raw", "processed_logprobs": "processed",
         "processed_logits": "processed"}

# What ran in this process: read by the tests, and by anyone asking whether syncfree sampled.
STATS = {"register_calls": 0, "enabled": False, "syncfree_steps": 0, "fallback_steps": Counter()}

# A child of vLLM's logger, so the lines come out with vLLM's format and level.
logger = logging.getLogger("vllm.syncfree")


def register():
    """The entry point: with SYNCFREE_VLLM=1, make the V1 model runner sample through syncfree.

    vLLM may call it more than once per process; only the first enabled call patches."""
    STATS["register_calls"] += 1
    if os.environ.get(SWITCH, "0") != "1":
        return
    # vLLM >= 0.2x prefers Model Runner V2 where Triton exists (every CUDA install); that runner
    # has a sampler of its own, which this plugin does not replace. Ask for V1, or refuse.
    chosen = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if chosen is None:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    elif chosen.strip().lower() in ("1", "true"):
        raise RuntimeError(f"{SWITCH}=1 samples through vLLM's V1 model runner, but "
                           "VLLM_USE_V2_MODEL_RUNNER=1 asks for V2; unset one of them")
    if STATS["enabled"]:
        return
    from vllm.config import VllmConfig
    from vllm.v1.worker import gpu_model_runner

    gpu_model_runner.Sampler = SyncfreeSampler
    gpu_model_runner.GPUModelRunner._sample = _with_step_context(gpu_model_runner.GPUModelRunner._sample)
    VllmConfig.use_v2_model_runner = property(_refuse_v2(VllmConfig.use_v2_model_runner.fget))
    STATS["enabled"] = True
    logger.info("syncfree samples for vLLM's V1 model runner (%s=1)", SWITCH)


def _refuse_v2(use_v2):
    # Some features (HiSparse, watermarking) force Model Runner V2 whatever the environment says;
    # syncfree would then never sample, so say so at start-up instead of running without it.
    @functools.wraps(use_v2)
    def check(self):
        if use_v2(self):
            raise RuntimeError(f"{SWITCH}=1 but this configuration needs vLLM's Model Runner V2, "
                               "whose sampler syncfree does not replace; unset the switch")
        return False
    return check


@dataclass
class StepContext:
    """What the runner knows about a step and SamplingMetadata does not (set by the wrapped `_sample`)."""
    req_ids: list  # row -> request id
    steps: list  # row -> output tokens so far: the row's noise offset
    top_p: Optional[np.ndarray] = None  # host copy of top_p, to find min-p + top-p rows without a sync
    repetition: bool = True  # some row has a repetition penalty (else the prompts are not passed)
    engine_seed: Optional[int] = None


def _with_step_context(sample):
    @functools.wraps(sample)
    def _sample(self, logits, spec_decode_metadata):
        sampler = self.sampler
        if not isinstance(sampler, SyncfreeSampler):
            return sample(self, logits, spec_decode_metadata)
        batch = self.input_batch
        n = batch.num_reqs
        sampler.step_context = StepContext(
            req_ids=list(batch.req_ids[:n]),
            steps=[0 if t is None else len(t) for t in batch.req_output_token_ids[:n]],
            top_p=batch.top_p_cpu[:n], repetition=bool(batch.repetition_penalties_reqs),
            engine_seed=self.model_config.seed)
        try:
            return sample(self, logits, spec_decode_metadata)
        finally:
            sampler.step_context = None
    return _sample


def _processors(md: SamplingMetadata):
    """(min-p, logit bias, min-tokens) builtin processors of the batch, None where absent."""
    found = {type(p): p for p in md.logitsprocs.all if type(p) in BUILTIN}
    return tuple(found.get(kind) for kind in BUILTIN)


def _signed64(value):
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def pack_allowed(banned: torch.Tensor) -> torch.Tensor:
    """vLLM's bool [B, V] mask (True = banned) -> syncfree's allowed mask: int32 [B, ceil(V / 32)], xgrammar's
    layout (bit j of word w set = token 32 w + j allowed)."""
    b, v = banned.shape
    words = (v + 31) // 32
    allowed = torch.zeros(b, words * 32, dtype=torch.int32, device=banned.device)
    allowed[:, :v] = (~banned).to(torch.int32)
    bits = torch.arange(32, dtype=torch.int32, device=banned.device)
    # The bits are disjoint, so their int32 sum is their OR; bit 31 is the sign bit (two's complement).
    return (allowed.view(b, words, 32) << bits).sum(-1, dtype=torch.int32)


class SyncfreeSampler(Sampler):
    """vLLM's V1 `Sampler` with the step done by one `syncfree.sample` call (module docstring)."""

    def __init__(self, logprobs_mode="raw_logprobs", use_fp64_gumbel=False):
        super().__init__(logprobs_mode=logprobs_mode, use_fp64_gumbel=use_fp64_gumbel)
        if use_fp64_gumbel:  # a precision option of vLLM's noise; syncfree's has its own (README "Semantics")
            logger.warning("syncfree: use_fp64_gumbel does not apply: syncfree draws its own noise "
                           "(it resolves 2^-32 near 0: README \"Semantics\")")
        self.step_context: Optional[StepContext] = None
        # Unseeded requests use the model config's seed (from the step context); this one where
        # no context is set (vLLM's warm-up calls, a direct call).
        self.engine_seed = random.SystemRandom().getrandbits(63)
        self._seeds = {}  # request id -> noise seed, each read once
        self._cache = {}  # name -> (owners, value): per-batch tensors, rebuilt when vLLM rebuilds theirs

    def forward(self, logits: torch.Tensor, sampling_metadata: SamplingMetadata, predict_bonus_token: bool = False,
                logprobs_mode_override=None) -> SamplerOutput:
        why = self.unsupported(sampling_metadata, predict_bonus_token, logits.shape[0])
        if why is not None:
            STATS["fallback_steps"][why] += 1
            if STATS["fallback_steps"][why] == 1:
                logger.warning("syncfree: %s: such steps sample with vLLM's own sampler (logged once)", why)
            return super().forward(logits, sampling_metadata, predict_bonus_token, logprobs_mode_override)
        STATS["syncfree_steps"] += 1
        return self.sample_step(logits, sampling_metadata, logprobs_mode_override or self.logprobs_mode)

    def unsupported(self, md: SamplingMetadata, predict_bonus_token: bool, n: int) -> Optional[str]:
        """Why syncfree cannot take this step exactly, or None. Host values only: no device read."""
        if predict_bonus_token:
            return "speculative decoding's bonus token"
        if md.bad_words_token_ids:
            return "bad words"
        if getattr(md, "logprob_token_ids", None):  # getattr: fields newer than some vLLM releases
            return "logprob_token_ids"
        k = md.max_num_logprobs
        if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:  # vLLM passes logprobs=-1 as the vocabulary size
            return f"more than {MAX_TOP_LOGPROBS} logprobs (logprobs=-1 included)"
        holder = getattr(md, "thinking_budget_state_holder", None)
        if holder is not None and holder.has_tracked_requests():
            return "thinking-token budget"
        for p in md.logitsprocs.all:
            if type(p) not in BUILTIN:
                return f"custom logits processor {type(p).__name__}"
        min_p = _processors(md)[0]
        # vLLM applies min-p before top-p, syncfree after: the kept sets differ where both act.
        if min_p is not None and min_p.min_p_count and md.top_p is not None:
            ctx = self.step_context
            if ctx is None or ctx.top_p is None:
                return "min-p with top-p (no host copy of top-p)"
            if np.any((min_p.min_p_cpu[:n] > 0) & (ctx.top_p[:n] < 1)):
                return "min-p and top-p in one request"
        return None

    def sample_step(self, logits: torch.Tensor, md: SamplingMetadata, mode: str) -> SamplerOutput:
        """The step through syncfree: SamplerOutput exactly as vLLM's `Sampler.forward` shapes it."""
        params = self.params(logits, md)
        seed, offset = self.noise(md, logits.shape[0], logits.device)
        k = md.max_num_logprobs
        if k is None:
            out = syncfree.sample(logits, params=params, seed=seed, offset=offset)
            return SamplerOutput(sampled_token_ids=out.tokens.to(torch.int32).unsqueeze(-1), logprobs_tensors=None)
        out = syncfree.sample(logits, params=params, seed=seed, offset=offset, return_logprobs=True,
                              return_top_logprobs=k, logprobs_mode=MODES[mode], return_rank=True)
        ids, values = out.tokens.unsqueeze(-1), out.logprobs.unsqueeze(-1)
        if k:
            ids, values = torch.cat((ids, out.top_ids), 1), torch.cat((values, out.top_logprobs), 1)
        # The logits modes rank like their logprobs modes; only the values differ.
        if mode == "raw_logits":
            values = logits.gather(1, ids).float()
        elif mode == "processed_logits":
            values = processed_logits_at(logits, ids, values, params, md)
        return SamplerOutput(sampled_token_ids=out.tokens.to(torch.int32).unsqueeze(-1),
                             logprobs_tensors=LogprobsTensors(ids.to(torch.int32), values, out.rank))

    def params(self, logits: torch.Tensor, md: SamplingMetadata) -> syncfree.SamplingParams:
        """The step's SamplingMetadata (and builtin processors' state) as one syncfree.SamplingParams."""
        n, vocab = logits.shape
        fields = {}
        if md.all_greedy or md.temperature is None:
            fields["temperature"] = 0.0
        elif md.all_random:
            fields["temperature"] = md.temperature
        else:  # vLLM samples rows below GREEDY_BELOW greedily; syncfree does so at 0
            fields["temperature"] = torch.where(md.temperature < GREEDY_BELOW, 0.0, md.temperature)
        if md.top_k is not None:
            fields["top_k"] = md.top_k  # vLLM's "off" is the vocabulary size: off for syncfree too
        if md.top_p is not None:
            fields["top_p"] = md.top_p
        min_p, bias, min_tokens = _processors(md)
        if min_p is not None and min_p.min_p_count:
            fields["min_p"] = min_p.min_p.reshape(-1)  # its [B, 1] device view
        if not md.no_penalties:
            fields.update(repetition_penalty=md.repetition_penalties, frequency_penalty=md.frequency_penalties,
                          presence_penalty=md.presence_penalties)
            fields["output_tokens"] = self.history(md.output_token_ids, logits.device)
            ctx = self.step_context
            if md.prompt_token_ids is not None and (ctx is None or ctx.repetition):
                # Only the repetition penalty reads the prompt; vLLM pads it with the vocabulary size.
                fields["prompt_tokens"] = self.cached("prompt", (md,), lambda: torch.where(
                    md.prompt_token_ids >= vocab, -1, md.prompt_token_ids.long()))
        if (bias is not None and bias.biases) or (min_tokens is not None and min_tokens.min_toks):
            fields["bias_tokens"], fields["bias_values"] = self.bias(logits, md, bias, min_tokens)
        if md.allowed_token_ids_mask is not None:
            fields["allowed_mask"] = self.cached("mask", (md,), lambda: pack_allowed(md.allowed_token_ids_mask))
        return syncfree.SamplingParams(**fields)

    def noise(self, md: SamplingMetadata, n: int, device):
        """(seed, offset) int64 [n]: each row's request seed and step (module docstring)."""
        ctx = self.step_context
        if ctx is None:  # warm-up or a direct call: no request ids, step 0
            seeds = [_signed64(md.generators[i].initial_seed()) if i in md.generators else
                     self.unseeded(self.engine_seed, str(i)) for i in range(n)]
            return torch.tensor(seeds, device=device), torch.zeros(n, dtype=torch.int64, device=device)
        engine_seed = self.engine_seed if ctx.engine_seed is None else ctx.engine_seed
        seeds = self.cached("seeds", (md, tuple(ctx.req_ids)), lambda: torch.tensor(
            [self.request_seed(rid, md.generators.get(i), engine_seed) for i, rid in enumerate(ctx.req_ids)],
            dtype=torch.int64).to(device))
        steps = torch.tensor(ctx.steps, dtype=torch.int64, pin_memory=PIN_MEMORY)  # pinned: an async copy
        return seeds, steps.to(device, non_blocking=True)

    def request_seed(self, req_id: str, generator: Optional[torch.Generator], engine_seed: int) -> int:
        seed = self._seeds.get(req_id)
        if seed is None:
            if len(self._seeds) > 4096:  # finished requests: forget them (the live ones are re-read once)
                self._seeds.clear()
            # A seeded request draws from its seed alone, so equal seeds give equal tokens, as in vLLM.
            seed = self._seeds[req_id] = (_signed64(generator.initial_seed()) if generator is not None
                                          else self.unseeded(engine_seed, req_id))
        return seed

    @staticmethod
    def unseeded(engine_seed: int, key: str) -> int:
        digest = hashlib.blake2b(f"syncfree-vllm:{engine_seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little", signed=True)

    @staticmethod
    def history(output_token_ids: list, device) -> Optional[torch.Tensor]:
        """vLLM's output-token lists as [B, T] int64 padded with -1 (async scheduling's -1 placeholders too)."""
        width = max(map(len, output_token_ids), default=0)
        if width == 0:
            return None
        rows = np.full((len(output_token_ids), width), -1, dtype=np.int64)
        for i, tokens in enumerate(output_token_ids):
            rows[i, :len(tokens)] = tokens
        rows = torch.from_numpy(rows)
        return (rows.pin_memory() if PIN_MEMORY else rows).to(device, non_blocking=True)

    def bias(self, logits, md, bias, min_tokens):
        """The logit-bias and min-tokens processors' dicts as bias_tokens [B, K] (-1 padded), bias_values [B, K].

        vLLM applies min-tokens (stop tokens -> -inf) before the bias, so a stop token's entry is -inf
        (its bias cannot undo it) -- except in a structured-output request whose row would be left with
        nothing, where vLLM restores the stop tokens: that test is made on the device, per step."""
        n = logits.shape[0]
        biases = bias.biases if bias is not None else {}
        waiting = min_tokens.min_toks if min_tokens is not None else {}
        owners = (bias.bias_tensor if bias is not None else None,
                  min_tokens.logits_slice if min_tokens is not None else None, n)

        def build():
            rows = [{} for _ in range(n)]
            restore = []  # (row, slot, bias): stop tokens of structured-output requests
            for row, entries in biases.items():
                rows[row].update(entries)
            for row, (_, _, stop_ids, structured) in waiting.items():
                for token in stop_ids:
                    if structured:
                        restore.append((row, token, rows[row].get(token, 0.0)))
                    rows[row][token] = -math.inf
            width = max(1, max(map(len, rows)))
            tokens = np.full((n, width), -1, dtype=np.int64)
            values = np.zeros((n, width), dtype=np.float32)
            slots = {}
            for row, entries in enumerate(rows):
                for slot, (token, value) in enumerate(entries.items()):
                    tokens[row, slot], values[row, slot] = token, value
                    slots[row, token] = slot
            restore = [(row, slots[row, token], token, value) for row, token, value in restore]
            return (torch.from_numpy(tokens).to(logits.device), torch.from_numpy(values).to(logits.device), restore)

        tokens, values, restore = self.cached("bias", owners, build)
        if restore:
            values = self.restored(logits, md, values, restore)
        return tokens, values

    @staticmethod
    def restored(logits, md, values, restore):
        """MinTokensLogitsProcessor's structured-output rule without a sync: where masking a row's stop
        tokens leaves it all -inf, they keep their logit (plus their bias)."""
        dev = logits.device
        rows = torch.tensor([r for r, _, _, _ in restore], device=dev)
        slots = torch.tensor([s for _, s, _, _ in restore], device=dev)
        stops = torch.tensor([t for _, _, t, _ in restore], device=dev)
        kept_bias = torch.tensor([b for _, _, _, b in restore], dtype=torch.float32, device=dev)
        unique, inverse = torch.unique(rows, return_inverse=True)
        x = logits[unique].float()
        if md.allowed_token_ids_mask is not None:
            x.masked_fill_(md.allowed_token_ids_mask[unique], -math.inf)
        x[inverse, stops] = -math.inf
        empty = torch.isneginf(x).all(-1)[inverse]
        values = values.clone()
        values[rows, slots] = torch.where(empty, kept_bias, -math.inf)
        return values

    def cached(self, name, owners, build):
        """build()'s value, kept while the objects in `owners` are the same ones (vLLM replaces its per-batch
        tensors and metadata when the batch or a processor's state changes)."""
        hit = self._cache.get(name)
        if hit is not None and len(hit[0]) == len(owners) and all(
                a is b or (type(a) in (int, tuple) and a == b) for a, b in zip(hit[0], owners)):
            return hit[1]
        value = build()
        self._cache[name] = (owners, value)  # holding the owners keeps their ids from being reused
        return value


def processed_logits_at(logits, ids, logprobs, p: syncfree.SamplingParams, md: SamplingMetadata):
    """vLLM's processed_logits at `ids` [B, k + 1]: the logits after the mask, bias, penalties and the
    temperature (as vLLM computes them: divided), -inf where syncfree's processed logprob is -inf (a
    token the mask or a warper removed). Costs B (k + 1) (K + P + T) compares for K bias entries, P
    prompt and T output tokens, instead of a processed copy of the [B, V] logits."""
    x = logits.gather(1, ids).float()
    if md.allowed_token_ids_mask is not None:
        x = x.masked_fill(md.allowed_token_ids_mask.gather(1, ids), -math.inf)
    if p.bias_tokens is not None:
        hit = ids.unsqueeze(-1) == p.bias_tokens.unsqueeze(1)  # one slot per token: the dicts' keys
        x = x + torch.where(hit, p.bias_values.unsqueeze(1), 0.0).sum(-1)
    if p.output_tokens is not None or p.prompt_tokens is not None:
        count = torch.zeros_like(x)
        seen = torch.zeros_like(x, dtype=torch.bool)
        if p.output_tokens is not None:
            in_output = ids.unsqueeze(-1) == p.output_tokens.unsqueeze(1)
            count, seen = in_output.sum(-1).float(), in_output.any(-1)
        if p.prompt_tokens is not None:
            seen = seen | (ids.unsqueeze(-1) == p.prompt_tokens.unsqueeze(1)).any(-1)
        r = p.repetition_penalty.unsqueeze(1)
        x = torch.where(seen, torch.where(x > 0, x / r, x * r), x)
        x = x - p.frequency_penalty.unsqueeze(1) * count  # vLLM's two subtractions, in its order
        x = x - p.presence_penalty.unsqueeze(1) * (count > 0)
    if isinstance(p.temperature, torch.Tensor):
        x = x / torch.where(p.temperature < GREEDY_BELOW, 1.0, p.temperature).unsqueeze(1)
    return torch.where(torch.isneginf(logprobs), -math.inf, x)
