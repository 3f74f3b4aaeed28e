"""TOVA (Oren et al. 2024, "Transformers are Multi-State RNNs"), one-shot at prefill.

TOVA treats the cache as a bounded multi-state RNN. In the paper, at every step t:
    append (k_t, v_t) to the cache
    if the cache holds more than `budget` entries:
        a = softmax(q_t K_cache^T / sqrt(d))          the CURRENT query's attention
        drop the entry with the lowest a
Run once on a finished prompt, the current query is the prompt's last one, and dropping the
lowest one at a time until the budget is met keeps the highest ones:
    a     = softmax(q_last K^T * scaling)               per query head, over all L keys
    s[j]  = mean of a[., j] over ALL query heads of the layer     (heads="all", default)
          | mean of a[., j] over the query heads of a KV group    (heads="group")
    keep  = the `hh` keys of [0, L - R) with the highest s, then the last R
heads="all" is the authors' code (and kvpress's TOVAPress): one ranking per layer, so every
head of the layer keeps the same tokens. heads="group" lets each KV head keep its own tokens,
as SnapKV and H2O do here; on multi-head inputs the two keep different sets.

Differences from the authors' code, by the harness's common frame: their cache ranks all
keys, with no recent window (recent_ratio=0 gives exactly their selection); kvpress always
keeps the last token, which any R >= 1 does too. As for every baseline, the prompt is pruned
once after the prefill and decoding evicts nothing more; the paper goes on evicting while it
generates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from csp.engine.method import Budget, ConfigError, LayerKV, ScoredPruner

from baselines.snapkv import window_scores

HEADS = ("all", "group")


@dataclass
class TOVA(ScoredPruner):
    """heads: "all" (authors' code: the last query's attention averaged over every head of the
    layer, one set of tokens for the layer) or "group" (averaged within each KV group only)."""

    heads: str = "all"
    name: ClassVar[str] = "tova"
    display_name: ClassVar[str] = "TOVA"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads not in HEADS:
            raise ConfigError(f"{self.name}: heads={self.heads!r} must be one of {HEADS}")

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """The last prompt query's attention: TOVA's rule asks what the current query attends to,
        and once the prompt is done that query is its last."""
        per_group = window_scores(kv, 1)  # (kv_heads, L): a window of one query, the last
        if self.heads == "group":
            return per_group
        # every group has as many query heads, so the mean of the group means is the mean over
        # all query heads
        return per_group.mean(dim=0, keepdim=True).expand_as(per_group).contiguous()
