"""Methods that need more from the engine than one layer's KV, on the tiny LLaVA: the model's
layer count (PyramidKV's schedule) and every layer at once (cross-layer methods)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import ClassVar

import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from baselines.pyramidkv import pyramid_budgets
from baselines.streamingllm import StreamingLLM
from csp.engine.decode import greedy_generate, prefill
from csp.engine.method import KVPruner, LayerKV, Selection
from csp.models.adapters import language_model, load_adapter
from csp.engine.registry import build_method
from csp.engine.select import apportion
from masked_eviction import MaskedEviction
from test_baselines_e2e import two_prompts


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


# ---------------------------------------------------------------- cross-layer methods
@dataclass
class RecentOnlyAcrossLayers(KVPruner):
    """A cross-layer method that keeps what StreamingLLM without sinks keeps, recording what
    the engine showed it: queries during each layer's prefill, then all layers at once."""

    calls: list = dataclass_field(default_factory=list)
    cross_layer: ClassVar[bool] = True

    def observe(self, kv: LayerKV) -> tuple[int, int]:
        return kv.layer_idx, kv.queries(1).shape[1]  # queries exist now, not later

    def select_layers(self, kvs: list[LayerKV], observations: list) -> list[Selection]:
        self.calls.append([kv.layer_idx for kv in kvs])
        assert observations == [(kv.layer_idx, 1) for kv in kvs]
        with pytest.raises(RuntimeError, match="during its prefill"):
            kvs[0].queries(1)
        total = self.split_budget(kvs[0].length).total
        return [Selection(index=torch.arange(kv.length - total, kv.length).expand(kv.kv_heads, -1)) for kv in kvs]


@pytest.mark.parametrize("evict", ["drop", "mask"])
def test_cross_layer_methods_select_every_layer_after_the_prefill(tiny_llava, evict) -> None:
    inputs = two_prompts(tiny_llava)
    layers = len(tiny_llava.attention_modules())
    deferred = RecentOnlyAcrossLayers(budget=0.3, recent_ratio=0.1)
    wrap = (lambda m: m) if evict == "drop" else (lambda m: MaskedEviction(inner=m))
    out = greedy_generate(tiny_llava, inputs, wrap(deferred), max_new_tokens=4, min_new_tokens=4)
    # one call per sample of the batch, each with every layer in order
    assert deferred.calls == [list(range(layers))] * 2
    same = greedy_generate(tiny_llava, inputs, wrap(StreamingLLM(sinks=0, budget=0.3, recent_ratio=0.1)),
                           max_new_tokens=4, min_new_tokens=4)
    assert out.tokens == same.tokens and out.kv_bytes == same.kv_bytes and out.kept_tokens == same.kept_tokens
    full = greedy_generate(tiny_llava, inputs, None, max_new_tokens=4, min_new_tokens=4)
    if evict == "drop":
        assert out.kv_bytes < full.kv_bytes


@pytest.fixture(scope="module")
def eager_llava(tiny_llava_path):
    return load_adapter("llava", str(tiny_llava_path), dtype="float32", device="cpu", attn_implementation="eager")


def test_vlcache_keeps_what_the_models_own_attention_says(eager_llava) -> None:
    """Per layer, the post-vision attention of the model itself (output_attentions) gives the
    scores, the sparsity and so the budget; the engine's mask-mode slots must be exactly the
    top hh_l of those scores plus the last R."""
    adapter = eager_llava
    image = [Image.new("RGB", (40, 30), (10, 120, 200))]
    text = adapter.format_prompt(f"{adapter.image_token}\nDescribe the picture in words, with every detail you see.")
    inputs = adapter.encode([text], [image])
    # the random tiny model attends almost uniformly: no weight is under 1% of its row's
    # maximum, so a higher cut makes the layers' sparsities differ
    method = dataclasses.replace(build_method("vlcache", budget=0.4, recent_ratio=0.1), sparsity_threshold=0.3)
    p = method.sparsity_threshold
    with torch.inference_mode():
        attentions = adapter.model(**inputs, output_attentions=True).attentions
        _, _, layout = prefill(adapter, inputs, MaskedEviction(inner=method))
    visual = inputs["input_ids"][0] == adapter.image_token_id
    length = visual.shape[0]
    first_post = int(visual.nonzero()[-1]) + 1
    assert 1 < first_post < length - 1  # a real question after the image
    b = method.split_budget(length)
    scores, densities = [], []
    for att in attentions:  # (1, H, L, L), rows of queries
        rows = att[0, :, first_post:, :]  # post-vision queries
        scores.append(rows.sum(dim=1))  # (H, L); one query head per KV head in LLaVA
        visible = torch.ones(length, length, dtype=torch.bool).tril()[first_post:]
        zero = (rows < p * rows.amax(dim=-1, keepdim=True)) & visible
        densities.append(1 - float(zero.sum()) / float(visible.sum() * rows.shape[0]))
    total = len(attentions) * b.selected
    hh = apportion(densities, total, length - b.recent)
    assert sum(hh) == total and len(set(hh)) > 1  # the layers really differ on this model
    assert layout.ragged
    for layer, (s, n) in enumerate(zip(scores, hh)):
        slots = layout.layer_masks[layer][0]  # (Hkv, L): masked eviction keeps prompt positions
        for head in range(s.shape[0]):
            top = s[head, : length - b.recent].topk(n).indices.tolist()
            expected = sorted(top) + list(range(length - b.recent, length))
            assert slots[head].nonzero().squeeze(-1).tolist() == expected, (layer, head)


# ---------------------------------------------------------------- prefill masking (FastV)
@pytest.mark.parametrize("rank", ["last", "all"])
def test_fastv_prefill_equals_dropping_the_tokens_after_layer_k(tiny_llava, eager_llava, rank) -> None:
    """FastV's own formulation as the truth: run layers K.. on the sequence WITHOUT the dropped
    image tokens (chosen from the model's own layer K-1 attention: the last token's row, as the
    authors' code reads it, or every row's sum), the others at their true positions. The
    engine's masked prefill must give the same logits, and its caches must hold every token in
    layers < K and exactly the truth's entries in layers >= K."""
    image = [Image.new("RGB", (40, 30), (10, 120, 200))]
    text = tiny_llava.format_prompt(f"{tiny_llava.image_token}\nDescribe the picture in words, with every detail.")
    inputs = tiny_llava.encode([text], [image])
    method = dataclasses.replace(build_method("fastv"), rank=rank)
    k = method.layer
    visual = inputs["input_ids"][0] == tiny_llava.image_token_id
    length = visual.shape[0]
    with torch.inference_mode():
        att = eager_llava.model(**inputs, output_attentions=True).attentions[k - 1][0]  # (H, L, L)
        # attention each key receives, averaged over heads: from the last token, or from all
        received = (att[:, -1] if rank == "last" else att.sum(dim=1)).mean(dim=0)
        image_pos = visual.nonzero().squeeze(-1)
        n_drop = image_pos.numel() - round(image_pos.numel() * (1 - method.ratio))
        drop = image_pos[received[image_pos].topk(n_drop, largest=False).indices]
        keep = torch.tensor([p for p in range(length) if p not in set(drop.tolist())])
        assert n_drop > 0 and keep.numel() == length - n_drop

        model, lm = tiny_llava.model, language_model(tiny_llava.model)
        h = model(**inputs, output_hidden_states=True).hidden_states[k][:, keep]  # input of layer k
        positions = keep[None]
        truth_cache = DynamicCache(config=model.config)
        for layer in lm.layers[k:]:
            h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=lm.rotary_emb(h, positions),
                      past_key_values=truth_cache, use_cache=True)
        truth = model.lm_head(lm.norm(h[:, -1]))

        logits, cache, layout = prefill(tiny_llava, inputs, method)
    assert torch.allclose(logits, truth, atol=1e-4)
    layers = len(lm.layers)
    assert layout.kept[:, 0].tolist() == [float(length)] * k + [float(length - n_drop)] * (layers - k)
    for i in range(k, layers):
        stored = cache.layers[i].keys[0, :, -keep.numel():]  # left-padded to the widest layer
        assert torch.allclose(stored, truth_cache.layers[i].keys[0], atol=1e-5), i
    # and the whole pipeline: decoding after it runs, unlike the full cache
    full = greedy_generate(tiny_llava, inputs, None, max_new_tokens=3, min_new_tokens=3)
    out = greedy_generate(tiny_llava, inputs, method, max_new_tokens=3, min_new_tokens=3)
    assert len(out.tokens[0]) == 3 and out.kept_tokens[0] < full.kept_tokens[0]


def test_fastv_batch_equals_each_prompt_alone(tiny_llava) -> None:
    """The prefill mask of a left-padded batch keeps each sample's own dropped tokens and
    hides the padding: each sample's logits and kept counts are those of its prompt alone."""
    images = [[Image.new("RGB", (40, 30), (200, 30, 30))],
              [Image.new("RGB", (30, 30), (0, 90, 200)), Image.new("RGB", (50, 20), (10, 200, 10))]]
    texts = [tiny_llava.format_prompt(f"Look at {tiny_llava.image_token} and say what colour it is."),
             tiny_llava.format_prompt(f"Compare {tiny_llava.image_token} with {tiny_llava.image_token} please, in detail.")]
    batch = tiny_llava.encode(texts, images)
    assert not bool(batch["attention_mask"].all())  # really padded
    method = build_method("fastv")
    with torch.inference_mode():
        logits, _, layout = prefill(tiny_llava, batch, method)
        for b in range(2):
            alone_logits, _, alone = prefill(tiny_llava, tiny_llava.encode([texts[b]], [images[b]]), method)
            assert torch.allclose(logits[b], alone_logits[0], atol=1e-4), b
            assert layout.kept[:, b].tolist() == alone.kept[:, 0].tolist(), b
