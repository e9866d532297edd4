"""sapo-vllm: vLLM and SGLang server-backed generation with weight sync, for sapo."""
