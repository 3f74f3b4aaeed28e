"""LOOK-M (Wan et al., arXiv 2406.18139): select like H2O, then merge every evicted entry
into the kept entry whose key it resembles most, instead of dropping it.

Selection, per head (H2O scores: all-query attention column sums):
    plain:       the first `sinks` tokens, then the top `hh` of [0, L - R), plus the last R
    text prior:  every text token ranks above every visual token, so all text is kept and
                 the rest of the `hh` room goes to the best visual tokens, plus the last R
                 (more than `hh + R` is kept when the text alone is longer than `hh`)
Merging, per head, keys and values with the same mapping:
    pivot(e), s(e) = the kept token with the highest key cosine similarity to e, and that s
    average  (A): kept[p] = mean(kept[p], evicted e with pivot p)
    weighted (W): kept[p] = mean(kept[p], s(e) * evicted e with pivot p)
    pivotal  (P): kept[p] = mean(kept[p], (evicted e + kept[p]) / 2 for e with pivot p)

Where the public LOOK-M code differs from this, the described semantics, which is what the
harness implements:
- its A- and W-merges only merge the evicted tokens whose similarity, averaged over heads,
  passes a threshold, and by an indexing slip merge the first n of the evicted tokens
  (n = how many passed) instead of the ones that passed; here every evicted token is merged;
- one of its merge routines (`modify_llama_merge.py`) pairs tokens by raw dot product and
  writes the (evicted + pivot) / 2 pairs back with a plain scatter, so when several evicted
  tokens share a pivot only one of them survives; here pivots are chosen by cosine
  similarity, as the paper describes, and every evicted token counts in its pivot's mean;
- the attention sinks are protected in both the plain and the text-prior selection here
  (with a real prompt they are the leading text tokens, which the text prior keeps anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection
from csp.engine.select import complement, cosine_pivots, merge_into_pivots, top_selected_plus_recent

from baselines.h2o import check_chunk_size, heavy_hitter_scores

MERGES = ("average", "weighted", "pivotal")


@dataclass
class LookM(KVPruner):
    """merge: "average" (A), "weighted" (W) or "pivotal" (P).
    text_prior: keep every text token before any visual one (the TP variants).
    sinks: first tokens always kept, inside the `hh` budget.
    chunk_size: queries scored, and evicted tokens paired, at a time."""

    merge: str = "average"
    text_prior: bool = False
    sinks: int = 4
    chunk_size: int = 512
    name: ClassVar[str] = "lookm"

    # six Table 1 rows from one class: the names follow the variant's fields
    @property
    def display_name(self) -> str:  # type: ignore[override]
        return f"LOOK-M ({'TP+' if self.text_prior else ''}{self.merge[0].upper()}-Merge)"

    @property
    def table_label(self) -> str | None:  # type: ignore[override]
        return self.display_name

    @property
    def budget_rule(self) -> str:  # type: ignore[override]
        return "at_least" if self.text_prior else "exact"  # the text prior keeps all text

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chunk_size(self.name, self.chunk_size)
        if self.merge not in MERGES:
            raise ConfigError(f"{self.name}: merge={self.merge!r} must be one of {MERGES}")
        if self.sinks < 0:
            raise ConfigError(f"{self.name}: sinks={self.sinks} must be >= 0")

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """H2O's ranking (sinks first, and with the text prior every text token), then every evicted
        entry merged into its most similar kept key: what is evicted still reaches the attention
        through its pivot instead of being lost."""
        scores = heavy_hitter_scores(kv, self.chunk_size)
        always = torch.zeros(kv.length, dtype=torch.bool, device=scores.device)
        always[: min(self.sinks, budget.selected)] = True
        if self.text_prior:
            always |= ~kv.visual.to(device=scores.device, dtype=torch.bool)
        kept = top_selected_plus_recent(scores, budget.selected, budget.recent, always=always)
        evicted = complement(kept, kv.length)
        if kept.shape[1] == 0 or evicted.shape[1] == 0:
            return Selection(index=kept)  # nothing to merge into, or nothing to merge

        pivot, similarity = cosine_pivots(kv.keys, kept, evicted, chunk=self.chunk_size)
        weight = similarity if self.merge == "weighted" else None
        pivotal = self.merge == "pivotal"
        keys = merge_into_pivots(kv.keys, kept, evicted, pivot, weight, pivotal)
        values = merge_into_pivots(kv.values, kept, evicted, pivot, weight, pivotal)
        return Selection(index=kept, keys=keys, values=values)
