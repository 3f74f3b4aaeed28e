"""The engine against truths it does not compute itself (fp32, CPU, tiny models).

test_engine.py compares the engine with itself (drop vs mask, batch vs alone), which a bug
shared by both paths passes. Here every check has an independent reference:
- what a method scores equals the model's own attention weights (eager, output_attentions);
- the modality mask equals the image-token positions of each prompt encoded alone;
- decode positions equal each prompt's true length + step, as seen by the decoder;
- logits after a pruned prefill equal ONE plain forward of the unmodified model whose
  attention mask lets the new tokens see only the kept prompt positions;
- CSP's scores equal a hand computation over the last R queries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from PIL import Image

from csp.engine.attention import grouped_logits, n_softmax
from csp.cross_self import CrossSelfPruner
from csp.engine.decode import Decoder, greedy_generate, prefill
from csp.engine.method import Budget, KVPruner, LayerKV, Selection
from csp.models.adapters import ModelAdapter, language_model, load_adapter
from masked_eviction import MaskedEviction

ATOL = 1e-4
TOKENS_PER_IMAGE = 16  # both tiny models: 56 px / 14 px patches, or 112 px / 14 px with pixel shuffle 0.5
NEW_TOKENS = 4


# -- models and prompts ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def eager(tiny_llava_path, tiny_internvl_path) -> dict[str, ModelAdapter]:
    paths = {"llava": tiny_llava_path, "internvl": tiny_internvl_path}
    return {f: load_adapter(f, str(p), dtype="float32", device="cpu", attn_implementation="eager") for f, p in paths.items()}


@pytest.fixture(scope="module")
def sdpa(tiny_llava, tiny_internvl) -> dict[str, ModelAdapter]:
    return {"llava": tiny_llava, "internvl": tiny_internvl}


def pictures(n: int, seed: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(24, 32, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


@dataclass(frozen=True)
class Case:
    images: int
    repeats: int  # of the filler sentence
    image_last: bool  # the image(s) at the very end of the user text, so the window holds image tokens


# Two prompts of different lengths: images first (window all text), and an image at the end.
# InternVL's template is short, so its image-last prompt needs more text for R = int(0.1 L)
# to reach back into the image.
CASES = {
    "llava": (Case(2, 3, False), Case(1, 2, True)),
    "internvl": (Case(2, 3, False), Case(1, 16, True)),
}


def prompt(adapter: ModelAdapter, case: Case) -> str:
    body = " ".join(["the old lighthouse keeper counted ships"] * case.repeats)
    marks = "\n".join([adapter.image_token] * case.images)
    text = f"{body} Look at this:\n{marks}" if case.image_last else f"{marks}\n{body} What happened next?"
    return adapter.format_prompt(text)


def encode_cases(adapter: ModelAdapter, cases) -> tuple[list, object]:
    """Each prompt alone (no padding: the truth) and all of them as one left-padded batch."""
    texts = [prompt(adapter, c) for c in cases]
    imgs = [pictures(c.images, seed=10 * i + c.images) for i, c in enumerate(cases)]
    singles = [adapter.encode([t], [i]) for t, i in zip(texts, imgs)]
    return singles, adapter.encode(texts, imgs)


def csp(**kw) -> CrossSelfPruner:
    return CrossSelfPruner(cross_ratio=kw.pop("cross_ratio", 0.5), bias=kw.pop("bias", 1.0), **kw)


# -- test-only methods -----------------------------------------------------------------------
@dataclass
class Spy(KVPruner):
    """Records what a method is handed (window and all queries, keys, scaling, modality), keeps all."""

    seen: dict[int, list[dict]] = field(default_factory=dict)

    def __call__(self, kv: LayerKV) -> Selection:
        recent = self.split_budget(kv.length).recent
        self.seen.setdefault(kv.layer_idx, []).append(dict(
            length=kv.length, recent=recent, window=kv.queries(recent).clone(), all=kv.queries().clone(),
            keys=kv.keys.clone(), scaling=kv.scaling, visual=kv.visual.clone(),
        ))
        return Selection.everything(kv)


Rule = Callable[[int, int, int], list[int]]  # (layer, kv head, L) -> kept prompt positions


@dataclass
class KeepFixed(KVPruner):
    """Keeps the positions a rule names, whatever the scores: the truth knows them in advance.
    Heads that keep fewer entries are padded at the end of their list (`valid` False)."""

    rule: Rule | None = None

    def __call__(self, kv: LayerKV) -> Selection:
        lists = [self.rule(kv.layer_idx, h, kv.length) for h in range(kv.kv_heads)]
        width = max(len(p) for p in lists)
        index = torch.zeros(kv.kv_heads, width, dtype=torch.long)
        valid = torch.zeros(kv.kv_heads, width, dtype=torch.bool)
        for h, p in enumerate(lists):
            index[h, : len(p)], valid[h, : len(p)] = torch.tensor(p), True
        return Selection(index=index, valid=None if bool(valid.all()) else valid)


def every_third(layer: int, head: int, length: int) -> list[int]:
    return sorted(set(range(0, length, 3)) | set(range(length - 4, length)))


def per_head_same_count(layer: int, head: int, length: int) -> list[int]:
    """Different positions per head and layer, the same number everywhere (a 2-D padding mask)."""
    picked = [j for j in range(length - 4) if (j + head + layer) % 3 == 0][: (length - 4) // 3 - 1]
    return picked + list(range(length - 4, length))


def ragged(layer: int, head: int, length: int) -> list[int]:
    """Different counts per head and layer: needs the per-layer, per-head decode masks."""
    step = 2 + (head + layer) % 3
    return sorted(set(range(head, length, step)) | set(range(length - 3, length)))


@dataclass
class RecordingCSP(CrossSelfPruner):
    """CSP as configured, recording per layer and call the (Hkv, L) mask of what it keeps."""

    kept: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __call__(self, kv: LayerKV) -> Selection:
        sel = super().__call__(kv)
        valid = sel.valid if sel.valid is not None else torch.ones_like(sel.index, dtype=torch.bool)
        mask = torch.zeros(kv.kv_heads, kv.length, dtype=torch.bool)
        for h in range(kv.kv_heads):
            mask[h, sel.index[h][valid[h]]] = True
        self.kept.setdefault(kv.layer_idx, []).append(mask)
        return sel


# -- the independent truth for logits -----------------------------------------------------------
def rule_masks(rule: Rule, layers: int, heads: int, length: int) -> list[torch.Tensor]:
    masks = []
    for layer in range(layers):
        m = torch.zeros(heads, length, dtype=torch.bool)
        for h in range(heads):
            m[h, rule(layer, h, length)] = True
        masks.append(m)
    return masks


def truth_logits(adapter: ModelAdapter, single, new: torch.Tensor, kept: list[torch.Tensor]) -> torch.Tensor:
    """Logits (T + 1, V) of ONE plain forward over prompt + `new`: prompt queries attend
    causally to the whole prompt (the prefill is not pruned), each new token's query sees only
    layer l's kept prompt positions `kept[l]` (Hkv, P) of its KV head, and the new tokens up to
    itself. Row 0 predicts the first new token, row s + 1 follows new[s].

    transformers passes a 4-D float mask through unchanged and adds it to the logits (eager
    and sdpa alike); one mask serves every layer when they agree, otherwise each attention
    module gets its own through a pre-hook.
    """
    model, modules = adapter.model, adapter.attention_modules()
    plen, n = single["input_ids"].shape[1], single["input_ids"].shape[1] + len(new)
    groups = modules[0].num_key_value_groups
    lowest = torch.finfo(torch.float32).min

    def additive(keep: torch.Tensor) -> torch.Tensor:
        allowed = torch.ones(n, n, dtype=torch.bool).tril().expand(keep.shape[0] * groups, n, n).clone()
        allowed[:, plen:, :plen] &= keep.repeat_interleave(groups, dim=0)[:, None, :]  # query head -> its KV head
        return torch.zeros(allowed.shape).masked_fill(~allowed, lowest)[None]

    masks = [additive(k) for k in kept]
    shared = all(torch.equal(k, kept[0]) for k in kept)
    inputs = dict(single)
    inputs["input_ids"] = torch.cat([single["input_ids"], new[None]], dim=1)
    inputs["attention_mask"] = masks[0] if shared else torch.ones(1, n, dtype=torch.long)
    handles = []
    if not shared:
        def hook_for(mask):
            def pre_hook(module, args, kwargs):
                kwargs["attention_mask"] = mask
                return args, kwargs
            return pre_hook
        handles = [m.register_forward_pre_hook(hook_for(mask), with_kwargs=True) for m, mask in zip(modules, masks)]
    try:
        with torch.inference_mode():
            logits = model(**inputs).logits[0]
    finally:
        for h in handles:
            h.remove()
    return logits[plen - 1 :]


def engine_logits(adapter: ModelAdapter, inputs, method: KVPruner, new: torch.Tensor, evict="drop"):
    if evict == "mask":
        method = MaskedEviction(inner=method)
    """Per-step logits (T + 1, B, V) of the engine: the pruned prefill, then `new` (B, T)
    teacher-forced through the decode path; and the prefill layout."""
    with torch.inference_mode(), Decoder(adapter, inputs, method) as dec:
        out = [dec.logits]
        for s in range(new.shape[1]):
            out.append(dec.step(new[:, s]))
        return torch.stack(out), dec.layout


def forced_tokens(batch: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(10, vocab, (batch, NEW_TOKENS), generator=g)


# -- 1. the window attention a method scores is the model's own ----------------------------------
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_scored_attention_equals_the_models_attention(family, eager):
    adapter = eager[family]
    singles, batch = encode_cases(adapter, CASES[family])
    assert batch["attention_mask"].sum(-1).tolist()[0] != batch["attention_mask"].sum(-1).tolist()[1]
    spy = Spy()
    with torch.inference_mode():
        prefill(adapter, batch, spy)
        truths = [adapter.model(**s, output_attentions=True).attentions for s in singles]
    hq = adapter.model.config.get_text_config().num_attention_heads
    for b, attentions in enumerate(truths):
        length = singles[b]["input_ids"].shape[1]
        for layer, att in enumerate(attentions):
            seen = spy.seen[layer][b]
            assert seen["length"] == length and seen["recent"] > 0
            hkv = seen["keys"].shape[0]
            for queries, start in ((seen["window"], length - seen["recent"]), (seen["all"], 0)):
                probs = n_softmax(grouped_logits(queries, seen["keys"], seen["scaling"], start), 0.0)
                truth = att[0, :, start:, :].reshape(hkv, hq // hkv, length - start, length)
                assert torch.allclose(probs, truth, atol=1e-5), (family, b, layer, start)
                # what grouped-query methods rank by: the group's mean
                assert torch.allclose(probs.mean(1), truth.mean(1), atol=1e-5)
    assert hq // hkv == (2 if family == "internvl" else 1)


# -- 2. the modality mask is the image tokens' positions ----------------------------------------
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_visual_mask_is_the_image_token_positions(family, eager):
    adapter = eager[family]
    cases = CASES[family]
    singles, batch = encode_cases(adapter, cases)
    spy = Spy()
    with torch.inference_mode():
        prefill(adapter, batch, spy)
    image_id = adapter.processor.tokenizer.convert_tokens_to_ids(adapter.image_token)
    for b, (case, single) in enumerate(zip(cases, singles)):
        ids = single["input_ids"][0]
        expected = ids == image_id
        # the prompt layout: one run of 16 image tokens per image
        runs = torch.diff(expected.int(), prepend=torch.zeros(1, dtype=torch.int), append=torch.zeros(1, dtype=torch.int))
        starts, ends = (runs == 1).nonzero().squeeze(-1), (runs == -1).nonzero().squeeze(-1)
        assert len(starts) == case.images and ((ends - starts) == TOKENS_PER_IMAGE).all()
        for layer in spy.seen:
            assert torch.equal(spy.seen[layer][b]["visual"], expected), (family, b, layer)
        window = spy.seen[0][b]["visual"][-spy.seen[0][b]["recent"] :]
        assert bool(window.any()) == case.image_last  # the image-last prompt's window holds image tokens


# -- 3. decode positions continue from each prompt's true length --------------------------------
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_decode_positions_are_true_prompt_length_plus_step(family, mode, sdpa):
    adapter = sdpa[family]
    singles, batch = encode_cases(adapter, CASES[family])
    lengths = [s["input_ids"].shape[1] for s in singles]
    seen = []

    def capture(module, args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    handle = language_model(adapter.model).register_forward_pre_hook(capture, with_kwargs=True)
    try:
        out = greedy_generate(adapter, batch if mode == "batch" else singles, csp(budget=0.2),
                              max_new_tokens=5, min_new_tokens=5)
    finally:
        handle.remove()
    assert out.prompt_lengths == lengths
    prefills, decodes = seen[: -4], seen[-4:]
    assert [p.shape[-1] for p in decodes] == [1] * 4
    for step, pos in enumerate(decodes):
        assert pos[:, 0].tolist() == [n + step for n in lengths], (mode, step)
    # the prefill placed each real token at 0 .. L - 1, whatever its padding
    rows = [p[b] for p in prefills for b in range(p.shape[0])]
    for n in lengths:
        assert any(row[-n:].tolist() == list(range(n)) for row in rows)


# -- 4. logits over a pruned cache equal the model's forward with the kept positions masked -----
@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
@pytest.mark.parametrize("rule", [every_third, per_head_same_count], ids=["same-everywhere", "per-head"])
def test_pruned_logits_equal_the_masked_forward(family, mode, rule, sdpa):
    adapter = sdpa[family]
    singles, batch = encode_cases(adapter, CASES[family])
    new = forced_tokens(len(singles), adapter.model.config.get_text_config().vocab_size)
    got, layout = engine_logits(adapter, batch if mode == "batch" else singles, KeepFixed(rule=rule), new)
    assert not layout.ragged
    layers, heads = len(adapter.attention_modules()), adapter.model.config.get_text_config().num_key_value_heads
    for b, single in enumerate(singles):
        kept = rule_masks(rule, layers, heads, single["input_ids"].shape[1])
        truth = truth_logits(adapter, single, new[b], kept)
        assert torch.allclose(got[:, b], truth, atol=ATOL), (b, (got[:, b] - truth).abs().max())
    # the kept positions matter: the full prompt's forward gives other logits
    full = truth_logits(adapter, singles[0], new[0], [torch.ones(heads, singles[0]["input_ids"].shape[1], dtype=torch.bool)])
    assert not torch.allclose(got[1:, 0], full[1:], atol=1e-2)


@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("mode,evict", [("batch", "drop"), ("per_sample", "drop"), ("batch", "mask")])
def test_ragged_per_head_logits_equal_the_masked_forward(family, impl, mode, evict, eager, sdpa):
    """Heads and layers keeping different counts: per-head padded lists, the per-layer decode
    masks (eager: additive, sdpa: boolean) and, per prompt, the merge of ragged layouts."""
    adapter = (eager if impl == "eager" else sdpa)[family]
    singles, batch = encode_cases(adapter, CASES[family])
    new = forced_tokens(len(singles), adapter.model.config.get_text_config().vocab_size)
    got, layout = engine_logits(adapter, batch if mode == "batch" else singles, KeepFixed(rule=ragged), new, evict)
    assert layout.ragged
    layers, heads = len(adapter.attention_modules()), adapter.model.config.get_text_config().num_key_value_heads
    for b, single in enumerate(singles):
        truth = truth_logits(adapter, single, new[b], rule_masks(ragged, layers, heads, single["input_ids"].shape[1]))
        assert torch.allclose(got[:, b], truth, atol=ATOL), (b, (got[:, b] - truth).abs().max())


# -- 5. CSP's observation window, by hand -------------------------------------------------------
def test_csp_scores_are_the_last_R_queries_by_hand():
    """L = 40, budget 0.2: hh = R = 4 (methods.md), so queries 36..39 form the window. The
    scores are computed here with plain loops, n-softmax (n = 1) over each query's causal keys."""
    torch.manual_seed(3)
    length, dim, scaling = 40, 4, 0.5
    keys, queries = torch.randn(1, length, dim), torch.randn(1, length, dim)
    visual = torch.tensor([8 <= j < 24 or 34 <= j < 38 for j in range(length)])  # the window straddles modalities
    method = csp(budget=0.2)
    budget = method.split_budget(length)
    assert budget == Budget(selected=4, recent=4)

    s_self = torch.zeros(length, dtype=torch.float64)
    s_cross = torch.zeros(length, dtype=torch.float64)
    for q in range(length - budget.recent, length):
        logits = [float(queries[0, q] @ keys[0, j]) * scaling for j in range(q + 1)]
        denom = 1.0 + sum(torch.tensor(logits, dtype=torch.float64).exp())
        for j, o in enumerate(logits):
            a = torch.tensor(o, dtype=torch.float64).exp() / denom
            if bool(visual[q]) == bool(visual[j]):
                s_self[j] += a
            else:
                s_cross[j] += a

    seen = {}

    class Recorded(CrossSelfPruner):
        def scores(self, kv, window):
            seen["scores"] = super().scores(kv, window)
            return seen["scores"]

    kv = LayerKV(0, keys, keys.clone(), visual, scaling, lambda last: queries if last is None else queries[:, length - last :])
    sel = Recorded(cross_ratio=0.5, bias=1.0)(kv)
    got_self, got_cross = seen["scores"]
    assert torch.allclose(got_self[0].double(), s_self, atol=1e-6)
    assert torch.allclose(got_cross[0].double(), s_cross, atol=1e-6)
    # k = hh + R - Rk = 4: the top 2 of each among keys [0, L - R), then the last R keys
    cands = length - budget.recent
    expected = s_self[:cands].topk(2).indices.tolist() + s_cross[:cands].topk(2).indices.tolist() + list(range(cands, length))
    assert sel.index[0].tolist() == expected


# -- 6. CSP intersection: ragged per-head sets on prompts whose window holds image tokens -------
@pytest.mark.parametrize("family", ["llava", "internvl"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_csp_intersection_logits_equal_the_masked_forward(family, impl, mode, eager, sdpa):
    adapter = (eager if impl == "eager" else sdpa)[family]
    singles, batch = encode_cases(adapter, CASES[family])
    new = forced_tokens(len(singles), adapter.model.config.get_text_config().vocab_size)
    method = RecordingCSP(cross_ratio=0.5, bias=1.0, budget=0.3, combine="intersection")
    got, layout = engine_logits(adapter, batch if mode == "batch" else singles, method, new)
    layers = len(adapter.attention_modules())
    for b, (case, single) in enumerate(zip(CASES[family], singles)):
        kept = [method.kept[layer][b] for layer in range(layers)]
        length = single["input_ids"].shape[1]
        chosen = torch.stack([k[:, : length - method.split_budget(length).recent].sum(-1) for k in kept])  # (layers, Hkv)
        if case.image_last:  # the window holds image tokens: a real intersection, of other sizes per head
            assert chosen.sum() > 0
            assert bool((chosen.max(1).values > chosen.min(1).values).any()), chosen
        else:  # a text-only window: nothing in both lists, a uniform layout (the merge's other branch)
            assert chosen.sum() == 0
        truth = truth_logits(adapter, single, new[b], kept)
        assert torch.allclose(got[:, b], truth, atol=ATOL), (b, (got[:, b] - truth).abs().max())
    assert layout.ragged
