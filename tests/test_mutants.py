"""The CUDA execution layer can fail: planted kernel bugs are caught, and the emulated kernels
pass under AddressSanitizer + UndefinedBehaviorSanitizer and ThreadSanitizer.

Each case builds a variant or a mutant of the layer (tests/cuda_on_cpu/build.py caches
objects, so a mutant recompiles one file) and runs tests/test_emulated.py in a subprocess.
"""
import pytest

import cuda_on_cpu
from cuda_on_cpu import mutations

pytestmark = pytest.mark.emulated


@pytest.mark.parametrize("mutant", mutations.MUTANTS, ids=lambda m: m.name)
def test_a_planted_bug_is_caught(mutant):
    caught, output = mutations.run(mutant)
    if caught is None:
        pytest.skip(output)
    assert caught, f"mutant {mutant.name} was not caught:\n{output[-4000:]}"


@pytest.mark.parametrize("variant, selection", [
    ("asan", None),  # every quick case
    ("tsan", "tokens_logprobs_and_valid or warper_edge_rows or warper_candidates or shard_kernels "
             "or (processing_matches and 7x3000)"),
])
def test_the_emulated_kernels_under_sanitizers(variant, selection, monkeypatch):
    monkeypatch.setenv("SYNCFREE_EMULATION_QUICK", "1")
    args = [str(mutations.TESTS / "test_emulated.py"), "-q"] + (["-k", selection] if selection else [])
    result = cuda_on_cpu.run_variant(variant, args, timeout=1800)
    if result is None:
        pytest.skip(f"no {variant} runtime for this compiler")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and " passed" in output and "Sanitizer" not in output, output[-6000:]
