"""Prompt data: Eurus-2-RL-Data records -> validated, routed, chat-templated token ids.

schema.py (one record, verifier routing), loader.py (files -> PromptDataset),
stream.py (deterministic resumable batches), sft.py (warm-up pairs),
tiny_assets.py (the tiny CPU example's task, tokenizer and model config).
"""
