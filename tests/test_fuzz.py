"""The fuzz suite: random calls of the public API against the invariants of tests/fuzz_cases.py.

Each batch runs in a subprocess with a timeout, so a crash or a hang is reported with the
case that caused it. SYNCFREE_FUZZ_EXAMPLES (default 200) sets the cases per CPU batch; the
emulated CUDA batches and the two-rank Gloo batch run a quarter of that, the chooser batch and
the simulated-ranks batch (syncfree.distributed over 1 to 6 ranks in one process) half. CI's
budget: 1200 CPU cases, 100 emulated, 100 chooser, 100 simulated-ranks and 50 two-rank ones;
verify_draft and verify_tree get 100 CPU cases and 25 emulated ones each.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fuzz_cases import check

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = int(os.environ.get("SYNCFREE_FUZZ_EXAMPLES", "200"))


def run_batch(batch, examples, mode, timeout):
    args = [sys.executable, str(HERE / "fuzz_cases.py"), str(batch), str(examples)] + \
        [f"--{m}" for m in (mode.split() if mode else [])]
    try:
        result = subprocess.run(args, cwd=HERE, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        cases = [line for line in out.splitlines() if line.startswith("case:")]
        pytest.fail(f"fuzz batch {batch} hung for {timeout} s; last {cases[-1] if cases else 'no case'}")
    if result.returncode != 0:
        lines = result.stdout.splitlines()
        cases = [line for line in lines if line.startswith("case:")]
        how = f"died of signal {-result.returncode}" if result.returncode < 0 else "failed"
        report = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                           if not line.startswith("case:"))[-6000:]
        pytest.fail(f"fuzz batch {batch} {how}; last {cases[-1] if cases else 'no case'}\n{report}")
    assert f"{examples} cases passed" in result.stdout


@pytest.mark.parametrize("batch", range(6))
def test_fuzz_the_cpu_path(batch):
    run_batch(batch, EXAMPLES, None, timeout=600)


@pytest.mark.emulated
@pytest.mark.parametrize("batch", range(2))
def test_fuzz_the_emulated_cuda_path(batch):
    run_batch(100 + batch, max(EXAMPLES // 4, 1), "emulated", timeout=900)


def test_fuzz_the_choosers():
    run_batch(200, EXAMPLES // 2, "choosers", timeout=600)


def test_fuzz_two_gloo_ranks():
    run_batch(300, max(EXAMPLES // 4, 1), "distributed", timeout=600)


def test_fuzz_simulated_ranks():
    run_batch(400, max(EXAMPLES // 2, 1), "simulated", timeout=600)


def test_fuzz_verify_draft():
    run_batch(500, max(EXAMPLES // 2, 1), "verify", timeout=600)


@pytest.mark.emulated
def test_fuzz_verify_draft_on_the_emulated_cuda_path():
    run_batch(600, max(EXAMPLES // 8, 1), "verify --emulated", timeout=900)


def test_fuzz_verify_tree():
    run_batch(700, max(EXAMPLES // 2, 1), "tree", timeout=600)


@pytest.mark.emulated
def test_fuzz_verify_tree_on_the_emulated_cuda_path():
    run_batch(800, max(EXAMPLES // 8, 1), "tree --emulated", timeout=900)


def test_the_invariants_catch_bad_results():
    """The oracle can fail: out-of-range ids, masked or warper-removed tokens, a wrong valid flag."""
    x = torch.tensor([[0.0, 5.0, -float("inf"), 1.0], [-float("inf")] * 4])
    kwargs = dict(temperature=1.0, top_k=2, seed=1, return_valid=True)
    check("sample", x, kwargs, (torch.tensor([1, 0]), torch.tensor([True, False])))  # a good result passes
    for tokens, valid in (([4, 0], [True, False]),  # id out of range
                          ([2, 0], [True, False]),  # a masked token
                          ([0, 0], [True, False]),  # removed by top-k (keeps 5.0 and 1.0)
                          ([1, 0], [True, True]),  # a degenerate row said valid
                          ([1, 0], [False, False]),  # a row with tokens said degenerate
                          ([1, 3], [True, False])):  # a degenerate row's token is not 0
        with pytest.raises(AssertionError):
            check("sample", x, kwargs, (torch.tensor(tokens), torch.tensor(valid)))
