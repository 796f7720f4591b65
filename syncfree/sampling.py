"""syncfree.sample and syncfree.sample_probs: thin wrappers over torch.ops.syncfree.

The wrappers only sort Python numbers from tensors and never read tensor
values, so they run on meta tensors and trace under torch.compile. Every check
of shapes, dtypes, devices and scalar ranges happens in C++ (csrc/checks.cpp)
before any kernel runs.
"""
from typing import Optional, Union

import torch

from . import _native  # noqa: F401  (loads the ops)
from .params import KEYWORDS, SampleOutput, SamplingParams, TreeOutput, VerifyOutput, resolve

Number = Union[int, float]
_UINT64 = 1 << 64


def _logprob_options(return_top_logprobs, logprobs_mode):
    if isinstance(return_top_logprobs, bool) or not isinstance(return_top_logprobs, int):
        raise TypeError(f"return_top_logprobs: expected an int in [0, 20], got {type(return_top_logprobs).__name__}")
    if logprobs_mode not in ("processed", "raw"):
        raise ValueError(f"logprobs_mode: expected 'processed' or 'raw', got {logprobs_mode!r}")
    return return_top_logprobs, logprobs_mode == "raw"


def _rng_args(seed, offset, generator):
    """Sorts seed/offset into (seed tensor, offset tensor, int seed, int offset)."""
    seed_t = offset_t = seed_v = None
    offset_v = 0
    if isinstance(seed, torch.Tensor):
        seed_t = seed
    elif seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or an int64 tensor [B], got {type(seed).__name__}")
        seed_v = seed % _UINT64  # like torch.manual_seed: any int, taken modulo 2^64
        seed_v = seed_v - _UINT64 if seed_v >= _UINT64 // 2 else seed_v
    if isinstance(offset, torch.Tensor):
        offset_t = offset
    elif offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset: expected an int or an int64 tensor [B], got {type(offset).__name__}")
        if not 0 <= offset < _UINT64 // 2:
            raise ValueError(f"offset: expected an int in [0, 2^63), got {offset}")
        offset_v = offset
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return seed_t, offset_t, seed_v, offset_v


def _pack(tokens, logprobs, valid, return_logprobs, return_valid):
    if not (return_logprobs or return_valid):
        return tokens
    return (tokens,) + ((logprobs,) if return_logprobs else ()) + ((valid,) if return_valid else ())


def _check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [V] or [B, V], got {type(x).__name__}")


def _keywords(scope):
    """The sampling parameters an entry point takes as keywords, from its locals()."""
    return {name: scope[name] for name in KEYWORDS if name in scope}


def _params(params, keywords, where):
    """The call's SamplingParams and whether it came as one (else: the keyword form). A
    SamplingParams passed positionally in place of the temperature counts as `params`."""
    if isinstance(keywords.get("temperature"), SamplingParams):
        params, keywords["temperature"] = keywords["temperature"], 1.0
    return resolve(params, keywords, where), params is not None


def _call(out, x, probs, params, rng, generator, return_logprobs, return_valid, top=(0, False), rank=False):
    """The op's (tokens, logprobs, valid, top_ids, top_logprobs, rank)."""
    _check_tensor(x, "probs" if probs else "logits")
    if not isinstance(rank, bool):
        raise TypeError(f"return_rank: expected a bool, got {type(rank).__name__}")
    args = (x, probs, *params.op_args(), *rng, generator, return_logprobs, return_valid, *top, rank)
    if out is None:
        return torch.ops.syncfree.sample(*args)
    return (out,) + tuple(torch.ops.syncfree.sample_into(out, *args))


def sample(logits: torch.Tensor, temperature: Union[Number, torch.Tensor, SamplingParams] = 1.0,
           top_k: Union[int, torch.Tensor] = 0, top_p: Union[Number, torch.Tensor] = 1.0,
           min_p: Union[Number, torch.Tensor] = 0.0, typical_p: Union[Number, torch.Tensor] = 1.0, *,
           params: Optional[SamplingParams] = None, generator: Optional[torch.Generator] = None,
           seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
           return_logprobs: bool = False, return_valid: bool = False, out: Optional[torch.Tensor] = None,
           repetition_penalty: Union[Number, torch.Tensor] = 1.0, frequency_penalty: Union[Number, torch.Tensor] = 0.0,
           presence_penalty: Union[Number, torch.Tensor] = 0.0, output_tokens: Optional[torch.Tensor] = None,
           prompt_tokens: Optional[torch.Tensor] = None, bias_tokens: Optional[torch.Tensor] = None,
           bias_values: Optional[torch.Tensor] = None, allowed_mask: Optional[torch.Tensor] = None,
           return_top_logprobs: int = 0, logprobs_mode: str = "processed", return_rank: bool = False):
    """Samples one token per row of `logits` ([V] or [B, V]) without a GPU->CPU sync.

    Token = argmax(logits / temperature + Gumbel noise) (the exponential race),
    with temperature 0 meaning greedy. The parameters (README "Parameters") come
    as one syncfree.SamplingParams (`params`, or in place of `temperature`), or as
    keywords of the same names: temperature, top_k/top_p/min_p/typical_p (numbers
    or [B] tensors; the warpers, README "Warpers"; greedy rows ignore them) and the
    processing (README "Processing", applied in this order before the temperature:
    allowed_mask, int32 [B, ceil(V / 32)] in xgrammar's bit layout; the logit bias,
    bias_tokens [B, K] int64 with -1 padding and bias_values [B, K]; repetition_penalty,
    HF's rule over prompt_tokens and output_tokens, [B, P] / [B, T] int64 with -1
    padding; then frequency_penalty and presence_penalty, OpenAI's rule over
    output_tokens).

    Noise comes from `seed`/`offset` ([B] int64 tensors: row b depends only on
    seed[b], offset[b] and the token; or Python ints), else from `generator`
    (default: torch's generator for the device), which advances. `out` is an
    optional preallocated int64 tensor for the tokens. return_logprobs: float32
    logprobs of the chosen tokens under the warped softmax(logits / T);
    return_valid: False for rows with no unmasked token; return_top_logprobs=n
    (0..20): (top_ids [B, n] int64, top_logprobs [B, n] float32), highest first,
    ties to the lower id; logprobs_mode "processed" measures logprobs on the
    distribution sampled from, "raw" on log_softmax of the unprocessed logits;
    return_rank: the chosen token's 1-based rank among the same logprobs, int64,
    counting every token whose logprob is at least its own (ties included, as
    vLLM counts; V for a row with nothing left).

    Returns, for a SamplingParams, a SampleOutput (tokens, logprobs, valid,
    top_ids, top_logprobs, rank; None where not asked for). The keyword form
    returns int64 ids of shape logits.shape[:-1], or a tuple (ids[, logprobs]
    [, valid][, top_ids, top_logprobs][, rank]) of what was asked for.
    """
    params, as_object = _params(params, _keywords(locals()), "sample")
    top = _logprob_options(return_top_logprobs, logprobs_mode)
    rng = _rng_args(seed, offset, generator)
    outputs = _call(out, logits, False, params, rng, generator, return_logprobs, return_valid, top, return_rank)
    return _result(as_object, outputs, return_logprobs, return_valid, top[0], return_rank)


def _result(as_object, outputs, return_logprobs, return_valid, top_n, return_rank=False):
    """What `sample` (and distributed.sample) return for (tokens, logprobs, valid, top_ids, top_logprobs[, rank])."""
    tokens, logprobs, valid, top_ids, top_logprobs = outputs[:5]
    rank = outputs[5] if return_rank else None
    if as_object:
        return SampleOutput(tokens, logprobs if return_logprobs else None, valid if return_valid else None,
                            top_ids if top_n else None, top_logprobs if top_n else None, rank)
    packed = _pack(tokens, logprobs, valid, return_logprobs, return_valid)
    extra = ((top_ids, top_logprobs) if top_n else ()) + ((rank,) if return_rank else ())
    if not extra:
        return packed
    return (packed if isinstance(packed, tuple) else (packed,)) + extra


def sample_probs(probs: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                 seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
                 return_valid: bool = False, out: Optional[torch.Tensor] = None):
    """Drop-in for torch.multinomial(probs, 1).squeeze(-1) on non-negative weights
    ([V] or [B, V], need not sum to 1): argmin E_i / p_i, no sync. NaN and
    negative weights count as 0; +inf weights win (lowest index first). Seeds,
    generator, `out` and `valid` as in `sample`.
    """
    rng = _rng_args(seed, offset, generator)
    tokens, _, valid, *_ = _call(out, probs, True, SamplingParams(), rng, generator, False, return_valid)
    return _pack(tokens, None, valid, False, return_valid)


def warp(logits: torch.Tensor, temperature: Union[Number, torch.Tensor, SamplingParams] = 1.0,
         top_k: Union[int, torch.Tensor] = 0, top_p: Union[Number, torch.Tensor] = 1.0,
         min_p: Union[Number, torch.Tensor] = 0.0, typical_p: Union[Number, torch.Tensor] = 1.0, *,
         params: Optional[SamplingParams] = None, repetition_penalty: Union[Number, torch.Tensor] = 1.0,
         frequency_penalty: Union[Number, torch.Tensor] = 0.0, presence_penalty: Union[Number, torch.Tensor] = 0.0,
         output_tokens: Optional[torch.Tensor] = None, prompt_tokens: Optional[torch.Tensor] = None,
         bias_tokens: Optional[torch.Tensor] = None, bias_values: Optional[torch.Tensor] = None,
         allowed_mask: Optional[torch.Tensor] = None):
    """(warped_logits, logprobs), float32, as LoRAX's StaticWarper returns: the
    processed (README "Processing"), temperature-scaled logits (temperature 0 scales
    nothing) with the tokens that top-k, top-p, min-p and typical-p remove at -inf, and
    their log_softmax. Parameters as in `sample`: a SamplingParams or keywords.
    """
    params, _ = _params(params, _keywords(locals()), "warp")
    _check_tensor(logits, "logits")
    return torch.ops.syncfree.warp(logits, *params.op_args())


def verify_draft(target_logits: torch.Tensor, draft_ids: torch.Tensor, draft_probs: Optional[torch.Tensor] = None,
                 temperature: Union[Number, torch.Tensor, SamplingParams] = 1.0, top_k: Union[int, torch.Tensor] = 0,
                 top_p: Union[Number, torch.Tensor] = 1.0, min_p: Union[Number, torch.Tensor] = 0.0,
                 typical_p: Union[Number, torch.Tensor] = 1.0, *, params: Optional[SamplingParams] = None,
                 generator: Optional[torch.Generator] = None, seed: Union[None, int, torch.Tensor] = None,
                 offset: Union[None, int, torch.Tensor] = None, return_logprobs: bool = False,
                 return_valid: bool = False, out: Optional[torch.Tensor] = None,
                 repetition_penalty: Union[Number, torch.Tensor] = 1.0,
                 frequency_penalty: Union[Number, torch.Tensor] = 0.0,
                 presence_penalty: Union[Number, torch.Tensor] = 0.0, output_tokens: Optional[torch.Tensor] = None,
                 prompt_tokens: Optional[torch.Tensor] = None, bias_tokens: Optional[torch.Tensor] = None,
                 bias_values: Optional[torch.Tensor] = None, allowed_mask: Optional[torch.Tensor] = None):
    """Speculative decoding's verification of a draft, without a sync (README "Speculative decoding").

    target_logits [B, n + 1, V]: the target's logits at the n drafted positions and one more;
    draft_ids [B, n] int64; draft_probs [B, n, V] float32 (the drafter's own, warped
    probabilities) or None for a drafter that proposes tokens without a distribution (one-hot).
    The parameters (a SamplingParams, or keywords) apply to every position of a row, as in
    `sample`, with the processing of a sequential decode: position j sees the row's
    output_tokens followed by draft_ids[:, :j] (for the penalties), the row's prompt and bias,
    and allowed_mask [B, ceil(V / 32)] or one mask per position [B, n + 1, ceil(V / 32)].
    Draft token j is accepted with probability min(1, p_j / q_j); at the first
    rejection a token from normalize(max(0, p_j - q_j)) ends the row, and if all n are accepted
    a bonus token from p_n does. Returns (tokens [B, n + 1] int64: the accepted tokens, the
    last token, then -1; num_accepted [B] int64)[, logprobs [B, n + 1] float32 of the emitted
    tokens under the warped target, -inf past them][, valid [B]: False where a position had no
    unmasked logit (the row stops there with token 0)]; for a SamplingParams, a VerifyOutput
    with None where not asked for. Noise as in `sample`: position j of a
    row with per-row seed/offset tensors draws as offset[b] + j. `out`: a preallocated
    [B, n + 1] int64 tensor for the tokens.
    """
    params, as_object = _params(params, _keywords(locals()), "verify_draft")
    if not isinstance(target_logits, torch.Tensor):
        raise TypeError(f"target_logits: expected a tensor [B, n + 1, V], got {type(target_logits).__name__}")
    if not isinstance(draft_ids, torch.Tensor):
        raise TypeError(f"draft_ids: expected an int64 tensor [B, n], got {type(draft_ids).__name__}")
    if draft_probs is not None and not isinstance(draft_probs, torch.Tensor):
        raise TypeError(f"draft_probs: expected a float32 tensor [B, n, V] or None, got {type(draft_probs).__name__}")
    args = (target_logits, draft_ids, draft_probs, *params.op_args(), *_rng_args(seed, offset, generator), generator,
            return_logprobs, return_valid)
    if out is None:
        tokens, accepted, logprobs, valid = torch.ops.syncfree.verify_draft(*args)
    else:
        accepted, logprobs, valid = torch.ops.syncfree.verify_draft_into(out, *args)
        tokens = out
    if as_object:
        return VerifyOutput(tokens, accepted, logprobs if return_logprobs else None, valid if return_valid else None)
    return (tokens, accepted) + ((logprobs,) if return_logprobs else ()) + ((valid,) if return_valid else ())


def verify_tree(target_logits: torch.Tensor, draft_ids: torch.Tensor, parents: torch.Tensor,
                draft_probs: Optional[torch.Tensor] = None,
                temperature: Union[Number, torch.Tensor, SamplingParams] = 1.0, top_k: Union[int, torch.Tensor] = 0,
                top_p: Union[Number, torch.Tensor] = 1.0, min_p: Union[Number, torch.Tensor] = 0.0,
                typical_p: Union[Number, torch.Tensor] = 1.0, *, params: Optional[SamplingParams] = None,
                generator: Optional[torch.Generator] = None, seed: Union[None, int, torch.Tensor] = None,
                offset: Union[None, int, torch.Tensor] = None, return_logprobs: bool = False,
                return_valid: bool = False, out: Optional[torch.Tensor] = None,
                repetition_penalty: Union[Number, torch.Tensor] = 1.0,
                frequency_penalty: Union[Number, torch.Tensor] = 0.0,
                presence_penalty: Union[Number, torch.Tensor] = 0.0, output_tokens: Optional[torch.Tensor] = None,
                prompt_tokens: Optional[torch.Tensor] = None, bias_tokens: Optional[torch.Tensor] = None,
                bias_values: Optional[torch.Tensor] = None, allowed_mask: Optional[torch.Tensor] = None):
    """Verification of a draft tree (EAGLE, Medusa, SpecInfer), without a sync (README "Draft trees").

    target_logits [B, N, V]: the target's logits at each node (the law of the token after it);
    draft_ids [B, N] int64: node i's token (node 0, the root, is the last accepted token: its id
    is not read); parents [B, N] int64: -1 for the root, parents[b, i] in [0, i) for a node, -1
    for padding; siblings are tried in node order. draft_probs [B, N, V] float32: the law each
    node's token was drawn from (children of a node independent), or None for proposed
    children (one-hot). Parameters, processing (node i sees the row's output_tokens followed by
    the tokens of its path), noise (node i of a row with per-row seed/offset tensors draws as
    offset[b] + i) and `out` as in `verify_draft`. Returns (tokens [B, N] int64: the accepted
    path's tokens, the stop or bonus token, then -1; path [B, N] int64: the root, the accepted
    nodes, then -1 (the KV-cache entries to keep); num_accepted [B])[, logprobs [B, N]][,
    valid [B]]; for a SamplingParams, a TreeOutput with None where not asked for.
    """
    params, as_object = _params(params, _keywords(locals()), "verify_tree")
    for name, value, what in (("target_logits", target_logits, "a tensor [B, N, V]"),
                              ("draft_ids", draft_ids, "an int64 tensor [B, N]"),
                              ("parents", parents, "an int64 tensor [B, N]")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    if draft_probs is not None and not isinstance(draft_probs, torch.Tensor):
        raise TypeError(f"draft_probs: expected a float32 tensor [B, N, V] or None, got {type(draft_probs).__name__}")
    args = (target_logits, draft_ids, parents, draft_probs, *params.op_args(), *_rng_args(seed, offset, generator),
            generator, return_logprobs, return_valid)
    if out is None:
        tokens, path, accepted, logprobs, valid = torch.ops.syncfree.verify_tree(*args)
    else:
        path, accepted, logprobs, valid = torch.ops.syncfree.verify_tree_into(out, *args)
        tokens = out
    if as_object:
        return TreeOutput(tokens, path, accepted, logprobs if return_logprobs else None,
                          valid if return_valid else None)
    return (tokens, path, accepted) + ((logprobs,) if return_logprobs else ()) + ((valid,) if return_valid else ())
