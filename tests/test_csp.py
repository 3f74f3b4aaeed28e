"""CSP on hand-made tensors: every number here is computed by hand from the spec."""
from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from csp.engine.attention import grouped_logits, n_softmax
from csp.cross_self import CrossSelfPruner
from csp.engine.method import Budget, ConfigError, LayerKV
from csp.engine.registry import method_config


def layer(keys: torch.Tensor, visual: list[bool], queries: torch.Tensor | None = None) -> LayerKV:
    """A LayerKV whose queries are given directly (post-rotary); one KV head unless keys say more."""
    q_all = queries if queries is not None else torch.zeros(keys.shape[0], keys.shape[1], keys.shape[2])

    def query_fn(last):
        return q_all if last is None else q_all[:, q_all.shape[1] - last :]

    return LayerKV(0, keys, keys.clone(), torch.tensor(visual), 1.0, query_fn)


def test_n_softmax_values():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(n_softmax(logits, 1.0), torch.tensor([[1 / 7, 2 / 7, 3 / 7]]))
    assert torch.allclose(n_softmax(logits, 0.0), torch.tensor([[1 / 6, 2 / 6, 3 / 6]]))
    assert torch.allclose(n_softmax(logits, 4.0), torch.tensor([[0.1, 0.2, 0.3]]))
    # masked keys get nothing; large logits stay finite (stable form)
    big = torch.tensor([[1000.0, 1000.0, float("-inf")]])
    assert torch.allclose(n_softmax(big, 1.0), torch.tensor([[0.5, 0.5, 0.0]]))


def test_grouped_logits_are_causal_and_group_queries():
    q = torch.ones(4, 2, 1)  # 4 query heads, window of 2 (positions 1, 2), head dim 1
    k = torch.tensor([[[1.0], [2.0], [3.0]], [[1.0], [1.0], [1.0]]])  # 2 KV heads, L = 3
    out = grouped_logits(q, k, 0.5, query_start=1)
    assert out.shape == (2, 2, 2, 3)
    assert torch.equal(out[0, 0, 0], torch.tensor([0.5, 1.0, float("-inf")]))
    assert torch.equal(out[0, 1, 1], torch.tensor([0.5, 1.0, 1.5]))


def test_cross_self_split_by_modality():
    # keys T V V T; zero logits: the window query at position 2 (visual) sees 3 keys -> 1/(1+3);
    # the one at position 3 (text) sees 4 keys -> 1/(1+4).
    kv = layer(torch.zeros(1, 4, 2), [False, True, True, False])
    s_self, s_cross = CrossSelfPruner().scores(kv, window=2)
    assert torch.allclose(s_self, torch.tensor([[0.2, 0.25, 0.25, 0.2]]))
    assert torch.allclose(s_cross, torch.tensor([[0.25, 0.2, 0.2, 0.0]]))


def test_softmax_score_fn_sums_to_window_size():
    kv = layer(torch.randn(1, 6, 4), [True, True, False, True, False, False], torch.randn(1, 6, 4))
    s_self, s_cross = CrossSelfPruner(score_fn="softmax").scores(kv, window=3)
    assert math.isclose(float((s_self + s_cross).sum()), 3.0, rel_tol=1e-5)
    s_self, s_cross = CrossSelfPruner(n=1.0).scores(kv, window=3)
    assert float((s_self + s_cross).sum()) < 3.0


def test_grouped_query_scores_average_the_group():
    keys = torch.randn(2, 5, 4)
    queries = torch.randn(4, 5, 4)
    kv = layer(keys, [True, False, True, False, False], queries)
    both = CrossSelfPruner().scores(kv, window=2)
    for h in range(2):  # KV head h is shared by query heads 2h and 2h+1
        per_head = [
            CrossSelfPruner().scores(layer(keys[h : h + 1], [True, False, True, False, False], queries[2 * h + i : 2 * h + i + 1]), 2)
            for i in range(2)
        ]
        for part in range(2):
            assert torch.allclose(both[part][h], (per_head[0][part][0] + per_head[1][part][0]) / 2, atol=1e-6)


@pytest.mark.parametrize(
    "ratio,k,expected",
    [(0.5, 100, (50, 50)), (0.1, 100, (10, 90)), (0.9, 41, (36, 4)), (1.0, 40, (40, 0)), (0.0, 40, (1, 308))],
)
def test_k_cross_k_self(ratio, k, expected):
    assert CrossSelfPruner(cross_ratio=ratio).split(k) == expected


def test_zero_ratio_quirk_can_be_turned_off():
    assert CrossSelfPruner(cross_ratio=0.0, zero_ratio_quirk=False).split(40) == (0, 40)


def scored_layer(s_self: list[float], s_cross: list[float], recent: int) -> tuple[CrossSelfPruner, LayerKV]:
    """A pruner whose scores are fixed, so that selection is checked on its own."""
    length = len(s_self) + recent
    kv = layer(torch.zeros(1, length, 2), [True] * length)

    class Fixed(CrossSelfPruner):
        def scores(self, kv, window):
            pad = [0.0] * recent
            return torch.tensor([s_self + pad]), torch.tensor([s_cross + pad])

    return Fixed, kv


def test_concat_keeps_duplicates_and_recent():
    # 6 candidates + 2 recent; k = hh + R - Rk = 4, cross ratio 0.5 -> 2 self + 2 cross.
    Fixed, kv = scored_layer([9, 8, 1, 1, 1, 1], [9, 1, 1, 7, 1, 1], recent=2)
    sel = Fixed(cross_ratio=0.5, bias=1.0).select(kv, Budget(selected=4, recent=2))
    assert sel.index.tolist() == [[0, 1, 0, 3, 6, 7]]  # token 0 stored twice
    assert sel.valid is None


def test_union_keeps_exactly_the_budget_refilling_from_next_best():
    Fixed, kv = scored_layer([9, 8, 1, 5, 1, 1], [9, 1, 1, 7, 6, 1], recent=2)
    sel = Fixed(cross_ratio=0.5, bias=1.0, combine="union").select(kv, Budget(selected=4, recent=2))
    kept = sel.index[0].tolist()
    # union of {0, 1} and {0, 3} is {0, 1, 3}; the free slot goes to the next-best of either
    # list in proportion: self's 3rd (token 3, already kept) ties cross's 3rd (token 4) -> 4
    assert sorted(kept[:4]) == [0, 1, 3, 4] and kept[4:] == [6, 7]
    assert len(set(kept)) == len(kept) == 6


def test_union_without_overlap_equals_concat():
    Fixed, kv = scored_layer([9, 8, 1, 1, 1, 1], [1, 1, 1, 7, 6, 1], recent=2)
    concat = Fixed(cross_ratio=0.5, bias=1.0).select(kv, Budget(4, 2)).index[0].tolist()
    union = Fixed(cross_ratio=0.5, bias=1.0, combine="union").select(kv, Budget(4, 2)).index[0].tolist()
    assert sorted(concat) == sorted(union) == [0, 1, 3, 4, 6, 7]


def test_intersection_keeps_tokens_in_both_lists():
    Fixed, kv = scored_layer([9, 8, 1, 5, 1, 1], [9, 1, 1, 7, 6, 1], recent=2)
    sel = Fixed(cross_ratio=0.5, bias=1.0, combine="intersection").select(kv, Budget(selected=6, recent=2))
    # k = 6 -> top-3 self {0, 1, 3}, top-3 cross {0, 3, 4}; both: {0, 3}
    kept = sel.index[0][sel.valid[0]].tolist()
    assert kept == [0, 3, 6, 7]


def test_intersection_pads_heads_that_keep_fewer():
    kv = layer(torch.zeros(2, 6, 2), [True] * 6)

    class Fixed(CrossSelfPruner):
        def scores(self, kv, window):
            s_self = torch.tensor([[5.0, 4, 3, 2, 0, 0], [5.0, 4, 3, 2, 0, 0]])
            s_cross = torch.tensor([[5.0, 4, 3, 2, 0, 0], [2.0, 3, 4, 5, 0, 0]])
            return s_self, s_cross

    sel = Fixed(cross_ratio=0.5, bias=1.0, combine="intersection").select(kv, Budget(4, 2))
    # k = 4 -> top-2 of each: head 0 {0, 1} & {0, 1}; head 1 {0, 1} & {3, 2} = {}
    assert sel.index.shape == (2, 4)
    assert sel.index[0][sel.valid[0]].tolist() == [0, 1, 4, 5]
    assert sel.index[1][sel.valid[1]].tolist() == [4, 5]


def test_bias_moves_budget_between_recent_and_topk():
    Fixed, kv = scored_layer([9, 8, 7, 6, 5, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], recent=2)
    # R = 2, bias 1.5 -> Rk = 3 recent kept, k = hh + R - Rk = 3; candidates [0, L - 3)
    sel = Fixed(cross_ratio=0.0, zero_ratio_quirk=False, bias=1.5).select(kv, Budget(4, 2))
    assert sel.index[0].tolist() == [0, 1, 2, 7, 8, 9]
    # bias 0.5 -> Rk = 1, k = 5
    sel = Fixed(cross_ratio=0.0, zero_ratio_quirk=False, bias=0.5).select(kv, Budget(4, 2))
    assert sel.index[0].tolist() == [0, 1, 2, 3, 4, 9]


def test_joint_topk_when_not_decomposed():
    Fixed, kv = scored_layer([1, 5, 1, 1, 4, 1], [5, 1, 1, 1, 4, 1], recent=2)
    sel = Fixed(cross_ratio=0.5, bias=1.0, decompose=False).select(kv, Budget(2, 2))
    assert sel.index[0].tolist() == [4, 0, 6, 7] or sel.index[0].tolist() == [4, 1, 6, 7]
    assert sel.index[0, 0] == 4  # 8 beats 6 and 6


def test_kept_size_is_what_the_budget_says():
    torch.manual_seed(0)
    length = 200
    visual = [i % 3 != 0 for i in range(length)]
    kv = layer(torch.randn(4, length, 8), visual, torch.randn(4, length, 8))
    b = Budget(selected=20, recent=20)  # budget 0.2 of 200
    for mode, expected in [("concat", 40), ("union", 40)]:
        sel = CrossSelfPruner(combine=mode, cross_ratio=0.3, bias=1.0).select(kv, b)
        assert sel.index.shape == (4, expected)
        assert torch.equal(sel.index[:, -20:], torch.arange(180, 200).expand(4, -1))
    sel = CrossSelfPruner(combine="union", cross_ratio=0.3, bias=1.0).select(kv, b)
    assert all(len(set(row)) == 40 for row in sel.index.tolist())
    # the quirk: cross ratio 0 keeps 1 + 308 selected tokens, capped by the 180 candidates
    sel = CrossSelfPruner(cross_ratio=0.0).select(kv, b)
    assert sel.index.shape == (4, 1 + 180 + 20)


def test_budget_arithmetic_of_the_reference():
    p = CrossSelfPruner()
    assert p.split_budget(1000) == Budget(100, 100)
    assert p.split_budget(15) == Budget(1, 1)
    assert CrossSelfPruner(budget=0.3).split_budget(1000) == Budget(200, 100)  # not 199
    assert CrossSelfPruner(budget_tokens=64).split_budget(1000) == Budget(32, 32)


def test_prompts_within_budget_or_without_images_are_kept_whole():
    kv = layer(torch.randn(1, 10, 2), [True] * 10)
    assert CrossSelfPruner(budget=1.0)(kv).index.tolist() == [list(range(10))]
    text_only = layer(torch.randn(1, 50, 2), [False] * 50)
    assert CrossSelfPruner()(text_only).index.shape == (1, 50)
    # L = 50: hh = R = 5; k = 5 splits into int(2.5) + int(2.5): the reference rounds one away
    assert CrossSelfPruner(prune_text_only_prompts=True)(text_only).index.shape == (1, 2 + 2 + 5)


def test_per_dataset_settings_fill_only_unset_fields():
    p = CrossSelfPruner().for_dataset({"cross_ratio": 0.1, "bias": 1.5})
    assert (p.cross_ratio, p.bias) == (0.1, 1.5)
    fixed = CrossSelfPruner(cross_ratio=0.9).for_dataset({"cross_ratio": 0.1, "bias": 1.5})
    assert (fixed.cross_ratio, fixed.bias) == (0.9, 1.5)


@pytest.mark.parametrize(
    "override,message",
    [
        ("budget=0", "budget=0"),
        ("budget=-0.2", "budget=-0.2"),
        ("budget=1.5", "budget=1.5"),
        ("method.cross_ratio=1.2", "cross_ratio=1.2"),
        ("method.cross_ratio=-0.1", "cross_ratio=-0.1"),
        ("method.n=-1", "n=-1"),
        ("method.combine=xor", "combine='xor'"),
        ("method.score_fn=max", "score_fn='max'"),
        ("recent_ratio=0.5", "recent_ratio=0.5"),
    ],
)
def test_bad_configuration_fails_clearly(override, message):
    cfg = OmegaConf.create({"budget": 0.2, "recent_ratio": 0.1, "budget_tokens": None,
                            "method": method_config("csp")})
    key, value = override.split("=")
    OmegaConf.update(cfg, key, OmegaConf.create({"v": value})["v"] if value.isalpha() else float(value))
    with pytest.raises(Exception) as info:
        instantiate(cfg.method)
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)
    assert message in str(info.value)
