"""privet-llm: fine-tune local Hugging Face causal LMs (DeepSeek, Qwen2, Llama ...) with
LoRA, DoRA or in full, through Privet's engine. Components: ``llm.chat``, ``llm.text``,
``llm.causal_lm``. Importing this package imports neither torch nor transformers."""

__version__ = "0.1.0"
