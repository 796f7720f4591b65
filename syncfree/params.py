"""syncfree.SamplingParams: the sampling parameters of every entry point, as one object.

The fields are the extension's one field list (Note [One field list] in
csrc/sampling_args.h), checked against it at import; the ops take them as two
lists in that order. Values are checked in C++ (csrc/checks.cpp), before any
kernel runs; here only their Python types, so that tensors are never read.
"""
import dataclasses
from typing import NamedTuple, Optional, Union

import torch

from ._native import _C

Number = Union[int, float]
_INT64_MAX = (1 << 63) - 1


@dataclasses.dataclass(frozen=True, eq=False)
class SamplingParams:
    """What to sample from (README "Parameters"): temperature, the warpers and the processing.

    Each of the first eight fields is a number (the whole batch) or a [B] tensor (one value per
    row); the last five are tensors or None. Defaults change nothing. `sample`, `warp`,
    `verify_draft`, `distributed.sample`, `WarperChain` and the choosers take it; an entry point
    that cannot honour a field raises a ValueError naming it.
    """
    temperature: Union[Number, torch.Tensor] = 1.0
    top_k: Union[int, torch.Tensor] = 0
    top_p: Union[Number, torch.Tensor] = 1.0
    min_p: Union[Number, torch.Tensor] = 0.0
    typical_p: Union[Number, torch.Tensor] = 1.0
    repetition_penalty: Union[Number, torch.Tensor] = 1.0
    frequency_penalty: Union[Number, torch.Tensor] = 0.0
    presence_penalty: Union[Number, torch.Tensor] = 0.0
    output_tokens: Optional[torch.Tensor] = None
    prompt_tokens: Optional[torch.Tensor] = None
    bias_tokens: Optional[torch.Tensor] = None
    bias_values: Optional[torch.Tensor] = None
    allowed_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        for name, kind, _, _ in FIELDS:
            _check_type(name, kind, getattr(self, name))

    def replace(self, **changes) -> "SamplingParams":
        """A copy with `changes` applied (the object itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def given(self, group: Optional[str] = None):
        """Names of the fields that may change something (a tensor, or a number other than the
        identity), in order; `group` "warper" or "processing" keeps that group's only."""
        return [name for name, _, identity, g in FIELDS
                if (group is None or g == group) and _differs(getattr(self, name), identity)]

    def op_args(self):
        """(params, param_values): the two lists every op takes, in the field list's order."""
        tensors, values = [], []
        for name, kind, identity, _ in FIELDS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) or kind == "tensor":
                tensors.append(value)
                values.append(float(identity or 0.0))
            else:
                tensors.append(None)
                # Past int64 only the sign matters: any top_k >= V keeps all (checked in C++).
                values.append(float(max(min(value, _INT64_MAX), -_INT64_MAX - 1) if kind == "int" else value))
        return tensors, values


def _differs(value, identity):
    return isinstance(value, torch.Tensor) or (value is not None and value != identity)


def _check_type(name, kind, value):
    if kind == "tensor":
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or None, got {type(value).__name__}")
    elif not isinstance(value, torch.Tensor):
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name}: expected an int or an integer tensor [B], got {type(value).__name__}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected a number or a tensor with one value per row, "
                            f"got {type(value).__name__}")


FIELDS = tuple(tuple(f) for f in _C.sampling_fields())
if [(f.name, f.default) for f in dataclasses.fields(SamplingParams)] != [(f[0], f[2]) for f in FIELDS]:
    raise ImportError("syncfree.SamplingParams does not match the extension's field list "
                      f"({[f[0] for f in FIELDS]}); rebuild syncfree")
KEYWORDS = tuple(f[0] for f in FIELDS)


def resolve(params, keywords, where):
    """The call's SamplingParams: `params`, or (the keyword form) one built from `keywords`.

    Keywords left at their identity may accompany `params`; any other is an error naming it."""
    if params is None:
        return SamplingParams(**keywords)
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params: expected a syncfree.SamplingParams, got {type(params).__name__}")
    identity = {f[0]: f[2] for f in FIELDS}
    for name, value in keywords.items():
        if _differs(value, identity[name]):
            raise TypeError(f"{name}: {where} got both params and the keyword {name}; pass it in one place")
    return params


class SampleOutput(NamedTuple):
    """What `sample` returns for a SamplingParams: fields not asked for are None."""
    tokens: torch.Tensor
    logprobs: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
    top_ids: Optional[torch.Tensor] = None
    top_logprobs: Optional[torch.Tensor] = None
    rank: Optional[torch.Tensor] = None


class VerifyOutput(NamedTuple):
    """What `verify_draft` returns for a SamplingParams: fields not asked for are None."""
    tokens: torch.Tensor
    num_accepted: torch.Tensor
    logprobs: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None


class TreeOutput(NamedTuple):
    """What `verify_tree` returns for a SamplingParams: fields not asked for are None."""
    tokens: torch.Tensor
    path: torch.Tensor
    num_accepted: torch.Tensor
    logprobs: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
