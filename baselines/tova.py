"""TOVA (Oren et al. 2024, "Transformers are Multi-State RNNs"), one-shot at prefill.

TOVA treats the cache as a bounded multi-state RNN. In the paper, at every step t:
    append (k_t, v_t) to the cache
    if the cache holds more than `budget` entries:
        a = softmax(q_t K_cache^T / sqrt(d))          the CURRENT query's attention
        drop the entry with the lowest a
Run once on a finished prompt, the current query is the prompt's last one, and dropping the
lowest one at a time until the budget is met keeps the highest ones:
    a     = softmax(q_last K^T * scaling)               per query head, over all L keys
    s[j]  = mean of a[., j] over the query heads of a KV group
    keep  = the `hh` keys of [0, L - R) with the highest s, then the last R
Here, as for every baseline, the prompt is pruned once after the prefill (per KV head) and
decoding evicts nothing more; the paper goes on evicting while it generates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from csp.engine.method import Budget, LayerKV, ScoredPruner

from baselines.snapkv import window_scores


@dataclass
class TOVA(ScoredPruner):
    """No options: the last query alone decides."""

    name: ClassVar[str] = "tova"
    display_name: ClassVar[str] = "TOVA"

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """The last prompt query's attention, averaged over each KV group: TOVA's rule asks what the
        current query attends to, and once the prompt is done that query is its last."""
        return window_scores(kv, 1)  # a window of one query: the last
