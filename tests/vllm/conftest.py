"""The vLLM tier (marker `vllm`, its own venv: .ci/vllm_tier.sh): a real engine on a tiny random model.

Engines run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~3 s a start instead of 20-40 s).
vLLM loads its general plugins once per process, at the first engine: `llm_off` starts first, with
SYNCFREE_VLLM unset, so the entry point runs and must leave vLLM alone; `llm_on` then sets the
switch and calls the entry point's `register` again, as vLLM would have in a process started with it.
"""
import os

import pytest

from engine_setup import ENGINE_ENV, new_llm


@pytest.fixture(scope="session")
def engine_env():
    saved = {k: os.environ.get(k) for k in ENGINE_ENV}
    os.environ.update(ENGINE_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny model's directory: $SYNCFREE_VLLM_MODEL (made there if missing) or a fresh temp dir."""
    from tiny_model import make
    return make(os.environ.get("SYNCFREE_VLLM_MODEL") or str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def llm_off(engine_env, tiny_model):
    """An engine started without the switch: vLLM's own sampler."""
    from syncfree.integrations import vllm as plugin
    if os.environ.pop("SYNCFREE_VLLM", None) is not None or plugin.STATS["enabled"]:
        pytest.fail("SYNCFREE_VLLM was set before the switch-off engine started; unset it to run this tier")
    llm = new_llm(tiny_model)
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def llm_on(llm_off, tiny_model):
    """An engine started with SYNCFREE_VLLM=1 (after `llm_off`, so that one starts without it)."""
    from syncfree.integrations import vllm as plugin
    os.environ["SYNCFREE_VLLM"] = "1"
    plugin.register()
    llm = new_llm(tiny_model)
    yield llm
    llm.llm_engine.engine_core.shutdown()
    os.environ.pop("SYNCFREE_VLLM", None)
