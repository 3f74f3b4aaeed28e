"""The methods added beyond the paper's Table 1, on hand-made tensors: kept indices (and per-layer
or per-head budgets) computed by hand. Helpers and the one-hot attention trick come from
test_baselines.py: with keys = identity and scaling 1, a query row log(w) attends to key j
with weight w[j] / sum_{j' <= q} w[j']."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.adakv import AdaKV, adaptive_choice
from baselines.fastv import FastV, kept_image_tokens
from baselines.knorm import KNorm
from baselines.pyramidkv import PyramidKV, pyramid_budgets
from baselines.tova import TOVA
from baselines.vlcache import VLCache, post_vision_queries, post_vision_stats
from csp.engine.method import Budget, ConfigError
from csp.engine.select import apportion
from test_baselines import EIGHT, layer_kv, weighted_queries


# ---------------------------------------------------------------- TOVA
def eight(rows: list[list[float]] = EIGHT):
    return layer_kv(weighted_queries(rows), torch.eye(8).unsqueeze(0))


def test_tova_keeps_what_the_last_query_attends_to() -> None:
    # q7 weights [1 1 6 1 1 8 1 1] / 20: candidates j0..j5 get .05 .05 .30 .05 .05 .40
    assert TOVA().select(eight(), Budget(selected=2, recent=2)).index.tolist() == [[2, 5, 6, 7]]
    assert TOVA().select(eight(), Budget(1, 2)).index.tolist() == [[5, 6, 7]]


def test_tova_ignores_every_earlier_query() -> None:
    # q6 now leans on j0 ([10 1 1 1 1 1 5] / 20): a two-query window (SnapKV) would keep j0;
    # the last query alone still keeps j5
    rows = EIGHT[:6] + [[10, 1, 1, 1, 1, 1, 5], EIGHT[7]]
    assert TOVA().select(eight(rows), Budget(1, 2)).index.tolist() == [[5, 6, 7]]


def test_tova_averages_the_query_heads_of_a_group() -> None:
    # head B's last query [1 1 26 1 1 1 1 1] / 33: j2 .788, j5 .030; head A: j2 .30, j5 .40.
    # Averaged j2 .544 > j5 .215 -> keep j2 (head A alone keeps j5)
    head_b = EIGHT[:7] + [[1, 1, 26, 1, 1, 1, 1, 1]]
    q = torch.cat([weighted_queries(EIGHT), weighted_queries(head_b)])
    kv = layer_kv(q, torch.eye(8).unsqueeze(0))
    assert TOVA().select(kv, Budget(1, 2)).index.tolist() == [[2, 6, 7]]


def test_tova_ranks_once_per_layer_over_all_heads_by_default() -> None:
    # two KV heads of one query head each, last queries as above: head 0 alone keeps j5 (.40 over
    # j2 .30), head 1 alone keeps j2 (.788 over j5 .030). TOVA's code averages the last query's
    # attention over all heads (j2 .544, j5 .215): both heads keep j2. heads="group": each its own
    head_b = EIGHT[:7] + [[1, 1, 26, 1, 1, 1, 1, 1]]
    q = torch.cat([weighted_queries(EIGHT), weighted_queries(head_b)])
    kv = layer_kv(q, torch.eye(8).unsqueeze(0).repeat(2, 1, 1))
    assert TOVA().select(kv, Budget(1, 2)).index.tolist() == [[2, 6, 7], [2, 6, 7]]
    assert TOVA(heads="group").select(kv, Budget(1, 2)).index.tolist() == [[5, 6, 7], [2, 6, 7]]


def test_tova_without_a_recent_window_is_the_authors_top_k_over_all_keys() -> None:
    # recent_ratio 0: the top 2 of all eight keys by q7's [1 1 6 1 1 8 1 1] / 20 are j2, j5 (the
    # last token itself, .05, goes as in TOVA's own cache)
    tova = TOVA(budget_tokens=2, budget=0.2, recent_ratio=0.0)
    assert tova(eight()).index.tolist() == [[2, 5]]


# ---------------------------------------------------------------- K-norm
def test_knorm_keeps_the_smallest_key_norms() -> None:
    # two KV heads, seven 2-D keys each; the last two are the recent window.
    # head 0 norms: j0 3, j1 1, j2 4, j3 1.061 ([.75 .75]: its largest coordinate, .75, is the
    #   smallest of all, so a max-coordinate rule would pick it first), j4 2
    # head 1 norms: j0 1, j1 5, j2 2, j3 6, j4 .1
    keys = torch.tensor([
        [[3.0, 0.0], [1.0, 0.0], [0.0, 4.0], [0.75, 0.75], [-2.0, 0.0], [9.0, 0.0], [0.0, 9.0]],
        [[0.6, -0.8], [-3.0, 4.0], [0.0, 2.0], [4.8, 3.6], [-0.06, -0.08], [0.2, 0.0], [0.0, 0.2]],
    ])
    kv = layer_kv(torch.randn(2, 7, 2), keys)
    assert KNorm().select(kv, Budget(selected=1, recent=2)).index.tolist() == [[1, 5, 6], [4, 5, 6]]
    assert KNorm().select(kv, Budget(2, 2)).index.tolist() == [[1, 3, 5, 6], [0, 4, 5, 6]]
    assert KNorm().select(kv, Budget(3, 2)).index.tolist() == [[1, 3, 4, 5, 6], [0, 2, 4, 5, 6]]


# ---------------------------------------------------------------- shared: apportioning a total
def test_apportion_by_largest_remainder_and_caps() -> None:
    # shares 19.5, 13.17, 6.83, .5 of 40: floors 19 13 6 0 (38), the two largest remainders
    # (.83 of the third, then the tie .5 / .5 to the earlier) get one more each
    assert apportion([19.5, 13 + 1 / 6, 6 + 5 / 6, 0.5], 40, cap=100) == [20, 13, 7, 0]
    # the first wants 15 of 20 but may hold 12; the other takes the rest
    assert apportion([3, 1], 20, cap=12) == [12, 8]
    assert apportion([0, 0, 0], 4, cap=2) == [2, 1, 1]  # no weight: equal shares
    with pytest.raises(ValueError, match="cannot apportion"):
        apportion([1, 1], 5, cap=2)


# ---------------------------------------------------------------- PyramidKV
def test_pyramid_schedule_by_hand() -> None:
    # hh 10, 4 layers, beta 20: top 10/20 = .5, bottom 20 - .5 = 19.5, step 19/3:
    # 19.5 13.17 6.83 .5 (sum 40) -> 20 13 7 0
    assert pyramid_budgets(10, 4, 20, cap=1000) == [20, 13, 7, 0]
    # beta 2: top 5, bottom 15 -> 15 11.67 8.33 5 -> 15 12 8 5
    assert pyramid_budgets(10, 4, 2, cap=1000) == [15, 12, 8, 5]
    assert pyramid_budgets(10, 4, 1, cap=1000) == [10, 10, 10, 10]  # beta 1: uniform
    # the bottom layer wants 19.5 of 12 candidates: capped, its excess goes up
    assert pyramid_budgets(10, 2, 20, cap=12) == [12, 8]
    assert pyramid_budgets(7, 1, 20, cap=100) == [7]


# Distinct window votes: q6 weights [1 2 3 4 5 6 7] / 28, q7 [1 1 6 1 1 8 1 1] / 20; summed for
# j0..j5: .086 .121 .407 .193 .229 .614 -> ranking j5 j2 j4 j3 j1 j0
DISTINCT = EIGHT[:6] + [[1, 2, 3, 4, 5, 6, 7], EIGHT[7]]


def test_pyramidkv_gives_the_lower_layer_more() -> None:
    # hh 2 in 2 layers, beta 20: 3.9 and .1 -> 4 and 0 (the total 4 is kept)
    sels = [PyramidKV(kernel=1).select(dataclasses.replace(eight(DISTINCT), layer_idx=i, num_layers=2), Budget(2, 2))
            for i in range(2)]
    assert [s.index.tolist() for s in sels] == [[[2, 3, 4, 5, 6, 7]], [[6, 7]]]
    # uniform (beta 1) is SnapKV: j5 and j2 in both layers
    kv = dataclasses.replace(eight(DISTINCT), layer_idx=1, num_layers=2)
    assert PyramidKV(kernel=1, beta=1).select(kv, Budget(2, 2)).index.tolist() == [[2, 5, 6, 7]]
    # a lone layer (num_layers 1) is SnapKV too
    assert PyramidKV(kernel=1).select(eight(DISTINCT), Budget(2, 2)).index.tolist() == [[2, 5, 6, 7]]


# ---------------------------------------------------------------- Ada-KV
# Candidate votes of two heads: A concentrated on one key, B spread.
VOTES = torch.tensor([[0.05, 0.10, 0.60, 0.09, 0.02, 0.08],
                      [0.22, 0.19, 0.17, 0.13, 0.11, 0.18]])


def kept(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().squeeze(-1).tolist() for row in mask]


def test_adakv_pools_the_heads_votes() -> None:
    # hh 3 per head: the top 6 of all twelve votes are .60 (A) then .22 .19 .18 .17 .13 (B)
    assert kept(adaptive_choice(VOTES, 3, floor=0)) == [[2], [0, 1, 2, 3, 5]]
    # safeguard 2: A first keeps its own best two (j2, j1), B its (j0, j1); the last two
    # of the six go to the best remaining votes, B's .18 (j5) and .17 (j2)
    assert kept(adaptive_choice(VOTES, 3, floor=2)) == [[1, 2], [0, 1, 2, 5]]
    # a floor of the whole budget is the uniform top-3 per head
    assert kept(adaptive_choice(VOTES, 3, floor=3)) == [[1, 2, 3], [0, 1, 5]]


def test_adakv_selection_through_attention() -> None:
    # head A attends like DISTINCT (window votes for j0..j5: .086 .121 .407 .193 .229 .614),
    # head B uniformly (zero queries: q6 1/7 + q7 1/8 = .268 for each of j0..j5). hh 4 per
    # head, kernel 1, no floor: the top 8 pooled votes are A's .614 .407 and B's six .268s
    q = torch.cat([weighted_queries(DISTINCT), torch.zeros(1, 8, 8)])
    kv = layer_kv(q, torch.eye(8).expand(2, -1, -1))
    sel = AdaKV(kernel=1, floor_ratio=0.0).select(kv, Budget(4, 2))
    assert sel.index.shape == (2, 8)  # padded to head B's 6 + 2
    rows = [idx[ok].tolist() for idx, ok in zip(sel.index, sel.valid)]
    assert rows == [[2, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]]
    # a floor of the whole hh is the uniform top 4 per head: A j5 j2 j4 j3
    sel = AdaKV(kernel=1, floor_ratio=1.0).select(kv, Budget(4, 2))
    assert sel.valid is None and sel.index[0].tolist() == [2, 3, 4, 5, 6, 7]
    assert sel.index[1].tolist()[-2:] == [6, 7] and len(set(sel.index[1].tolist())) == 6


# ---------------------------------------------------------------- VL-Cache
# Six tokens, text j0, image j1 j2 j3, text j4 j5: the post-vision queries are q4 and q5.
#   layer A: q4 [1 1 1 1 6] / 10 -> .1 .1 .1 .1 .6;  q5 [1 2 1 1 1 4] / 10 -> .1 .2 .1 .1 .1 .4
#            scores j0..j5: .2 .3 .2 .2 .7 .4
#            p = .2: q4's cut is .12 (four of its five keys fall below), q5's .08 (none):
#            sparsity 4 / 11, density 7 / 11
#   layer B: q4 [2 3 4 5 6] / 20 -> .1 .15 .2 .25 .3;  q5 uniform 1/6: nothing below the cuts,
#            density 1; scores j0..j4: .267 .317 .367 .417 .467
VISION = [False, True, True, True, False, False]
LAYER_A = [[1]] * 4 + [[1, 1, 1, 1, 6], [1, 2, 1, 1, 1, 4]]
LAYER_B = [[1]] * 4 + [[2, 3, 4, 5, 6], [1] * 6]


def vision_kv(rows: list[list[float]], layer: int = 0, layers: int = 1):
    kv = layer_kv(weighted_queries(rows), torch.eye(6).unsqueeze(0), visual=VISION)
    return dataclasses.replace(kv, layer_idx=layer, num_layers=layers)


def test_vlcache_post_vision_queries() -> None:
    assert post_vision_queries(torch.tensor(VISION)) == 2
    assert post_vision_queries(torch.tensor([False, True, True])) == 1  # ends on the image: the last
    assert post_vision_queries(torch.tensor([True, False, False, False])) == 3


def test_vlcache_scores_and_sparsity_by_hand() -> None:
    stats = post_vision_stats(vision_kv(LAYER_A), threshold=0.2, chunk=512)
    assert torch.allclose(stats.scores, torch.tensor([[0.2, 0.3, 0.2, 0.2, 0.7, 0.4]]))
    assert abs(stats.density - 7 / 11) < 1e-9
    chunked = post_vision_stats(vision_kv(LAYER_A), threshold=0.2, chunk=1)  # one query at a time
    assert torch.allclose(chunked.scores, stats.scores) and chunked.density == stats.density
    assert post_vision_stats(vision_kv(LAYER_A), threshold=0.01, chunk=512).density == 1.0
    assert post_vision_stats(vision_kv(LAYER_B), threshold=0.2, chunk=512).density == 1.0


def test_vlcache_gives_the_denser_layer_more() -> None:
    # hh 3 (budget_tokens 4, R 1) in each of 2 layers = 6 in all, shared 7/11 : 1 ->
    # 2.33 and 3.67 -> 2 and 4. Layer A keeps its top 2 of j0..j4 (j4 .7, j1 .3), layer B
    # its top 4 (j4 j3 j2 j1), each then the last token j5
    method = VLCache(budget=0.5, recent_ratio=0.125, budget_tokens=4, sparsity_threshold=0.2)
    assert method.split_budget(6) == Budget(3, 1)
    sels = method.prune_layers([vision_kv(LAYER_A, 0, 2), vision_kv(LAYER_B, 1, 2)])
    assert [s.index.tolist() for s in sels] == [[[1, 4, 5]], [[1, 2, 3, 4, 5]]]
    # alike layers share alike: p = .01 sees both layers dense, 3 and 3
    sels = dataclasses.replace(method, sparsity_threshold=0.01).prune_layers(
        [vision_kv(LAYER_A, 0, 2), vision_kv(LAYER_B, 1, 2)])
    assert sels[1].index.tolist() == [[2, 3, 4, 5]]
    assert sels[0].index.shape == (1, 4) and {1, 4, 5} <= set(sels[0].index[0].tolist())  # + one of three .2s
    # a prompt without an image is kept whole in every layer (the shared rule)
    text = [dataclasses.replace(vision_kv(LAYER_A, i, 2), visual=torch.zeros(6, dtype=torch.bool)) for i in range(2)]
    assert [s.index.tolist() for s in method.prune_layers(text)] == [[list(range(6))]] * 2


# ---------------------------------------------------------------- FastV
# Seven tokens, text j0, image j1..j4, text j5 j6. Column sums of the attention received:
#   q3 [1 4 1 1], q5 [1 1 1 6 1 1], q6 [1 1 3 1 1 1 1], the others uniform:
#   j1 1.807, j2 1.100, j3 1.000, j4 .402 (j0 2.378, j5 .202, j6 .111)
FAST = [[1], [1, 1], [1, 1, 1], [1, 4, 1, 1], [1] * 5, [1, 1, 1, 6, 1, 1], [1, 1, 3, 1, 1, 1, 1]]
FAST_VISION = [False, True, True, True, True, False, False]


def fast_layers(n: int, rows: list[list[float]] = FAST, visual: list[bool] = FAST_VISION) -> list:
    kv = layer_kv(weighted_queries(rows), torch.eye(len(rows)).unsqueeze(0), visual=visual)
    return [dataclasses.replace(kv, layer_idx=i, num_layers=n) for i in range(n)]


def dropped(method: FastV, kv) -> list[int]:
    return method.prefill_mask(kv).nonzero().squeeze(-1).tolist()


def test_fastv_drops_the_least_attended_image_tokens_after_layer_k() -> None:
    layers = fast_layers(4)
    every = FastV(rank="all")
    # layer K - 1 = 1 names half of the four image tokens: the two least attended, j4 and j3
    assert every.prefill_mask(layers[1]).tolist() == [False, False, False, True, True, False, False]
    assert every.prefill_mask(layers[0]) is None and every.prefill_mask(layers[2]) is None
    assert dropped(FastV(rank="all", ratio=0.75), layers[1]) == [2, 3, 4]
    assert dropped(FastV(rank="all", layer=1), layers[0]) == [3, 4]
    # over the layers: K = 2 layers keep everything, the later ones all but j3 and j4
    kept = [s.index.tolist() for s in every.prune_layers(layers)]
    assert kept == [[list(range(7))]] * 2 + [[[0, 1, 2, 5, 6]]] * 2
    # all heads averaged: a second KV head whose queries from q4 on put 30 on j4 receives
    # j1 1.169, j2 .669, j3 .336, j4 2.572; the mean j1 1.488, j2 .885, j3 .668, j4 1.487 keeps j1, j4
    rows_b = [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1, 30], [1, 1, 1, 1, 30, 1], [1, 1, 1, 1, 30, 1, 1]]
    q = torch.cat([weighted_queries(FAST), weighted_queries(rows_b)])
    kv = layer_kv(q, torch.eye(7).unsqueeze(0).repeat(2, 1, 1), visual=FAST_VISION)
    assert dropped(every, dataclasses.replace(kv, layer_idx=1, num_layers=3)) == [2, 3]


# The last row now [1 2 5 3 1 1 1] / 14: from the last token alone j1 .143, j2 .357, j3 .214,
# j4 .071; column sums of every token j1 1.839, j2 1.124, j3 1.103, j4 .362.
LAST = FAST[:6] + [[1, 2, 5, 3, 1, 1, 1]]


def test_fastv_ranks_by_the_last_token_as_the_authors_code_does() -> None:
    layers = fast_layers(3, LAST)
    assert FastV().rank == "last"
    assert dropped(FastV(), layers[1]) == [1, 4]  # keeps j2, j3: the last token's two largest
    assert dropped(FastV(rank="all"), layers[1]) == [3, 4]  # keeps j1, j2: all tokens' two largest
    # all heads averaged: a second KV head whose last row is [1 1 1 1 20 1 1] / 26 (j4 .769, the
    # other image tokens .038) gives j1 .091, j2 .198, j3 .126, j4 .420: j2 and j4 stay, in both heads
    head_b = LAST[:6] + [[1, 1, 1, 1, 20, 1, 1]]
    q = torch.cat([weighted_queries(LAST), weighted_queries(head_b)])
    kv = layer_kv(q, torch.eye(7).unsqueeze(0).repeat(2, 1, 1), visual=FAST_VISION)
    assert dropped(FastV(), dataclasses.replace(kv, layer_idx=1, num_layers=3)) == [1, 3]


@pytest.mark.parametrize("n_image, ratio, n_drop", [
    (5, 0.5, 3),   # round(2.5) = 2 kept (half to even): one more dropped than int(0.5 * 5) = 2
    (7, 0.5, 3),   # round(3.5) = 4 kept
    (6, 0.25, 2),  # round(4.5) = 4 kept, where int(0.25 * 6) would drop 1
    (4, 0.5, 2),
    (577, 0.5, 289),  # LLaVA's 576 plus one: 288 kept
])
def test_fastv_keeps_round_of_the_image_tokens_as_the_authors_code(n_image, ratio, n_drop) -> None:
    assert n_image - kept_image_tokens(n_image, ratio) == n_drop
    # on a prompt: text j0, n_image image tokens, text, text; the last token's weights over the
    # image tokens 2, 3, ..., n_image + 1 (the first image token least attended)
    length = n_image + 3
    rows = [[1.0] * (i + 1) for i in range(length - 1)]
    rows.append([1.0] + [float(w) for w in range(2, n_image + 2)] + [1.0, 1.0])
    visual = [False] + [True] * n_image + [False, False]
    layers = fast_layers(3, rows, visual)
    assert dropped(FastV(ratio=ratio), layers[1]) == list(range(1, 1 + n_drop))


def test_fastv_drops_per_the_rule_on_five_image_tokens() -> None:
    # text j0, image j1..j5, text j6 j7; the last token's weights [1 6 2 5 3 4 1 1]: of five
    # image tokens round(2.5) = 2 stay (j1, j3), three go (j2, j4, j5)
    rows = [[1.0] * (i + 1) for i in range(7)] + [[1, 6, 2, 5, 3, 4, 1, 1]]
    layers = fast_layers(3, rows, [False] + [True] * 5 + [False, False])
    assert dropped(FastV(), layers[1]) == [2, 4, 5]


def test_fastv_switches_off() -> None:
    layers = fast_layers(3)
    assert FastV(ratio=0.0).prefill_mask(layers[1]) is None
    assert FastV(budget=1.0, recent_ratio=0.0).prefill_mask(layers[1]) is None  # budget 1: keep everything
    text = [dataclasses.replace(kv, visual=torch.zeros(7, dtype=torch.bool)) for kv in layers]
    assert [s.index.tolist() for s in FastV().prune_layers(text)] == [[list(range(7))]] * 3


@pytest.mark.parametrize("make, field", [
    (lambda: PyramidKV(beta=0.5), "beta"),
    (lambda: AdaKV(floor_ratio=1.5), "floor_ratio"),
    (lambda: AdaKV(recent_ratio=0.0), "window"),
    (lambda: VLCache(sparsity_threshold=0.0), "sparsity_threshold"),
    (lambda: VLCache(chunk_size=0), "chunk_size"),
    (lambda: FastV(layer=0), "layer"),
    (lambda: FastV(ratio=1.5), "ratio"),
    (lambda: FastV(rank="first"), "rank"),
    (lambda: TOVA(heads="each"), "heads"),
])
def test_bad_configuration_is_named(make, field) -> None:
    with pytest.raises(ConfigError, match=field):
        make()
