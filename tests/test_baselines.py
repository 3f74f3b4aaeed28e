"""The baselines on hand-made tensors: kept indices and merged entries computed by hand.

Attention is controlled exactly by one-hot keys (keys = identity, scaling 1): the logits of
query q are then its own vector, so a query row log(w) attends to key j with weight
w[j] / sum_{j' <= q} w[j'] (the future is masked).
"""
from __future__ import annotations

import math

import pytest
import torch

from baselines.h2o import H2O
from baselines.lookm import LookM
from baselines.random_eviction import RandomEviction
from baselines.reco import ReCo
from baselines.snapkv import SnapKV, smooth
from baselines.streamingllm import StreamingLLM
from csp.engine.method import Budget, ConfigError, LayerKV


def layer_kv(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None,
             visual: list[bool] | None = None) -> LayerKV:
    """queries (Hq, L, D), keys (Hkv, L, D); every token visual unless said otherwise."""
    length = keys.shape[1]
    vis = torch.tensor(visual) if visual is not None else torch.ones(length, dtype=torch.bool)
    return LayerKV(
        layer_idx=0, keys=keys, values=keys.clone() if values is None else values, visual=vis,
        scaling=1.0, query_fn=lambda last: queries if last is None else queries[:, length - last :],
    )


def weighted_queries(rows: list[list[float]]) -> torch.Tensor:
    """(1, L, L) queries whose causal attention over one-hot keys is each row normalized."""
    length = len(rows)
    q = torch.zeros(1, length, length)
    for i, w in enumerate(rows):
        q[0, i, : len(w)] = torch.tensor(w).log()
    return q


# attention a[q, j] of six queries (rows), hand-normalized:
#   q0 [1]                      q1 [.5 .5]               q2 [.25 .25 .5]
#   q3 [.125 .125 .125 .625]    q4 [.1 .1 .1 .6 .1]      q5 [.1 .1 .1 .5 .1 .1]
# column sums: j0 2.075, j1 1.075, j2 .825, j3 1.725, j4 .2, j5 .1
SIX = [[1], [1, 1], [1, 1, 2], [1, 1, 1, 5], [1, 1, 1, 6, 1], [1, 1, 1, 5, 1, 1]]


def six_kv(**kw) -> LayerKV:
    return layer_kv(weighted_queries(SIX), torch.eye(6).unsqueeze(0), **kw)


# ---------------------------------------------------------------- H2O
def test_h2o_keeps_top_column_sums_plus_recent() -> None:
    # candidates j0..j4; the two largest sums are j0 (2.075) and j3 (1.725); j5 is recent
    sel = H2O(chunk_size=2).select(six_kv(), Budget(selected=2, recent=1))
    assert sel.index.tolist() == [[0, 3, 5]]
    assert sel.keys is None


def test_h2o_scores_do_not_depend_on_the_query_chunk() -> None:
    for chunk in (1, 2, 4, 512):
        assert H2O(chunk_size=chunk).select(six_kv(), Budget(3, 1)).index.tolist() == [[0, 1, 3, 5]]


def test_h2o_grouped_query_heads_are_averaged() -> None:
    # head A as above; head B attends uniformly (zero query): column sums
    # j0 2.45, j1 1.45, j2 .95, j3 .6167, j4 .3667. Averaged: j0 2.2625, j1 1.2625,
    # j2 .8875, j3 1.1708, j4 .2833 -> top two j0, j1 (head A alone would pick j0, j3).
    q = torch.cat([weighted_queries(SIX), torch.zeros(1, 6, 6)])
    sel = H2O().select(layer_kv(q, torch.eye(6).unsqueeze(0)), Budget(2, 1))
    assert sel.index.tolist() == [[0, 1, 5]]


def test_h2o_call_applies_the_budget_fields() -> None:
    # budget_tokens 3 with recent_ratio/budget = 0.5 -> R = int(1.5) = 1, hh = 2
    assert H2O(budget_tokens=3, budget=0.2, recent_ratio=0.1)(six_kv()).index.tolist() == [[0, 3, 5]]
    # a text-only prompt is not pruned (the reference prunes only prompts with images)
    text = six_kv(visual=[False] * 6)
    assert H2O(budget_tokens=3)(text).index.tolist() == [list(range(6))]


# ---------------------------------------------------------------- SnapKV
# Eight tokens, window = last R = 2 queries:
#   q6 weights [1 1 1 1 1 1 4] / 10, q7 weights [1 1 6 1 1 8 1 1] / 20
#   votes for the candidates j0..j5: .15 .15 .40 .15 .15 .50
EIGHT = [[1] * (i + 1) for i in range(6)] + [[1, 1, 1, 1, 1, 1, 4], [1, 1, 6, 1, 1, 8, 1, 1]]


def eight_kv() -> LayerKV:
    return layer_kv(weighted_queries(EIGHT), torch.eye(8).unsqueeze(0))


def test_snapkv_average_pooling_moves_the_choice() -> None:
    # avg pool k5 (pads count as zeros, /5): .14 .17 .20 .27 .24 .16 -> top two j3, j4
    sel = SnapKV(recent_ratio=0.1).select(eight_kv(), Budget(selected=2, recent=2))
    assert sel.index.tolist() == [[3, 4, 6, 7]]


def test_snapkv_without_smoothing_keeps_the_raw_votes() -> None:
    # kernel 1: raw votes, top two j5 (.50), j2 (.40)
    assert SnapKV(kernel=1).select(eight_kv(), Budget(2, 2)).index.tolist() == [[2, 5, 6, 7]]


def test_snapkv_window_is_configurable() -> None:
    # q6 now leans on j0: [10 1 1 1 1 1 5] / 20 -> .5 .05 .05 .05 .05 .05 .25
    # window 2 (q6 + q7), raw votes: j0 .55 ... j5 .45 -> hh 1 keeps j0
    # window 1 (q7 alone):           j0 .05 ... j5 .40 -> hh 1 keeps j5
    rows = EIGHT[:6] + [[10, 1, 1, 1, 1, 1, 5], EIGHT[7]]
    kv = layer_kv(weighted_queries(rows), torch.eye(8).unsqueeze(0))
    assert SnapKV(kernel=1).select(kv, Budget(1, 2)).index.tolist() == [[0, 6, 7]]
    assert SnapKV(window=1, kernel=1).select(kv, Budget(1, 2)).index.tolist() == [[5, 6, 7]]


def test_snapkv_pooling_values() -> None:
    votes = torch.tensor([[0.15, 0.15, 0.40, 0.15, 0.15, 0.50]])
    assert torch.allclose(smooth(votes, 5, "avg"), torch.tensor([[0.14, 0.17, 0.20, 0.27, 0.24, 0.16]]))
    assert torch.allclose(smooth(votes, 3, "max"), torch.tensor([[0.15, 0.40, 0.40, 0.40, 0.50, 0.50]]))


def test_snapkv_max_pooling_selection() -> None:
    # max pool k3 of .15 .15 .40 .15 .15 .50 -> .15 .40 .40 .40 .50 .50; with hh = 1 the
    # winner is the first of the .50 plateau reached by topk: j4 or j5, and never j2
    idx = SnapKV(kernel=3, pooling="max").select(eight_kv(), Budget(1, 2)).index.tolist()[0]
    assert idx[1:] == [6, 7] and idx[0] in (4, 5)


# ---------------------------------------------------------------- ReCo
# On SIX, count[j] = 6 - j:
#   mean  j0 .3458  j1 .2150  j2 .2063  j3 .5750  j4 .1000  j5 .1000
#   std   j0 .3242  j1 .1530  j2 .1699  j3 .0540  j4 0      j5 0
def test_reco_std_filter_protects_high_variance_tokens() -> None:
    # budget 3 (hh 2, R 1), one sink: protected j0, j5; E = 3; pool = E + int(.1 * 3) = 3
    # lowest-std unprotected: j4, j3, j1 -> all three evicted although j3 has the top mean
    sel = ReCo(sinks=1).select(six_kv(), Budget(2, 1))
    assert sel.index.tolist() == [[0, 2, 5]]


def test_reco_wide_pool_falls_back_to_lowest_mean() -> None:
    # std_pool_ratio .5: pool = 3 + int(1.5) = 4 = every unprotected token;
    # the three lowest means j4 .1, j2 .2063, j1 .215 go
    sel = ReCo(sinks=1, std_pool_ratio=0.5).select(six_kv(), Budget(2, 1))
    assert sel.index.tolist() == [[0, 3, 5]]


def test_reco_sinks_are_kept() -> None:
    # two sinks: protected j0, j1, j5; E = 3 = every unprotected token but one; pool of
    # 3 + 0 among j2, j3, j4 -> all evicted: only the sinks and the recent token remain
    assert ReCo(sinks=2).select(six_kv(), Budget(2, 1)).index.tolist() == [[0, 1, 5]]


# ---------------------------------------------------------------- LOOK-M selection
def test_lookm_plain_keeps_sinks_inside_the_budget() -> None:
    # H2O top two of j0..j4 are j0, j3; two sinks take the whole hh room instead
    assert LookM(sinks=0).select(six_kv(), Budget(2, 1)).index.tolist() == [[0, 3, 5]]
    assert LookM(sinks=2).select(six_kv(), Budget(2, 1)).index.tolist() == [[0, 1, 5]]
    assert LookM(sinks=2).select(six_kv(), Budget(3, 1)).index.tolist() == [[0, 1, 3, 5]]


def test_lookm_text_prior_keeps_every_text_token() -> None:
    # text j1, j2 (+ the recent j5): both kept before any visual; room 3 - 2 = 1 goes to the
    # best visual candidate j0 (2.075) over j3 (1.725)
    vis = [True, False, False, True, True, False]
    sel = LookM(text_prior=True, sinks=0).select(six_kv(visual=vis), Budget(3, 1))
    assert sel.index.tolist() == [[0, 1, 2, 5]]
    # more text (j1, j2, j4) than hh = 2: all text kept, the budget overshoots by one
    vis = [True, False, False, True, False, True]
    sel = LookM(text_prior=True, sinks=0).select(six_kv(visual=vis), Budget(2, 1))
    assert sel.index.tolist() == [[1, 2, 4, 5]]


# ---------------------------------------------------------------- LOOK-M merging
# Seven tokens, zero queries (uniform attention: H2O keeps the earliest), hh 2, R 1:
# kept j0, j1, j6; evicted j2..j5. Keys (2-D) and their cosine pivots:
#   k0 [1 0]  k1 [0 1]  k6 [0 -1]
#   k2 [3 4]  -> k1, s .8      k3 [4 3]   -> k0, s .8
#   k4 [-4 -3] -> k6, s .6     k5 [3 -4]  -> k6, s .8
# values v_j = [j, j^2].
MERGE_KEYS = torch.tensor([[1, 0], [0, 1], [3, 4], [4, 3], [-4, -3], [3, -4], [0, -1]], dtype=torch.float32)
MERGE_VALUES = torch.tensor([[j, j * j] for j in range(7)], dtype=torch.float32)


def merged(merge: str, text_prior: bool = False, visual: list[bool] | None = None):
    kv = layer_kv(torch.zeros(1, 7, 2), MERGE_KEYS[None], MERGE_VALUES[None], visual=visual)
    return LookM(merge=merge, text_prior=text_prior, sinks=0).select(kv, Budget(2, 1))


def test_lookm_average_merge() -> None:
    sel = merged("average")
    assert sel.index.tolist() == [[0, 1, 6]]
    # k0' = (k0 + k3)/2, k1' = (k1 + k2)/2, k6' = (k6 + k4 + k5)/3
    assert torch.allclose(sel.keys[0], torch.tensor([[2.5, 1.5], [1.5, 2.5], [-1 / 3, -8 / 3]]))
    assert torch.allclose(sel.values[0], torch.tensor([[1.5, 4.5], [1.5, 2.5], [5.0, 77 / 3]]))


def test_lookm_weighted_merge() -> None:
    sel = merged("weighted")
    # k0' = (k0 + .8 k3)/2, k1' = (k1 + .8 k2)/2, k6' = (k6 + .6 k4 + .8 k5)/3
    assert torch.allclose(sel.keys[0], torch.tensor([[2.1, 1.2], [1.2, 2.1], [0.0, -2.0]]), atol=1e-6)
    # v0' = (v0 + .8 v3)/2, v1' = (v1 + .8 v2)/2, v6' = (v6 + .6 v4 + .8 v5)/3
    assert torch.allclose(sel.values[0], torch.tensor([[1.2, 3.6], [1.3, 2.1], [12.4 / 3, 65.6 / 3]]))


def test_lookm_pivotal_merge() -> None:
    sel = merged("pivotal")
    # k0' = (k0 + (k3 + k0)/2)/2, k1' = (k1 + (k2 + k1)/2)/2,
    # k6' = (k6 + (k4 + k6)/2 + (k5 + k6)/2)/3
    assert torch.allclose(sel.keys[0], torch.tensor([[1.75, 0.75], [0.75, 1.75], [-1 / 6, -11 / 6]]))
    assert torch.allclose(sel.values[0], torch.tensor([[0.75, 2.25], [1.25, 1.75], [5.5, 92.5 / 3]]))


def test_lookm_text_prior_merge() -> None:
    # text j3, j5 ranked first: kept j3, j5, j6; evicted j0, j1, j2, j4 with pivots
    #   k0 [1 0]: k3 .8, k5 .6 -> k3     k1 [0 1]: k3 .6, k5 -.8, k6 -1 -> k3
    #   k2 [3 4]: k3 .96 -> k3           k4 [-4 -3]: k3 -1, k5 0, k6 .6 -> k6
    vis = [True, True, True, False, True, False, True]
    sel = merged("average", text_prior=True, visual=vis)
    assert sel.index.tolist() == [[3, 5, 6]]
    k3 = (MERGE_KEYS[3] + MERGE_KEYS[0] + MERGE_KEYS[1] + MERGE_KEYS[2]) / 4
    k6 = (MERGE_KEYS[6] + MERGE_KEYS[4]) / 2
    assert torch.allclose(sel.keys[0], torch.stack([k3, MERGE_KEYS[5], k6]))
    assert torch.allclose(sel.keys[0], torch.tensor([[2.0, 2.0], [3.0, -4.0], [-2.0, -2.0]]))
    assert torch.allclose(sel.values[0], torch.tensor([[1.5, 3.5], [5.0, 25.0], [5.0, 26.0]]))


def test_lookm_chunked_pairing_matches_one_chunk() -> None:
    whole = merged("weighted")
    kv = layer_kv(torch.zeros(1, 7, 2), MERGE_KEYS[None], MERGE_VALUES[None])
    chunked = LookM(merge="weighted", sinks=0, chunk_size=1).select(kv, Budget(2, 1))
    assert torch.equal(whole.keys, chunked.keys) and torch.equal(whole.values, chunked.values)


# ---------------------------------------------------------------- StreamingLLM
def blank_kv(length: int, heads: int = 2, layer: int = 0) -> LayerKV:
    """Zero keys and queries: a method that reads them would see ties everywhere."""
    kv = layer_kv(torch.zeros(heads, length, 2), torch.zeros(heads, length, 2))
    kv.layer_idx = layer
    return kv


def test_streamingllm_keeps_sinks_then_the_most_recent() -> None:
    # total 3 + 2 = 5 of 10: two sinks j0, j1, then the last 5 - 2 = 3, in every head
    sel = StreamingLLM(sinks=2).select(blank_kv(10), Budget(selected=3, recent=2))
    assert sel.index.tolist() == [[0, 1, 7, 8, 9]] * 2
    assert StreamingLLM(sinks=0).select(blank_kv(10), Budget(3, 2)).index.tolist() == [[5, 6, 7, 8, 9]] * 2
    # more sinks than the budget: the budget is all sinks
    assert StreamingLLM(sinks=8).select(blank_kv(10), Budget(3, 2)).index.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_streamingllm_default_sinks_and_budget_fields() -> None:
    # L 40, budget .25 / recent .1: hh 6 + R 4 = 10 kept = 4 sinks + the last 6
    sel = StreamingLLM(budget=0.25, recent_ratio=0.1)(blank_kv(40))
    assert sel.index.tolist() == [[0, 1, 2, 3, 34, 35, 36, 37, 38, 39]] * 2


# ---------------------------------------------------------------- random
def test_random_eviction_pinned_draw() -> None:
    # seed 0, layer 0, hh 3 of the candidates j0..j7, then the last R = 2
    sel = RandomEviction(seed=0).select(blank_kv(10), Budget(selected=3, recent=2))
    assert sel.index.tolist() == [[0, 5, 7, 8, 9], [0, 5, 6, 8, 9]]


def test_random_eviction_is_a_function_of_seed_layer_and_head() -> None:
    def pick(seed: int = 0, layer: int = 0, kv: LayerKV | None = None) -> list[list[int]]:
        kv = kv or blank_kv(30, layer=layer)
        return RandomEviction(seed=seed).select(kv, Budget(6, 3)).index.tolist()

    first = pick()
    assert pick() == first  # a rerun keeps the same positions
    # whatever the keys and queries say
    noisy = layer_kv(torch.randn(2, 30, 4), torch.randn(2, 30, 4))
    assert pick(kv=noisy) == first
    assert first[0] != first[1]  # heads draw independently
    assert pick(layer=1) != first and pick(seed=1) != first
    for row in first:
        assert row[-3:] == [27, 28, 29] and all(p < 27 for p in row[:-3]) and row == sorted(set(row))


def test_random_eviction_is_uniform_over_the_candidates() -> None:
    # hh 2 of 8 candidates over 2000 seeds: each candidate kept with probability 1/4
    # (standard error .01); a draw biased to early or high positions is far outside .05
    counts = torch.zeros(10)
    for seed in range(2000):
        idx = RandomEviction(seed=seed).select(blank_kv(10, heads=1), Budget(2, 2)).index[0]
        counts[idx] += 1
    freq = counts / 2000
    assert torch.allclose(freq[:8], torch.full((8,), 0.25), atol=0.05), freq
    assert freq[8:].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: H2O(chunk_size=0), "chunk_size"),
        (lambda: SnapKV(kernel=4), "kernel"),
        (lambda: SnapKV(pooling="median"), "pooling"),
        (lambda: SnapKV(window=0), "window"),
        (lambda: SnapKV(recent_ratio=0.0), "window"),
        (lambda: ReCo(sinks=-1), "sinks"),
        (lambda: ReCo(std_pool_ratio=-0.1), "std_pool_ratio"),
        (lambda: LookM(merge="mean"), "merge"),
        (lambda: LookM(chunk_size=-3), "chunk_size"),
        (lambda: H2O(budget=1.5), "budget"),
        (lambda: StreamingLLM(sinks=-1), "sinks"),
        (lambda: RandomEviction(seed=-2), "seed"),
    ],
)
def test_bad_configuration_is_named(make, field) -> None:
    with pytest.raises(ConfigError, match=field):
        make()


def test_reco_statistics_by_hand() -> None:
    from baselines.reco import mean_and_std

    mean, std = mean_and_std(six_kv(), chunk_size=4)
    assert torch.allclose(mean[0], torch.tensor([2.075 / 6, 1.075 / 5, 0.825 / 4, 1.725 / 3, 0.1, 0.1]))
    sq = [1.348125 / 6, 0.348125 / 5, 0.285625 / 4, 1.000625 / 3, 0.01, 0.01]
    want = [math.sqrt(max(s - m * m, 0.0)) for s, m in zip(sq, mean[0].tolist())]
    assert torch.allclose(std[0], torch.tensor(want), atol=1e-3)


# ---------------------------------------------------------------- configs
def test_every_method_config_follows_the_shared_budget() -> None:
    """`method=<name> budget=.. recent_ratio=..` composes for every registered method, the one
    override reaches it, and its other fields are the config's."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from csp.engine.registry import method_class, method_config, method_names

    configs = Path(__file__).resolve().parents[1] / "configs"
    # what a few config names promise beyond their file (the LOOK-M variant letters)
    expected = {
        "h2o": (H2O, {}), "snapkv": (SnapKV, {"kernel": 5, "pooling": "avg", "window": None}),
        "reco": (ReCo, {"sinks": 4, "std_pool_ratio": 0.1}),
        "lookm-a": (LookM, {"merge": "average", "text_prior": False}),
        "lookm-w": (LookM, {"merge": "weighted", "text_prior": False}),
        "lookm-p": (LookM, {"merge": "pivotal", "text_prior": False}),
        "lookm-tp-a": (LookM, {"merge": "average", "text_prior": True}),
        "lookm-tp-w": (LookM, {"merge": "weighted", "text_prior": True}),
        "lookm-tp-p": (LookM, {"merge": "pivotal", "text_prior": True}),
        "random": (RandomEviction, {"seed": 0}), "streamingllm": (StreamingLLM, {"sinks": 4}),
    }
    names = [n for n in method_names() if n != "full"]
    assert set(expected) <= set(names)
    with initialize_config_dir(str(configs), version_base="1.3"):
        for name in names:
            cls, fields = expected.get(name, (method_class(name), {}))
            own = method_config(name)
            fields = {**{k: v for k, v in own.items() if k not in ("_target_", "budget", "recent_ratio",
                                                                  "budget_tokens")}, **fields}
            cfg = compose("config", overrides=[f"method={name}", "budget=0.3", "recent_ratio=0.05"])
            method = instantiate(cfg.method)
            assert type(method) is cls, name
            assert (method.budget, method.recent_ratio, method.budget_tokens) == (0.3, 0.05, None), name
            assert method.split_budget(100) == Budget(25, 5), name
            for field, value in fields.items():
                assert getattr(method, field) == value, (name, field)
            cfg = compose("config", overrides=[f"method={name}", "budget_tokens=64"])
            assert instantiate(cfg.method).split_budget(1000) == Budget(32, 32), name


def test_the_budget_fields_are_written_once() -> None:
    """Every method but the full cache takes the budget fields from the one shared node
    (configs/shared/budget.yaml, directly or through LOOK-M's shared node); no method file
    writes them itself, so one override changes every method alike."""
    from omegaconf import OmegaConf

    from csp.engine.registry import CONFIGS, method_names

    shared = OmegaConf.load(CONFIGS / "shared" / "budget.yaml")
    assert set(shared) == {"budget", "recent_ratio", "budget_tokens"}
    assert OmegaConf.load(CONFIGS / "shared" / "lookm.yaml").defaults[0] == "budget"
    for name in method_names():
        own = OmegaConf.load(CONFIGS / "method" / f"{name}.yaml")
        assert not {"budget", "recent_ratio", "budget_tokens"} & set(own), name
        if name != "full":
            assert own.defaults[0] in ("/shared/budget@_here_", "/shared/lookm@_here_"), name
    lookm = [n for n in method_names() if n.startswith("lookm-")]
    assert len(lookm) == 6
    for name in lookm:  # a variant is its two letters, nothing else
        assert set(OmegaConf.load(CONFIGS / "method" / f"{name}.yaml")) == {"defaults", "merge", "text_prior"}, name


def test_snapkv_grouped_query_heads_are_averaged() -> None:
    # two query heads share one KV head; kernel 1, window 2 (q6, q7), hh 1:
    #   head A (EIGHT): votes j0 .15 ... j2 .40 ... j5 .50
    #   head B: q6 [1 1 1 1 1 1 4]/10, q7 [1 1 26 1 1 1 1 1]/33 -> j2 .1 + .7879, j5 .1 + .0303
    #   averaged: j2 (.40 + .8879)/2 = .644 > j5 (.50 + .1303)/2 = .315 -> keep j2
    # (head A alone keeps j5)
    head_b = EIGHT[:7] + [[1, 1, 26, 1, 1, 1, 1, 1]]
    q = torch.cat([weighted_queries(EIGHT), weighted_queries(head_b)])
    kv = layer_kv(q, torch.eye(8).unsqueeze(0))
    assert SnapKV(kernel=1).select(kv, Budget(1, 2)).index.tolist() == [[2, 6, 7]]
    assert SnapKV(kernel=1).select(eight_kv(), Budget(1, 2)).index.tolist() == [[5, 6, 7]]


def test_chunked_column_sums_equal_the_whole_attention_map() -> None:
    from csp.engine.attention import column_sums

    gen = torch.Generator().manual_seed(3)
    for group in (1, 3):
        q, k = torch.randn(2 * group, 37, 8, generator=gen), torch.randn(2, 37, 8, generator=gen)
        # the whole causal map at once, group-averaged, as a reference for the chunked sums
        logits = torch.einsum("hqd,hkd->hqk", q, k.repeat_interleave(group, dim=0)) * 0.35
        logits = logits.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.softmax(logits, dim=-1).view(2, group, 37, 37).mean(dim=1)
        for chunk in (1, 5, 64):
            lean = column_sums(q, k, 0.35, chunk=chunk, squares=True)
            assert torch.allclose(lean.total, a.sum(dim=1), atol=1e-5)
            assert torch.allclose(lean.total_sq, a.square().sum(dim=1), atol=1e-5)
            assert torch.equal(lean.count, torch.arange(37, 0, -1).float())
