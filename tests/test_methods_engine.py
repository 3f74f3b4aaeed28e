"""Methods that need more from the engine than one layer's KV, on the tiny LLaVA: the model's
layer count (PyramidKV's schedule) and every layer at once (cross-layer methods)."""
from __future__ import annotations

import torch
from PIL import Image

from baselines.pyramidkv import pyramid_budgets
from csp.generate import prefill
from csp.registry import build_method


def one_prompt(adapter):
    image = [Image.new("RGB", (40, 30), (200, 30, 30))]
    prompt = adapter.format_prompt(f"Look at {adapter.image_token} and say what colour it is, in detail.")
    return adapter.encode([prompt], [image])


def test_pyramidkv_layers_follow_the_schedule_of_the_whole_model(tiny_llava) -> None:
    inputs = one_prompt(tiny_llava)
    method = build_method("pyramidkv", budget=0.4, recent_ratio=0.1)
    with torch.inference_mode():
        _, _, layout = prefill(tiny_llava, inputs, method)
    length = int(inputs["attention_mask"].sum())
    layers = len(tiny_llava.attention_modules())
    b = method.split_budget(length)
    expected = [hh + b.recent for hh in pyramid_budgets(b.selected, layers, method.beta, length - b.recent)]
    assert layers > 1 and expected[0] > expected[-1]  # the schedule really slopes on this model
    assert layout.kept[:, 0].tolist() == expected
    assert layout.ragged  # layers keep different counts: per-layer masks while decoding
