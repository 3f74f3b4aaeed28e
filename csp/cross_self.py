"""Cross-Self Pruning (CSP): rank the prompt's KV separately by the attention it receives
from queries of the same modality (self) and of the other modality (cross).

Reference behaviour by default (the code that produced the paper's numbers); the paper's
variants are config fields. Scores come from the observation window, the last R queries:

    O       = Q_win K^T / sqrt(d), causal                       (per head)
    A       = n_softmax(O), n = 1: exp(O_i) / (n + sum_j exp(O_j))
    Rk      = int(R * bias) if bias != 1 else R                 recent tokens kept
    k       = hh + R - Rk                                       the top-k budget
    s_self  = sum over window queries of A where query and key share a modality
    s_cross = sum over window queries of A where they do not
    k_cross = int(k * cross_ratio), k_self = int(k * (1 - cross_ratio))
              (cross_ratio <= 0: k_cross, k_self = 1, 308, as the reference hard-codes)
    keep    = topk(s_self, k_self) ++ topk(s_cross, k_cross) among keys [0, L - Rk),
              then the last Rk keys
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor

from csp.engine.attention import grouped_logits, n_softmax
from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection

ZERO_RATIO_SPLIT = (1, 308)  # (k_cross, k_self) the reference uses when cross_ratio <= 0
COMBINE_MODES = ("concat", "union", "intersection")
SCORE_FNS = ("nsoftmax", "softmax")


@dataclass
class CrossSelfPruner(KVPruner):
    """CSP. `cross_ratio` / `bias` left as None take the per-dataset table's values
    (`for_dataset`), and 0.5 / 1.0 where no table applies."""

    cross_ratio: float | None = None
    bias: float | None = None
    combine: Literal["concat", "union", "intersection"] = "concat"
    score_fn: Literal["nsoftmax", "softmax"] = "nsoftmax"
    n: float = 1.0
    decompose: bool = True
    zero_ratio_quirk: bool = True  # cross_ratio <= 0 keeps 1 cross + 308 self, as the reference

    name: ClassVar[str] = "csp"
    display_name: ClassVar[str] = "CSP"
    table_label: ClassVar[str | None] = "CSP"
    budget_rule: ClassVar[str] = "at_most"  # concat may list a token twice, int() splits round down
    DEFAULT_CROSS_RATIO: ClassVar[float] = 0.5
    DEFAULT_BIAS: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cross_ratio is not None and not 0.0 <= self.cross_ratio <= 1.0:
            raise ConfigError(f"csp: cross_ratio={self.cross_ratio} must lie in [0, 1]")
        if self.bias is not None and self.bias < 0:
            raise ConfigError(f"csp: bias={self.bias} must be >= 0")
        if self.combine not in COMBINE_MODES:
            raise ConfigError(f"csp: combine={self.combine!r} must be one of {', '.join(COMBINE_MODES)}")
        if self.score_fn not in SCORE_FNS:
            raise ConfigError(f"csp: score_fn={self.score_fn!r} must be one of {', '.join(SCORE_FNS)}")
        if self.n < 0:
            raise ConfigError(f"csp: n={self.n} must be >= 0 (n = 0 is the ordinary softmax)")

    def for_dataset(self, settings: Mapping[str, Any]) -> "CrossSelfPruner":
        """This pruner with the ratio table's cross_ratio and bias where the config left them None, so
        a value set explicitly wins over the per-dataset table."""
        fill = {k: settings[k] for k in ("cross_ratio", "bias") if getattr(self, k) is None and k in settings}
        return replace(self, **fill) if fill else self

    # -- the method ------------------------------------------------------------------------
    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """The window's attention split into self (same modality) and cross scores, the top k_self and
        k_cross of each kept (one top k of their sum with decompose=False), then the last Rk: ranked
        apart, the two kinds of attention each get their share of the budget, so neither crowds the
        other out."""
        length, window = kv.length, max(budget.recent, 1)
        s_self, s_cross = self.scores(kv, window)
        recent = self.recent_kept(budget.recent, length)
        k = budget.selected + budget.recent - recent
        cands = length - recent
        s_self, s_cross = s_self[:, :cands], s_cross[:, :cands]
        if self.decompose:
            k_cross, k_self = self.split(k)
            chosen, valid = self.combine_topk(s_self, s_cross, min(k_self, cands), min(k_cross, cands), min(k, cands))
        else:
            chosen, valid = _topk(s_self + s_cross, min(k, cands)), None
        tail = torch.arange(cands, length, device=chosen.device).expand(chosen.shape[0], -1)
        index = torch.cat([chosen, tail], dim=1)
        if valid is not None:
            valid = torch.cat([valid, torch.ones_like(tail, dtype=torch.bool)], dim=1)
        return Selection(index=index, valid=valid)

    def scores(self, kv: LayerKV, window: int) -> tuple[Tensor, Tensor]:
        """(s_self, s_cross), each (Hkv, L): window attention split by query/key modality."""
        q = kv.queries(window)
        logits = grouped_logits(q, kv.keys, kv.scaling, kv.length - window, kv.workspace)
        attn = n_softmax(logits, self.n if self.score_fn == "nsoftmax" else 0.0, inplace=True)
        # one pass over the scores: row 0 sums every window query, row 1 the visual ones
        rows = torch.stack([torch.ones(window, device=attn.device), kv.visual[-window:].to(attn.dtype)])
        from_all, from_visual = torch.matmul(rows, attn).mean(dim=1).unbind(dim=1)
        s_self = torch.where(kv.visual, from_visual, from_all - from_visual)
        return s_self, from_all - s_self

    def recent_kept(self, recent: int, length: int) -> int:
        """Rk: int(R * bias), R itself when bias is 1 (as the reference writes it), at most L; a bias
        above 1 keeps more recent tokens and leaves fewer for the top-k."""
        bias = self.DEFAULT_BIAS if self.bias is None else self.bias
        kept = recent if bias == 1 else int(recent * bias)
        return min(kept, length)

    def split(self, k: int) -> tuple[int, int]:
        """(k_cross, k_self) of a top-k budget k."""
        ratio = self.DEFAULT_CROSS_RATIO if self.cross_ratio is None else self.cross_ratio
        if ratio <= 0 and self.zero_ratio_quirk:
            return ZERO_RATIO_SPLIT
        return int(k * ratio), int(k * (1 - ratio))

    def combine_topk(
        self, s_self: Tensor, s_cross: Tensor, k_self: int, k_cross: int, k: int
    ) -> tuple[Tensor, Tensor | None]:
        """The kept candidates per head from the two top-k lists: concat (the reference; a key in both
        lists is listed twice), union (the room duplicates leave is refilled) or intersection (Eq. 3)."""
        if self.combine == "concat":
            return torch.cat([_topk(s_self, k_self), _topk(s_cross, k_cross)], dim=1), None
        if self.combine == "union":
            return _topk(-_interleaved_priority(s_self, s_cross, k_self, k_cross), k), None
        return _intersection(s_self, s_cross, k_self, k_cross)


def _topk(scores: Tensor, k: int) -> Tensor:
    return scores.topk(k, dim=-1).indices


def _ranks(scores: Tensor) -> Tensor:
    """rank[h, j]: 0 for the best-scoring key of head h."""
    order = scores.argsort(dim=-1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks


def _interleaved_priority(s_self: Tensor, s_cross: Tensor, k_self: int, k_cross: int) -> Tensor:
    """When a key would enter if both top-k lists grew in proportion to their sizes.

    Keys with priority <= 1 are exactly the union of topk(s_self, k_self) and
    topk(s_cross, k_cross); the next ones refill the budget the duplicates left free.
    """
    inf = torch.tensor(float("inf"), device=s_self.device)
    p_self = (_ranks(s_self) + 1).float() / k_self if k_self > 0 else inf.expand_as(s_self)
    p_cross = (_ranks(s_cross) + 1).float() / k_cross if k_cross > 0 else inf.expand_as(s_cross)
    return torch.minimum(p_self, p_cross)


def _intersection(s_self: Tensor, s_cross: Tensor, k_self: int, k_cross: int) -> tuple[Tensor, Tensor]:
    """Eq. 3, M = M^s AND M^c: keys in both lists. Heads keep different counts, so the lists
    are padded to the longest and `valid` marks the real entries."""
    both = (_ranks(s_self) < k_self) & (_ranks(s_cross) < k_cross)
    width = max(int(both.sum(-1).max()), 1)
    # stable sort puts the kept keys first, in position order
    order = (~both).to(torch.int8).argsort(dim=-1, stable=True)[:, :width]
    return order, both.gather(1, order)
