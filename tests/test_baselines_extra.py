"""The methods added beyond the paper's Table 1, on hand-made tensors: kept indices (and per-layer
or per-head budgets) computed by hand. Helpers and the one-hot attention trick come from
test_baselines.py: with keys = identity and scaling 1, a query row log(w) attends to key j
with weight w[j] / sum_{j' <= q} w[j']."""
from __future__ import annotations

import torch

from baselines.knorm import KNorm
from baselines.tova import TOVA
from csp.method import Budget
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
