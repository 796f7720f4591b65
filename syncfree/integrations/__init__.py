"""Engine integrations: syncfree as the sampler of a serving engine (vllm: README "Using syncfree in vLLM")."""
