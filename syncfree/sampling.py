"""syncfree.sample and syncfree.sample_probs: thin wrappers over torch.ops.syncfree.

The wrappers only sort Python numbers from tensors and never read tensor
values, so they run on meta tensors and trace under torch.compile. Every check
of shapes, dtypes, devices and scalar ranges happens in C++ (csrc/checks.cpp)
before any kernel runs.
"""
from typing import Optional, Union

import torch

from . import _native  # noqa: F401  (loads the ops)

Number = Union[int, float]
_UINT64 = 1 << 64
_INT64_MAX = (1 << 63) - 1


def _number_or_tensor(value, name):
    """(tensor, None) for a per-row tensor, (None, float) for a Python number."""
    if isinstance(value, torch.Tensor):
        return value, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number or a tensor with one value per row, "
                        f"got {type(value).__name__}")
    return None, value


def _warper_args(temperature, top_k, top_p, min_p, typical_p):
    """The op's (tensor, value) pairs; ranges are checked in C++ (csrc/checks.cpp)."""
    args = []
    for name, value, identity in (("temperature", temperature, 1.0), ("top_k", top_k, 0), ("top_p", top_p, 1.0),
                                  ("min_p", min_p, 0.0), ("typical_p", typical_p, 1.0)):
        tensor, number = _number_or_tensor(value, name)
        if name == "top_k":
            if number is not None and not isinstance(number, int):
                raise TypeError(f"top_k: expected an int or an integer tensor [B], got {type(number).__name__}")
            # Past int64 only the sign matters: any top_k >= V keeps all (checked in C++).
            args += [tensor, identity if number is None else max(min(number, _INT64_MAX), -_INT64_MAX - 1)]
        else:
            args += [tensor, float(identity if number is None else number)]
    return args


def _process_args(repetition_penalty, frequency_penalty, presence_penalty, output_tokens, prompt_tokens,
                  bias_tokens, bias_values, allowed_mask):
    """The op's processing arguments; every check is in C++ (csrc/checks.cpp)."""
    args = []
    for name, value in (("repetition_penalty", repetition_penalty), ("frequency_penalty", frequency_penalty),
                        ("presence_penalty", presence_penalty)):
        tensor, number = _number_or_tensor(value, name)
        args += [tensor, float(1.0 if name == "repetition_penalty" else 0.0) if number is None else float(number)]
    for name, value in (("output_tokens", output_tokens), ("prompt_tokens", prompt_tokens),
                        ("bias_tokens", bias_tokens), ("bias_values", bias_values), ("allowed_mask", allowed_mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
        args.append(value)
    return args


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


_NO_PROCESSING = (None, 1.0, None, 0.0, None, 0.0, None, None, None, None, None)


def _call(out, x, probs, warpers, process, rng, generator, return_logprobs, return_valid, top=(0, False)):
    _check_tensor(x, "probs" if probs else "logits")
    args = (x, probs, *warpers, *process, *rng, generator, return_logprobs, return_valid, *top)
    if out is None:
        return torch.ops.syncfree.sample(*args)
    logprobs, valid, top_ids, top_logprobs = torch.ops.syncfree.sample_into(out, *args)
    return out, logprobs, valid, top_ids, top_logprobs


def sample(logits: torch.Tensor, temperature: Union[Number, torch.Tensor] = 1.0,
           top_k: Union[int, torch.Tensor] = 0, top_p: Union[Number, torch.Tensor] = 1.0,
           min_p: Union[Number, torch.Tensor] = 0.0, typical_p: Union[Number, torch.Tensor] = 1.0, *,
           generator: Optional[torch.Generator] = None, seed: Union[None, int, torch.Tensor] = None,
           offset: Union[None, int, torch.Tensor] = None, return_logprobs: bool = False,
           return_valid: bool = False, out: Optional[torch.Tensor] = None,
           repetition_penalty: Union[Number, torch.Tensor] = 1.0, frequency_penalty: Union[Number, torch.Tensor] = 0.0,
           presence_penalty: Union[Number, torch.Tensor] = 0.0, output_tokens: Optional[torch.Tensor] = None,
           prompt_tokens: Optional[torch.Tensor] = None, bias_tokens: Optional[torch.Tensor] = None,
           bias_values: Optional[torch.Tensor] = None, allowed_mask: Optional[torch.Tensor] = None,
           return_top_logprobs: int = 0, logprobs_mode: str = "processed"):
    """Samples one token per row of `logits` ([V] or [B, V]) without a GPU->CPU sync.

    Token = argmax(logits / temperature + Gumbel noise) (the exponential race),
    with temperature 0 meaning greedy. `temperature` is a number or a [B]
    tensor. Noise comes from `seed`/`offset` ([B] int64 tensors: row b depends
    only on seed[b], offset[b] and the token; or Python ints), else from
    `generator` (default: torch's generator for the device), which advances.
    top_k/top_p/min_p/typical_p (numbers or [B] tensors) warp the distribution
    first, in that order (README "Warpers"); greedy rows ignore them. Returns int64 ids of shape logits.shape[:-1], or a
    tuple (ids[, logprobs][, valid]) when asked: logprobs (float32) of the
    chosen tokens under the warped softmax(logits / T), valid False for rows with no
    unmasked token. `out` is an optional preallocated int64 tensor.

    Processing (README "Processing"), applied in this order before the temperature:
    allowed_mask (int32 [B, ceil(V / 32)], xgrammar's bit layout), the logit bias
    (bias_tokens [B, K] int64 with -1 padding, bias_values [B, K]), repetition_penalty
    (HF rule over prompt_tokens and output_tokens, [B, P] / [B, T] int64 with -1 padding),
    then frequency_penalty and presence_penalty (OpenAI rule over output_tokens); the
    penalties are numbers or [B] tensors. return_top_logprobs=n (0..20) appends
    (top_ids [B, n] int64, top_logprobs [B, n] float32), highest first, ties to the lower
    id; logprobs_mode "processed" measures logprobs on the distribution sampled from,
    "raw" on log_softmax of the unprocessed logits.
    """
    warpers = _warper_args(temperature, top_k, top_p, min_p, typical_p)
    process = _process_args(repetition_penalty, frequency_penalty, presence_penalty, output_tokens, prompt_tokens,
                            bias_tokens, bias_values, allowed_mask)
    top = _logprob_options(return_top_logprobs, logprobs_mode)
    rng = _rng_args(seed, offset, generator)
    tokens, logprobs, valid, top_ids, top_logprobs = _call(out, logits, False, warpers, process, rng, generator,
                                                           return_logprobs, return_valid, top)
    packed = _pack(tokens, logprobs, valid, return_logprobs, return_valid)
    if top[0] == 0:
        return packed
    return (packed if isinstance(packed, tuple) else (packed,)) + (top_ids, top_logprobs)


def sample_probs(probs: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                 seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
                 return_valid: bool = False, out: Optional[torch.Tensor] = None):
    """Drop-in for torch.multinomial(probs, 1).squeeze(-1) on non-negative weights
    ([V] or [B, V], need not sum to 1): argmin E_i / p_i, no sync. NaN and
    negative weights count as 0; +inf weights win (lowest index first). Seeds,
    generator, `out` and `valid` as in `sample`.
    """
    rng = _rng_args(seed, offset, generator)
    warpers = _warper_args(1.0, 0, 1.0, 0.0, 1.0)
    tokens, _, valid, _, _ = _call(out, probs, True, warpers, _NO_PROCESSING, rng, generator, False, return_valid)
    return _pack(tokens, None, valid, False, return_valid)


def warp(logits: torch.Tensor, temperature: Union[Number, torch.Tensor] = 1.0, top_k: Union[int, torch.Tensor] = 0,
         top_p: Union[Number, torch.Tensor] = 1.0, min_p: Union[Number, torch.Tensor] = 0.0,
         typical_p: Union[Number, torch.Tensor] = 1.0, *, repetition_penalty: Union[Number, torch.Tensor] = 1.0,
         frequency_penalty: Union[Number, torch.Tensor] = 0.0, presence_penalty: Union[Number, torch.Tensor] = 0.0,
         output_tokens: Optional[torch.Tensor] = None, prompt_tokens: Optional[torch.Tensor] = None,
         bias_tokens: Optional[torch.Tensor] = None, bias_values: Optional[torch.Tensor] = None,
         allowed_mask: Optional[torch.Tensor] = None):
    """(warped_logits, logprobs), float32, as LoRAX's StaticWarper returns: the
    processed (README "Processing"), temperature-scaled logits (temperature 0 scales
    nothing) with the tokens that top-k, top-p, min-p and typical-p remove at -inf, and
    their log_softmax.
    """
    _check_tensor(logits, "logits")
    return torch.ops.syncfree.warp(logits, *_warper_args(temperature, top_k, top_p, min_p, typical_p),
                                   *_process_args(repetition_penalty, frequency_penalty, presence_penalty,
                                                  output_tokens, prompt_tokens, bias_tokens, bias_values,
                                                  allowed_mask))


def verify_draft(target_logits: torch.Tensor, draft_ids: torch.Tensor, draft_probs: Optional[torch.Tensor] = None,
                 temperature: Union[Number, torch.Tensor] = 1.0, top_k: Union[int, torch.Tensor] = 0,
                 top_p: Union[Number, torch.Tensor] = 1.0, min_p: Union[Number, torch.Tensor] = 0.0,
                 typical_p: Union[Number, torch.Tensor] = 1.0, *, generator: Optional[torch.Generator] = None,
                 seed: Union[None, int, torch.Tensor] = None, offset: Union[None, int, torch.Tensor] = None,
                 return_logprobs: bool = False, return_valid: bool = False, out: Optional[torch.Tensor] = None):
    """Speculative decoding's verification of a draft, without a sync (README "Speculative decoding").

    target_logits [B, n + 1, V]: the target's logits at the n drafted positions and one more;
    draft_ids [B, n] int64; draft_probs [B, n, V] float32 (the drafter's own, warped
    probabilities) or None for a drafter that proposes tokens without a distribution (one-hot).
    Temperature and warpers (numbers or [B] tensors) apply to every position of a row, as in
    `sample`. Draft token j is accepted with probability min(1, p_j / q_j); at the first
    rejection a token from normalize(max(0, p_j - q_j)) ends the row, and if all n are accepted
    a bonus token from p_n does. Returns (tokens [B, n + 1] int64: the accepted tokens, the
    last token, then -1; num_accepted [B] int64)[, logprobs [B, n + 1] float32 of the emitted
    tokens under the warped target, -inf past them][, valid [B]: False where a position had no
    unmasked logit (the row stops there with token 0)]. Noise as in `sample`: position j of a
    row with per-row seed/offset tensors draws as offset[b] + j. `out`: a preallocated
    [B, n + 1] int64 tensor for the tokens.
    """
    if not isinstance(target_logits, torch.Tensor):
        raise TypeError(f"target_logits: expected a tensor [B, n + 1, V], got {type(target_logits).__name__}")
    if not isinstance(draft_ids, torch.Tensor):
        raise TypeError(f"draft_ids: expected an int64 tensor [B, n], got {type(draft_ids).__name__}")
    if draft_probs is not None and not isinstance(draft_probs, torch.Tensor):
        raise TypeError(f"draft_probs: expected a float32 tensor [B, n, V] or None, got {type(draft_probs).__name__}")
    args = (target_logits, draft_ids, draft_probs, *_warper_args(temperature, top_k, top_p, min_p, typical_p),
            *_rng_args(seed, offset, generator), generator, return_logprobs, return_valid)
    if out is None:
        tokens, accepted, logprobs, valid = torch.ops.syncfree.verify_draft(*args)
    else:
        accepted, logprobs, valid = torch.ops.syncfree.verify_draft_into(out, *args)
        tokens = out
    return (tokens, accepted) + ((logprobs,) if return_logprobs else ()) + ((valid,) if return_valid else ())
