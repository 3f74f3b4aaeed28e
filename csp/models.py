"""Model adapters: one small object per model family that hides how a checkpoint is loaded,
prompted and tokenized, so the engine and the benchmark runner never branch on the family."""
from __future__ import annotations

# Conversation templates keyed by name; each has exactly one ``{prompt}`` field.
# BOS is not part of a template: the tokenizer adds it, as Llama tokenizers do.
CHAT_TEMPLATES: dict[str, str] = {
    "llava_llama_2": (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to "
        "understand the visual content that the user provides, and assist the user with a "
        "variety of tasks using natural language.\n<</SYS>>\n\n{prompt} [/INST]"
    ),
}
