"""The engine on the tiny models: pruning path, positions, batching, bookkeeping (fp32, CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from csp.cross_self import CrossSelfPruner
from csp.engine.decode import greedy_generate, prefill
from csp.engine.method import FullCache
from csp.models.adapters import load_adapter
from masked_eviction import MaskedEviction

NEW = 12


def images(n: int, seed: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pixels = (torch.rand(24, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(pixels))
    return out


def prompt(adapter, n_images: int, words: int) -> str:
    body = " ".join(["the old lighthouse keeper counted ships"] * words)
    marks = "\n".join([adapter.image_token] * n_images)
    return adapter.format_prompt(f"{marks}\n{body} What happened next?")


CASES = [(2, 6), (1, 1), (3, 3)]  # (images, repeats of the text): different lengths and image counts


def encode(adapter, cases=CASES):
    return adapter.encode([prompt(adapter, n, w) for n, w in cases], [images(n, seed=100 * n + w) for n, w in cases])


def run(adapter, method, cases=CASES, **kw):
    return greedy_generate(adapter, encode(adapter, cases), method, max_new_tokens=NEW, **kw)


def csp(**kw) -> CrossSelfPruner:
    return CrossSelfPruner(cross_ratio=kw.pop("cross_ratio", 0.5), bias=kw.pop("bias", 1.0), **kw)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_internvl"])
def test_keep_everything_equals_full_and_transformers_generate(fixture, request):
    adapter = request.getfixturevalue(fixture)
    one = [CASES[0]]
    inputs = encode(adapter, one)
    full = greedy_generate(adapter, inputs, FullCache(), max_new_tokens=NEW)
    kept = greedy_generate(adapter, inputs, csp(budget=1.0), max_new_tokens=NEW)
    with torch.inference_mode():
        ref = adapter.model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=1, do_sample=False)
    ref = ref[0, inputs["input_ids"].shape[1] :].tolist()
    ref = ref[: next((i for i, t in enumerate(ref) if t in adapter.eos_token_ids), len(ref))]
    assert len(full.tokens[0]) > 0
    assert kept.tokens == full.tokens == [ref]
    assert kept.kv_bytes == full.kv_bytes  # everything kept, through the gather and rewrite


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_internvl"])
@pytest.mark.parametrize("combine", ["union", "intersection"])
def test_pruning_equals_masking(fixture, combine, request):
    """Dropping the evicted entries gives the same generation as keeping the full cache and
    masking exactly those entries out of attention: so kept entries, slots and the decode
    positions (true prompt length + step) are all right."""
    adapter = request.getfixturevalue(fixture)
    method = csp(budget=0.3, combine=combine, cross_ratio=0.3)
    dropped = run(adapter, method)
    masked = run(adapter, MaskedEviction(inner=method))
    full = run(adapter, FullCache())
    assert dropped.tokens == masked.tokens
    assert dropped.kv_bytes < masked.kv_bytes == full.kv_bytes
    assert dropped.tokens != full.tokens  # the pruning really changed what the model saw


def test_wrong_positions_would_be_caught(tiny_llava, monkeypatch):
    """The masking test is sensitive to positions: decoding from the pruned length differs."""
    import csp.engine.decode as gen

    method = csp(budget=0.3, combine="union")
    right = run(tiny_llava, method)
    original = gen.decode_step

    def from_cache_length(model, tokens, cache, mask, positions):
        return original(model, tokens, cache, mask, torch.full_like(positions, cache.get_seq_length()))

    monkeypatch.setattr(gen, "decode_step", from_cache_length)
    assert run(tiny_llava, method).tokens != right.tokens


@pytest.mark.parametrize("method", [FullCache(), csp(budget=0.2), csp(budget=0.3, combine="intersection")],
                         ids=["full", "csp-concat", "csp-intersection"])
def test_batch_equals_each_prompt_alone(tiny_llava, method):
    batched = run(tiny_llava, method)
    alone = [run(tiny_llava, method, cases=[case]).tokens[0] for case in CASES]
    assert batched.tokens == alone


def test_kept_cache_per_layer_and_head_is_the_budget(tiny_llava):
    inputs = encode(tiny_llava, [CASES[0]])
    length = int(inputs["attention_mask"].sum())
    hh, recent = int(0.1 * length), int(0.1 * length)
    with torch.inference_mode():
        _, cache, layout = prefill(tiny_llava, inputs, csp(budget=0.2, combine="union"))
    assert len(cache.layers) == len(tiny_llava.attention_modules())
    for layer in cache.layers:
        assert layer.keys.shape[2] == layer.values.shape[2] == hh + recent
    assert layout.prompt_lengths.tolist() == [length]
    assert not layout.ragged


def test_samples_of_a_batch_keep_their_own_budget(tiny_llava):
    inputs = encode(tiny_llava)
    lengths = inputs["attention_mask"].sum(-1).tolist()
    with torch.inference_mode():
        _, cache, layout = prefill(tiny_llava, inputs, csp(budget=0.2, combine="union"))
    expected = [int(0.1 * n) * 2 for n in lengths]
    assert layout.slot_mask.sum(-1).tolist() == expected
    assert cache.layers[0].keys.shape[2] == max(expected)
    assert layout.kept.tolist()[0] == [float(e) for e in expected]


def test_pruned_cache_is_smaller_by_the_budget(tiny_llava):
    one = [CASES[0]]
    full = run(tiny_llava, FullCache(), cases=one)
    pruned = run(tiny_llava, csp(budget=0.2, combine="union"), cases=one)
    ratio = pruned.kv_bytes / full.kv_bytes
    assert abs(ratio - 0.2) < 0.02


def test_concat_stores_duplicates_as_entries(tiny_llava):
    one = [CASES[0]]
    concat = run(tiny_llava, csp(budget=0.2, combine="concat"), cases=one)
    union = run(tiny_llava, csp(budget=0.2, combine="union"), cases=one)
    # both hold k_self + k_cross + R entries per head: concat counts a duplicate twice
    assert concat.kv_bytes == union.kv_bytes


def test_per_sample_stop_at_eos_and_min_new_tokens(tiny_llava):
    base = run(tiny_llava, FullCache())
    first, third = base.tokens[0][0], base.tokens[0][2]
    stop_third = dataclasses.replace(tiny_llava, eos_token_ids=[third])
    out = run(stop_third, FullCache())
    assert out.tokens[0] == base.tokens[0][:2]  # stopped before its EOS, EOS not returned
    for b, toks in enumerate(base.tokens[1:], start=1):  # the others go on until their own EOS
        cut = toks.index(third) if third in toks else len(toks)
        assert out.tokens[b] == toks[:cut]
    # min_new_tokens = 1: the first token can never be EOS
    stop_first = dataclasses.replace(tiny_llava, eos_token_ids=[first])
    assert len(run(stop_first, FullCache(), cases=[CASES[0]]).tokens[0]) >= 1
    assert run(stop_first, FullCache(), cases=[CASES[0]], min_new_tokens=0).tokens[0] == []


def test_hooks_are_gone_after_generation(tiny_llava):
    run(tiny_llava, csp(budget=0.3, combine="intersection"))
    for module in tiny_llava.attention_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_eager_and_sdpa_prune_alike(tiny_llava_path):
    method = csp(budget=0.2)
    outs = []
    for impl in ("eager", "sdpa"):
        adapter = load_adapter("llava", str(tiny_llava_path), attn_implementation=impl)
        outs.append(run(adapter, method).tokens)
    intersect = csp(budget=0.3, combine="intersection")
    eager = load_adapter("llava", str(tiny_llava_path), attn_implementation="eager")
    assert outs[0] == outs[1]
    assert run(eager, intersect).tokens == run(eager, MaskedEviction(inner=intersect)).tokens


@pytest.mark.parametrize("method", [FullCache(), csp(budget=0.2), csp(budget=0.3, combine="intersection")],
                         ids=["full", "csp-concat", "csp-intersection"])
def test_prompts_prefilled_alone_then_decoded_together_equal_the_batch(tiny_llava, method):
    batched = run(tiny_llava, method)
    singles = [tiny_llava.encode([prompt(tiny_llava, n, w)], [images(n, seed=100 * n + w)]) for n, w in CASES]
    each = greedy_generate(tiny_llava, singles, method, max_new_tokens=NEW)
    assert each.tokens == batched.tokens
    assert each.prompt_lengths == batched.prompt_lengths
    assert each.kept_tokens == batched.kept_tokens
    assert each.kv_bytes == batched.kv_bytes


def test_roomy_layer_appends_like_concatenation_and_grows():
    from csp.engine.hooks import RoomyLayer

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = RoomyLayer(keys, values)
    expect_k, expect_v = keys, values
    for step in range(RoomyLayer.MIN_ROOM + 10):  # past the first capacity
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        out_k, out_v = layer.update(k, v, 0)
        expect_k, expect_v = torch.cat([expect_k, k], dim=2), torch.cat([expect_v, v], dim=2)
        assert torch.equal(out_k, expect_k) and torch.equal(out_v, expect_v)
    assert layer.get_seq_length() == 5 + RoomyLayer.MIN_ROOM + 10
