"""Every registered method (configs/method/*.yaml) on the tiny LLaVA, the tiny InternVL and the
tiny twins of MobileVLM-V2 and InternVL-Chat-1.0 (loaded from their authors' layout),
through the engine: it runs, keeping everything reproduces the full cache token for token, and
a 0.2 budget really shrinks the cache by what the method's `budget_rule` promises. A new method
is tested here by being registered."""
from __future__ import annotations


import pytest
from PIL import Image

from csp.engine.decode import greedy_generate
from csp.engine.method import FullCache
from csp.models.adapters import ModelAdapter
from csp.engine.registry import build_method, method_names

METHODS = method_names()
PRUNING = [n for n in METHODS if not isinstance(build_method(n), FullCache)]
NEW_TOKENS = 4


def two_prompts(adapter: ModelAdapter):
    """A left-padded batch: one image with a short question, two images with a longer one."""
    images = [
        [Image.new("RGB", (40, 30), (200, 30, 30))],
        [Image.new("RGB", (30, 30), (0, 90, 200)), Image.new("RGB", (50, 20), (10, 200, 10))],
    ]
    prompts = [
        adapter.format_prompt(f"Look at {adapter.image_token} and say what colour it is."),
        adapter.format_prompt(f"Compare {adapter.image_token} with {adapter.image_token} please, in detail."),
    ]
    return adapter.encode(prompts, images)


@pytest.fixture(scope="module", params=["tiny_llava", "tiny_internvl", "tiny_mobilevlm", "tiny_internvl_chat"])
def model_and_full(request):
    adapter = request.getfixturevalue(request.param)
    inputs = two_prompts(adapter)
    full = greedy_generate(adapter, inputs, None, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return adapter, inputs, full


def test_the_registry_holds_every_method() -> None:
    assert {"full", "csp", "h2o", "snapkv", "reco", "lookm-tp-p", "random", "streamingllm"} <= set(METHODS)
    assert len(PRUNING) == len(METHODS) - 1


@pytest.mark.parametrize("name", METHODS)
def test_keep_everything_equals_full(model_and_full, name: str) -> None:
    adapter, inputs, full = model_and_full
    out = greedy_generate(adapter, inputs, build_method(name, budget=1.0),
                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    assert out.tokens == full.tokens
    assert out.kv_bytes == full.kv_bytes
    assert out.kept_tokens == [float(n) for n in full.prompt_lengths]


@pytest.mark.parametrize("name", PRUNING)
def test_budget_shrinks_the_cache(model_and_full, name: str) -> None:
    adapter, inputs, full = model_and_full
    method = build_method(name, budget=0.2)
    rule = method.budget_rule
    out = greedy_generate(adapter, inputs, method, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    assert [len(t) for t in out.tokens] == [NEW_TOKENS, NEW_TOKENS]
    assert out.prompt_lengths == full.prompt_lengths
    # every layer is padded to the widest, so a method that keeps some layer whole (FastV's
    # first K) holds as many bytes as the full cache
    assert out.kv_bytes <= full.kv_bytes if rule == "own" else out.kv_bytes < full.kv_bytes
    for length, kept in zip(full.prompt_lengths, out.kept_tokens):
        budget = method.split_budget(length)
        if rule in ("exact", "spread"):  # hh = int(0.1 L) + R = int(0.1 L): per layer and head, or on average
            assert kept == budget.total == 2 * int(0.1 * length), rule
        elif rule == "at_least":  # e.g. every text token kept: at least the budget, less than the prompt
            assert budget.total <= kept < length
        elif rule == "at_most":
            assert 0 < kept <= budget.total
        else:
            assert rule == "own" and 0 < kept < length
    # the cache holds, per layer, the longest sample's kept entries (the batch is left-padded),
    # and every layer as many slots as the widest layer
    layers = len(adapter.attention_modules())
    cfg = adapter.model.config.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_entry = 2 * layers * cfg.num_key_value_heads * head_dim * 4  # keys + values, float32
    widest = per_entry * len(inputs["input_ids"]) * int(max(out.kept_tokens))
    if rule in ("exact", "at_least"):  # the same count in every layer and head
        assert out.kv_bytes == widest
    else:
        assert out.kv_bytes >= widest
