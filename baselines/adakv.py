"""Ada-KV (Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
Allocation for Efficient LLM Inference") on SnapKV's scores: the heads of a layer share the
layer's budget by how concentrated their attention is, instead of hh each.

Per layer, with H KV heads, hh the uniform per-head budget and the candidates [0, L - R):
    v_h[j]   = SnapKV's pooled window votes of head h (softmax rows: each head's votes are a
               share of its own attention mass, which is what makes heads comparable)
    floor    = int(floor_ratio * hh)                    the safeguard every head gets first:
    forced   = each head's own top `floor` candidates
    rest     = the top H * hh - H * floor of all heads' remaining candidate votes, pooled
    head h keeps forced_h + rest_h (hh_h entries, sum_h hh_h = H * hh), then the last R
Pooling all heads' votes and taking the top H * hh jointly is the allocation the paper derives
from its bound on the eviction loss: a head whose attention is concentrated needs few entries,
a diffuse one gets more. floor_ratio = 0 is that allocation alone; the default 0.2 keeps a
fifth of the uniform budget per head, the safeguard against starving a head whose votes are
small everywhere. No further normalization: the softmax already puts every head's votes on
the same scale (they sum to the window length over all L keys).
Heads keep different numbers of entries: the selection is padded to the busiest head and
`Selection.valid` marks the real entries (the engine's per-head mask path).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from csp.engine.method import Budget, ConfigError, LayerKV, Selection
from csp.engine.select import recent_positions

from baselines.snapkv import SnapKV


def adaptive_choice(votes: Tensor, selected: int, floor: int) -> Tensor:
    """(H, C) bool: which candidates each head keeps; H * selected in all, at least
    min(floor, selected) per head. votes: (H, C) candidate scores."""
    heads, cands = votes.shape
    floor = min(floor, selected)
    priority = votes.float().clone()
    if floor:
        own_best = priority.topk(floor, dim=-1).indices
        priority.scatter_(1, own_best, float("inf"))
    chosen = priority.flatten().topk(heads * selected).indices
    mask = torch.zeros(heads * cands, dtype=torch.bool, device=votes.device)
    mask[chosen] = True
    return mask.view(heads, cands)


@dataclass
class AdaKV(SnapKV):
    """floor_ratio: share of the uniform per-head budget every head keeps first (0 .. 1)."""

    floor_ratio: float = 0.2
    prune_text_only_prompts: bool = False  # the harness's rule; only the reference's own SnapKV differs
    name: ClassVar[str] = "adakv"
    display_name: ClassVar[str] = "Ada-KV"
    table_label: ClassVar[str | None] = None  # not SnapKV's row: the paper has no Ada-KV
    budget_rule: ClassVar[str] = "spread"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.floor_ratio <= 1.0:
            raise ConfigError(f"{self.name}: floor_ratio={self.floor_ratio} must lie in [0, 1]")

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """SnapKV's votes, with the layer's H * hh entries shared out by one top-k over every head's
        candidates (after each head's floor): a head whose attention is concentrated needs few
        entries, so it leaves room to a diffuse one."""
        length, recent = kv.length, budget.recent
        votes = self.score(kv, budget)[:, : length - recent]
        keep = adaptive_choice(votes, budget.selected, int(self.floor_ratio * budget.selected))
        width = int(keep.sum(-1).max()) if keep.numel() else 0
        # a stable sort puts each head's kept positions first, in prompt order
        order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)[:, :width]
        valid = keep.gather(1, order)
        tail = recent_positions(length, recent, kv.kv_heads, votes.device)
        index = torch.cat([order, tail], dim=1)
        valid = torch.cat([valid, torch.ones_like(tail, dtype=torch.bool)], dim=1)
        return Selection(index=index, valid=None if bool(valid.all()) else valid)
