"""sapo-openai: Generation through the OpenAI, Deepseek and Anthropic APIs, and an LLM-judge reward, for sapo."""
