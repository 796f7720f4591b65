"""syncfree: next-token sampling for LLM decode loops without a GPU->CPU sync.

See README.md for the API, the semantics and the RNG contract.
"""
from ._native import _C
from .chain import StaticWarper, WarperChain
from .choosers import HeterogeneousNextTokenChooser, NextTokenChooser
from .params import SampleOutput, SamplingParams, TreeOutput, VerifyOutput
from .sampling import sample, sample_probs, verify_draft, verify_tree, warp

__all__ = ["sample", "sample_probs", "verify_draft", "verify_tree", "warp", "SamplingParams", "SampleOutput",
           "VerifyOutput", "TreeOutput",
           "WarperChain", "StaticWarper", "NextTokenChooser", "HeterogeneousNextTokenChooser"]
__version__ = "0.1.0"
