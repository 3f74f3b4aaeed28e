"""Every method's defaults, as a run composes them from configs/method/*.yaml, against its paper
or its authors' code; the budget arithmetic's rounding (int, not round) on fractional cases
worked out by hand; and degenerate budgets (no recent window, one token).

Sources: CSP's reference code (window = the recent R, n-softmax with n = 1, concatenated
top-k lists, 1 + 308 tokens at cross ratio 0, int() everywhere), SnapKV (window of the
last queries, average pooling, kernel 5), PyramidKV (beta 20), Ada-KV (safeguard 0.2 of the
budget), RoCo (4 sinks, a pool of E + 10% of the budget), LOOK-M and StreamingLLM (4 sinks),
FastV (K = 2, R = 50%, the last token's attention in its code), VL-Cache (sparsity
threshold 1%), TOVA (one ranking over all heads in its code); the reference's shared budget
is hh 0.1 + recent 0.1.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.adakv import AdaKV
from csp.engine.decode import greedy_generate
from csp.engine.method import Budget, ConfigError, LayerKV
from csp.engine.registry import build_method, method_names

EXPECTED = {
    "csp": {"combine": "concat", "score_fn": "nsoftmax", "n": 1.0, "decompose": True, "zero_ratio_quirk": True,
            "cross_ratio": None, "bias": None},  # None: from the per-dataset ratio table
    "snapkv": {"window": None, "kernel": 5, "pooling": "avg", "prune_text_only_prompts": True},
    "pyramidkv": {"window": None, "kernel": 5, "pooling": "avg", "beta": 20},
    "adakv": {"window": None, "kernel": 5, "pooling": "avg", "floor_ratio": 0.2},
    "reco": {"sinks": 4, "std_pool_ratio": 0.1},
    "streamingllm": {"sinks": 4},
    "fastv": {"layer": 2, "ratio": 0.5, "rank": "last"},
    "vlcache": {"sparsity_threshold": 0.01},
    "tova": {"heads": "all"},
    "random": {"seed": 0},
    **{f"lookm-{tp}{m[0]}": {"sinks": 4, "merge": m, "text_prior": bool(tp)}
       for tp in ("", "tp-") for m in ("average", "weighted", "pivotal")},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defaults_are_the_papers_and_authors_code(name) -> None:
    method = build_method(name)
    got = {k: getattr(method, k) for k in EXPECTED[name]}
    assert got == EXPECTED[name]


def test_every_method_shares_the_references_budget_by_default() -> None:
    assert set(EXPECTED) | {"full", "h2o", "knorm"} == set(method_names())  # a new method is pinned here too
    for name in method_names():
        if name == "full":
            continue
        m = build_method(name)
        assert (m.budget, m.recent_ratio, m.budget_tokens) == (0.2, 0.1, None), name
    csp = build_method("csp")
    assert (csp.DEFAULT_CROSS_RATIO, csp.DEFAULT_BIAS) == (0.5, 1.0)


# ---------------------------------------------------------------- rounding, by hand
@pytest.mark.parametrize("fields, length, split", [
    ({}, 19, (1, 1)),        # int(1.9) + int(1.9), not round: 2 + 2
    ({}, 15, (1, 1)),        # int(1.5): round() would give 2 (half to even)
    ({}, 10, (1, 1)),
    ({"budget": 0.3}, 20, (4, 2)),  # hh ratio 0.3 - 0.1 is 0.2: 0.19999999999999998 * 20 would give 3
    ({"budget_tokens": 5}, 1000, (3, 2)),  # R = int(5 * 0.1 / 0.2) = int(2.5) = 2
    ({"budget_tokens": 3}, 1000, (2, 1)),  # R = int(1.5) = 1
    ({"budget_tokens": 1}, 1000, (1, 0)),  # one token: no recent window
    ({"recent_ratio": 0.0}, 57, (11, 0)),  # int(0.2 * 57) = int(11.4)
])
def test_budget_split_rounds_down_as_the_reference(fields, length, split) -> None:
    b = build_method("h2o", **fields).split_budget(length)
    assert (b.selected, b.recent) == split


@pytest.mark.parametrize("bias, recent, kept", [(1.5, 5, 7), (0.5, 5, 2), (1.0, 5, 5), (1.5, 3, 4), (0.5, 3, 1)])
def test_csp_recent_share_rounds_down(bias, recent, kept) -> None:
    # Rk = int(R * bias): 7.5 -> 7, 2.5 -> 2, 4.5 -> 4, 1.5 -> 1
    assert dataclasses.replace(build_method("csp"), bias=bias).recent_kept(recent, 1000) == kept


@pytest.mark.parametrize("ratio, k, split", [
    (0.5, 3, (1, 1)),    # int(1.5), int(1.5): one of the three goes unused, as in the reference
    (0.1, 7, (0, 6)),    # int(0.7), int(6.3)
    (0.9, 7, (6, 0)),    # int(6.3), int(7 * 0.09999999999999998) = int(0.6999...)
    (0.5, 1, (0, 0)),    # one token splits into nothing
    (0.0, 50, (1, 308)),  # the reference's hard-coded pair at cross ratio 0
])
def test_csp_top_k_split_rounds_down(ratio, k, split) -> None:
    assert dataclasses.replace(build_method("csp"), cross_ratio=ratio).split(k) == split


def test_reco_pool_is_the_evicted_plus_int_of_a_tenth_of_the_budget(monkeypatch) -> None:
    # L = 20, hh 12 + R 3 = 15 kept, E = 5 evicted; protected: sinks j0..j3 and the last three.
    # Deviation rises with the position over j4..j16, so the low-deviation pool is j4.. in order;
    # the means are j4..j9 1..6 and j10 0. The pool holds E + int(0.1 * 15) = 6 tokens, j4..j9, and
    # the five least attended of them, j4..j8, go; a pool of round(1.5) = 2 extra would reach j10.
    import baselines.reco as reco

    length = 20
    std = torch.arange(length, dtype=torch.float32)[None]
    mean = torch.full((1, length), 100.0)
    mean[0, 4:10] = torch.arange(1, 7, dtype=torch.float32)
    mean[0, 10] = 0.0
    monkeypatch.setattr(reco, "mean_and_std", lambda kv, chunk: (mean, std))
    kv = LayerKV(0, torch.zeros(1, length, 2), torch.zeros(1, length, 2), torch.ones(length, dtype=torch.bool),
                 1.0, lambda last: None)
    kept = build_method("reco").select(kv, Budget(12, 3)).index[0].tolist()
    assert sorted(set(range(length)) - set(kept)) == [4, 5, 6, 7, 8]


def test_adakv_floor_is_int_of_the_ratio_times_the_budget(monkeypatch) -> None:
    # two heads, hh 8 each (16 entries for the layer), R 2. Head 0's votes are all high, head 1's
    # all tiny, so after the floors everything goes to head 0: head 1 keeps its floor alone,
    # int(0.2 * 8) = int(1.6) = 1 (round would give 2), head 0 the other 15.
    length = 30
    votes = torch.stack([torch.linspace(1.0, 2.0, length), torch.linspace(1e-4, 2e-4, length)])
    monkeypatch.setattr(AdaKV, "score", lambda self, kv, budget: votes.clone())
    kv = LayerKV(0, torch.zeros(2, length, 2), torch.zeros(2, length, 2), torch.ones(length, dtype=torch.bool),
                 1.0, lambda last: None)
    sel = build_method("adakv").select(kv, Budget(8, 2))
    assert sel.valid.sum(-1).tolist() == [15 + 2, 1 + 2]
    assert sel.index[1][sel.valid[1]].tolist() == [27, 28, 29]  # its best candidate, then the recent two


# ---------------------------------------------------------------- degenerate budgets
def random_layers(length: int = 40, layers: int = 3) -> list[LayerKV]:
    gen = torch.Generator().manual_seed(0)
    visual = torch.zeros(length, dtype=torch.bool)
    visual[5:25] = True
    out = []
    for i in range(layers):
        q, k, v = (torch.randn(2, length, 8, generator=gen) for _ in range(3))
        out.append(LayerKV(i, k, v, visual, 8**-0.5, lambda last, q=q: q if last is None else q[:, length - last:],
                           num_layers=layers))
    return out


def kept_counts(method, kvs) -> list[list[int]]:
    return [s.valid.sum(-1).tolist() if s.valid is not None else [s.index.shape[1]] * s.index.shape[0]
            for s in method.prune_layers(kvs)]


EXACT = ("h2o", "knorm", "random", "reco", "streamingllm", "tova", "snapkv", "vlcache", "lookm-a", "lookm-w", "lookm-p")


@pytest.mark.parametrize("name", EXACT)
def test_one_token_budget_keeps_one_entry_and_no_recent_window(name) -> None:
    method = build_method(name, budget_tokens=1)
    kvs = random_layers()
    assert method.split_budget(40) == Budget(1, 0)  # R = int(1 * 0.1 / 0.2) = 0
    assert kept_counts(method, kvs) == [[1, 1]] * 3


@pytest.mark.parametrize("name", EXACT + ("csp",))
def test_no_recent_window_keeps_hh_alone(name) -> None:
    try:
        method = build_method(name, recent_ratio=0.0)
    except ConfigError as e:  # the observation window is the recent one: refused, with the fix named
        assert name == "snapkv" and "window" in str(e)
        return
    assert kept_counts(method, random_layers()) == [[8, 8]] * 3  # int(0.2 * 40), every layer and head


def test_snapkv_family_without_recent_window_needs_its_own_window() -> None:
    for name in ("snapkv", "pyramidkv", "adakv"):
        with pytest.raises(ConfigError, match="window=null means the recent window R, but recent_ratio=0"):
            build_method(name, recent_ratio=0.0)
        m = dataclasses.replace(build_method(name), recent_ratio=0.0, window=4)
        assert m.split_budget(40) == Budget(8, 0)


def test_csp_at_one_token_keeps_no_prompt_entry_and_still_decodes(tiny_llava) -> None:
    # hh 1, R 0: Rk 0, k 1, int(0.5) + int(0.5) = 0 of the top-k: the reference's arithmetic leaves
    # the prompt cache empty, and decoding attends to the generated tokens alone
    method = build_method("csp", budget_tokens=1)
    assert kept_counts(method, random_layers()) == [[0, 0]] * 3
    from PIL import Image

    image = [Image.new("RGB", (40, 30), (10, 120, 200))]
    inputs = tiny_llava.encode([tiny_llava.format_prompt(f"{tiny_llava.image_token}\nDescribe it.")], [image])
    out = greedy_generate(tiny_llava, inputs, method, max_new_tokens=3, min_new_tokens=3)
    assert len(out.tokens[0]) == 3 and out.kept_tokens[0] == 0
