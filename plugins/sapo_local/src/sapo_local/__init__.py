"""sapo-local: Local Hugging Face transformers generation and the GRPO learner for sapo."""
