"""The CUDA execution layer can fail: planted kernel bugs are caught, and the emulated kernels
pass under AddressSanitizer + UndefinedBehaviorSanitizer and ThreadSanitizer.

Two heavy tiers (README "Tests"), deselected by default: `pytest tests -m mutants` builds each
mutant of tests/cuda_on_cpu/mutations.py (tests/cuda_on_cpu/build.py caches objects, so a
mutant recompiles the one file it changes) and runs its tests/test_emulated.py selection in a
subprocess, as many mutants at a time as there are cores; `pytest tests -m sanitizers` runs the
quick emulated cases over the sanitizer builds.
The quick tier checks the mutants' text and selections only, so a kernel edit that orphans a
mutant fails in seconds.
"""
import os
import re
import subprocess
import sys

import pytest
from _pytest.mark.expression import Expression

import cuda_on_cpu
from cuda_on_cpu import mutations


@pytest.fixture(scope="module")
def outcomes(request):
    """{name: (caught, output)} of the selected mutants, run as many at a time as there are cores
    (tests/cuda_on_cpu/mutations.py: run_all)."""
    chosen = {item.callspec.params["mutant"].name for item in request.session.items
              if getattr(item, "originalname", "") == "test_a_planted_bug_is_caught"}
    return mutations.run_all([m for m in mutations.MUTANTS if m.name in chosen and not m.pending])


@pytest.mark.mutants
@pytest.mark.parametrize("mutant", mutations.MUTANTS, ids=lambda m: m.name)
def test_a_planted_bug_is_caught(mutant, request):
    if mutant.pending:
        pytest.skip(f"pending: {mutant.pending}")
    caught, output = request.getfixturevalue("outcomes")[mutant.name]
    if caught is None:
        pytest.skip(output)
    assert caught, f"mutant {mutant.name} was not caught:\n{output[-4000:]}"


@pytest.mark.mutants
def test_the_unmutated_sources_pass_as_a_mutant_is_built():
    passed, output = mutations.run_control()
    assert passed, f"the unmutated sources fail the mutants' selections:\n{output[-4000:]}"


@pytest.mark.sanitizers
@pytest.mark.parametrize("variant, selection", [
    ("asan", None),  # every quick case
    # ThreadSanitizer is ~40 times slower than a plain run: a case of each kernel's synchronisation
    # (the races it finds do not depend on the element type): the race with split rows, the warpers'
    # passes where candidates fit and overflow, the shard kernels with and without processing, the
    # processing and logprob stage, a tree's positions and walk. (The warpers' edge rows, 85 s here,
    # meet the same barriers.)
    ("tsan", "(tokens_logprobs_and_valid and float32) or (warper_candidates and per_row) "
             "or (shard_kernels and (race or processing or overflowing)) or (processing_matches and 7x3000) "
             "or verify_tree_with_processing"),
])
def test_the_emulated_kernels_under_sanitizers(variant, selection, monkeypatch):
    monkeypatch.setenv("SYNCFREE_EMULATION_QUICK", "1")
    args = [str(mutations.TESTS / "test_emulated.py"), "-q"] + (["-k", selection] if selection else [])
    result = cuda_on_cpu.run_variant(variant, args, timeout=1800)
    if result is None:
        pytest.skip(f"no {variant} runtime for this compiler")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and " passed" in output and "Sanitizer" not in output, output[-6000:]


# ---------------------------------------------------------------------------
# Quick tier: every mutant still applies to csrc/ as it is, and selects emulated tests


def test_mutant_names_are_unique():
    names = [m.name for m in mutations.MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", mutations.MUTANTS, ids=lambda m: m.name)
def test_the_mutant_text_occurs_exactly_once(mutant):
    text = (mutations.ROOT / "csrc" / mutant.file).read_text()
    assert mutant.old != mutant.new
    assert text.count(mutant.old) == 1, (
        f"mutant {mutant.name}: its text occurs {text.count(mutant.old)} times in csrc/{mutant.file}; "
        "retarget it (tests/cuda_on_cpu/mutations.py) to the code as it is now")


def collected_emulated_tests():
    """{quick: node ids of tests/test_emulated.py as a mutant's run collects them}, both at once."""
    runs = {quick: subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                                     str(mutations.TESTS / "test_emulated.py")],
                                    cwd=mutations.TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, SYNCFREE_EMULATION_QUICK="1" if quick else "0"))
            for quick in (True, False)}
    ids = {}
    for quick, run in runs.items():
        out = run.communicate(timeout=300)[0]
        assert run.returncode == 0, out[-3000:]
        ids[quick] = [line for line in out.splitlines() if "::" in line]
    return ids


def selects(expression, node_id):
    """Whether `pytest -k expression` selects the test (by the names in its node id)."""
    names = [n.lower() for n in re.split(r"::|\[|\]|/", node_id) if n]
    return Expression.compile(expression).evaluate(
        lambda word, **_: any(word.lower() in name for name in names))


def test_every_mutant_selects_emulated_tests():
    ids = collected_emulated_tests()
    missing = [m.name for m in mutations.MUTANTS if not any(selects(m.tests, i) for i in ids[m.quick])]
    assert not missing, f"mutants whose -k expression selects no test of test_emulated.py: {missing}"
