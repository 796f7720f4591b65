"""The engine set-up the vLLM tests share (a module of its own: two conftest.py modules share one name)."""

ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1"}
# The engine flags of the facts; chunked prefill off: vLLM 0.32.0 on CPU crashes on a seeded
# request whose prompt is split over several prefill steps.
ENGINE_ARGS = dict(dtype="float32", max_model_len=256, enforce_eager=True, max_num_seqs=8,
                   max_num_batched_tokens=256, enable_chunked_prefill=False,
                   structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})


def new_llm(model, **overrides):
    from vllm import LLM
    return LLM(model=model, tokenizer=model, **dict(ENGINE_ARGS, **overrides))


def sampler_class(llm):
    """The class of the sampler the engine's model runner built."""
    return llm.collective_rpc(lambda worker: type(worker.model_runner.sampler))[0]
