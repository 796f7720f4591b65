import os
import pathlib

import pytest
import torch

import cuda_on_cpu
import syncfree  # noqa: F401

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TESTS = pathlib.Path(__file__).resolve().parent


def warper_edge_rows():
    """(logits [12, 3000], temperatures, per-row warper values): masked tokens, a +inf row, an
    all-masked row, a constant row, a mostly-NaN row, greedy rows (warp still warps), top_p and
    typical_p 0, top_k above the unmasked count. Shared by the CPU/CUDA parity tests."""
    b, v = 12, 3000
    x = (torch.randn(b, v, generator=torch.Generator().manual_seed(0)) * 3)
    x[:, ::97] = -float("inf")
    x[1, 5] = float("inf")
    x[2] = -float("inf")
    x[3] = 1.5
    x[4, :2990] = float("nan")
    temps = torch.full((b,), 0.9)
    temps[5:7] = 0
    config = dict(top_k=torch.tensor([0, 3, 5, 7, 20, 1, 50, 0, 0, 9000, 10, 100]),
                  top_p=torch.tensor([0.0, 0.9, 0.9, 0.9, 0.95, 1.0, 0.5, 0.9, 1.0, 0.8, 0.7, 0.99]),
                  min_p=torch.tensor([0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.05, 0.0, 0.3, 0.0, 0.01, 0.0]),
                  typical_p=torch.tensor([1.0, 0.9, 0.9, 0.0, 0.5, 0.9, 1.0, 0.0, 0.9, 0.9, 0.95, 0.8]))
    return x, temps, config


def pytest_ignore_collect(collection_path, config):
    """tests/vllm is a tier of its own, in a venv with vLLM (.ci/vllm_tier.sh, marker `vllm`): where
    the marker expression leaves `vllm` out (the main venv's tiers, pyproject addopts), the directory
    is not entered, so its conftest never shadows this one (a module named conftest, as spawned
    processes import it). Selected without vllm installed, its tests skip."""
    if collection_path.parent != TESTS or collection_path.name != "vllm":
        return None
    expression = config.getoption("markexpr", "") or ""
    if not expression:
        return None
    from _pytest.mark.expression import Expression
    return None if Expression.compile(expression).evaluate(lambda name, **_: name == "vllm") else True


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """The emulated tests and the compiled-code checks run last, and tests/cuda_on_cpu builds the
    emulated module and nvcc's report in the background meanwhile, on the cores the CPU tests leave
    idle (README "Tests")."""
    def late(item):
        return item.get_closest_marker("emulated") is not None or item.path.name == "test_compiled_code.py"

    if not any(item.get_closest_marker("emulated") for item in items):
        return
    items[:] = [item for item in items if not late(item)] + [item for item in items if late(item)]
    if not config.option.collectonly and not os.environ.get("SYNCFREE_EMULATION_MODULE"):
        cuda_on_cpu.build_in_background()
