"""Properties of every registered method (configs/method/*.yaml) over random prompts of one to
three layers: each keeps what its `budget_rule` promises, the recent window always survives,
and a budget of 1 keeps everything. A new method is tested here by being registered."""
from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.h2o import H2O
from baselines.lookm import LookM
from baselines.reco import ReCo
from baselines.snapkv import SnapKV
from baselines.streamingllm import StreamingLLM
from csp.engine.method import ConfigError, FullCache, KVPruner, LayerKV
from csp.engine.registry import build_method, method_names

REGISTERED = {n: build_method(n) for n in method_names()}
# option values no config names, and small chunks so that the chunked paths run
VARIANTS = {
    "h2o-chunk7": H2O(chunk_size=7),
    "snapkv-max": SnapKV(pooling="max", kernel=3),
    "reco-chunk5": ReCo(chunk_size=5),
    "lookm-tp-w-chunk6": LookM(merge="weighted", text_prior=True, chunk_size=6),
}
PROTOTYPES = {**{n: m for n, m in REGISTERED.items() if not isinstance(m, FullCache)}, **VARIANTS}


def make(name: str, **budget_fields) -> KVPruner:
    """The method as configured, with other budget fields (validated again)."""
    return dataclasses.replace(PROTOTYPES[name], **budget_fields)


@st.composite
def prompts(draw) -> list[LayerKV]:
    """One prompt's layers: the same tokens, different queries, keys and values per layer."""
    length = draw(st.integers(8, 48))
    layers = draw(st.integers(1, 3))
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2]))
    dim = draw(st.sampled_from([4, 8]))
    seed = draw(st.integers(0, 2**31 - 1))
    visual = torch.tensor(draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    visual[draw(st.integers(0, length - 1))] = True  # at least one image token
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(layers):
        queries = torch.randn(kv_heads * group, length, dim, generator=gen)
        keys = torch.randn(kv_heads, length, dim, generator=gen)
        values = torch.randn(kv_heads, length, dim, generator=gen)
        out.append(LayerKV(layer, keys, values, visual, dim**-0.5,
                           lambda last, q=queries: q if last is None else q[:, length - last :], num_layers=layers))
    return out


@st.composite
def budgets(draw) -> dict:
    budget = draw(st.floats(0.05, 0.95))
    return {"budget": budget, "recent_ratio": draw(st.floats(0.01, 1.0)) * budget}


def check_selection(name: str, method: KVPruner, kvs: list[LayerKV]) -> None:
    sels = method.prune_layers(kvs)
    assert len(sels) == len(kvs)
    length, heads, rule = kvs[0].length, kvs[0].kv_heads, method.budget_rule
    b = method.split_budget(length)
    if b.total >= length and rule != "own":  # a prompt within the shared budget is kept whole
        for sel in sels:
            assert sel.index.tolist() == [list(range(length))] * heads
        return
    # StreamingLLM's recent window is what the sinks leave of the budget; a method with its
    # own budget (FastV) has none
    recent = b.total - min(method.sinks, b.total) if isinstance(method, StreamingLLM) else b.recent
    recent = 0 if rule == "own" else recent
    kept_everywhere = 0
    for kv, sel in zip(kvs, sels):
        assert sel.index.shape[0] == heads
        valid = sel.valid if sel.valid is not None else torch.ones_like(sel.index, dtype=torch.bool)
        rows = [sel.index[h][valid[h]].tolist() for h in range(heads)]
        for row in rows:
            if rule != "at_most":  # CSP's concat may list a token twice
                assert row == sorted(set(row)), "positions are distinct and in prompt order"
            assert row[len(row) - recent :] == list(range(length - recent, length)), "recent kept"
            assert all(0 <= p < length for p in row)
            kept_everywhere += len(row)
        counts = [len(row) for row in rows]
        if rule == "exact":
            assert sel.valid is None and counts == [b.total] * heads, (name, b, counts)
        elif rule == "at_least":  # the text prior keeps all text: overshoot by the text beyond hh
            assert isinstance(method, LookM) and method.text_prior
            cand = length - b.recent
            forced = (~kv.visual[:cand]).clone()
            forced[: min(method.sinks, b.selected)] = True
            assert counts == [max(b.selected, int(forced.sum())) + b.recent] * heads, (name, b, counts)
            assert set((~kv.visual[:cand]).nonzero().squeeze(-1).tolist()) <= set(rows[0])
        elif rule == "at_most":
            assert all(c <= b.total for c in counts), (name, b, counts)
        elif rule == "own":  # its own budget, checked by its unit tests; here only sanity
            assert all(0 < c <= length for c in counts), (name, counts)
        if sel.keys is not None:
            expected = sel.index.shape[1]
            assert sel.keys.shape == (heads, expected, kv.keys.shape[-1]) == sel.values.shape
            assert torch.isfinite(sel.keys).all() and torch.isfinite(sel.values).all()
            # something was evicted, so some kept entry absorbed it and differs from its original
            original = kv.keys.gather(1, sel.index[..., None].expand_as(sel.keys))
            assert not torch.equal(sel.keys, original), name
    if rule == "spread":  # reallocated between layers or heads, the same total
        assert kept_everywhere == len(kvs) * heads * b.total, (name, b, kept_everywhere)


@settings(max_examples=25, deadline=None)
@given(kvs=prompts(), fields=budgets())
def test_every_method_respects_its_budget(kvs: list[LayerKV], fields: dict) -> None:
    for name in PROTOTYPES:
        check_selection(name, make(name, **fields), kvs)


@settings(max_examples=15, deadline=None)
@given(kvs=prompts(), tokens=st.integers(1, 60))
def test_absolute_budget(kvs: list[LayerKV], tokens: int) -> None:
    for name in PROTOTYPES:
        check_selection(name, make(name, budget_tokens=tokens), kvs)


@settings(max_examples=15, deadline=None)
@given(kvs=prompts(), recent=st.floats(0.0, 1.0))
def test_budget_one_keeps_everything(kvs: list[LayerKV], recent: float) -> None:
    for name in PROTOTYPES:
        try:
            method = make(name, budget=1.0, recent_ratio=recent)
        except ConfigError as e:  # a window-scored method needs a recent window
            assert recent == 0.0 and "window" in str(e), (name, e)
            continue
        for sel in method.prune_layers(kvs):
            assert sel.index.tolist() == [list(range(kvs[0].length))] * kvs[0].kv_heads, name
            assert sel.keys is None
