"""PyramidKV (Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
Information Funneling"): SnapKV's scores, with more of the budget in the lower layers, whose
attention is spread wide, and less in the upper ones, where it funnels into a few tokens.

With m layers, hh the uniform per-layer budget and beta the paper's steepness parameter:
    top     = hh / beta                                  budget of the top layer m - 1
    bottom  = 2 * hh - top                               budget of the bottom layer 0
    hh_l    = bottom - (bottom - top) * l / (m - 1)      an arithmetic sequence, so that
    sum_l hh_l = m * hh                                  the total is the uniform budget's
    per layer l, per head: SnapKV's pooled window votes, keep the top hh_l of [0, L - R),
    then the last R
The schedule applies to the selected part hh; the recent window R is the same in every
layer, as the observation window is in the paper. Integers: each hh_l is rounded by largest
remainder (ties to the lower layer) so that the total is exactly m * hh; a layer cannot keep
more than its L - R candidates, and what it cannot take goes to the other layers in
proportion to their schedule. beta = 20 is the paper's default; beta = 1 is uniform.
The engine pads every layer's cache to the widest layer, so the bytes held are the bottom
layer's; what changes is which entries each layer attends to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from csp.engine.method import Budget, ConfigError, LayerKV, Selection
from csp.engine.select import apportion

from baselines.snapkv import SnapKV


def pyramid_budgets(selected: int, layers: int, beta: float, cap: int) -> list[int]:
    """hh_l for layers 0 (bottom) .. layers - 1 (top), summing to layers * selected."""
    if layers == 1:
        return [min(selected, cap)]
    top = selected / beta
    bottom = 2 * selected - top
    schedule = [bottom - (bottom - top) * layer / (layers - 1) for layer in range(layers)]
    return apportion(schedule, layers * selected, cap)


@dataclass
class PyramidKV(SnapKV):
    """beta: top layer's budget = hh / beta (>= 1; 20 in the paper). SnapKV's window, kernel
    and pooling apply."""

    beta: float = 20.0
    prune_text_only_prompts: bool = False  # the harness's rule; only the reference's own SnapKV differs
    name: ClassVar[str] = "pyramidkv"
    display_name: ClassVar[str] = "PyramidKV"
    table_label: ClassVar[str | None] = None  # not SnapKV's row: the paper has no PyramidKV
    budget_rule: ClassVar[str] = "spread"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 1:
            raise ConfigError(f"{self.name}: beta={self.beta} must be >= 1 (1 = the same budget in every layer)")

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """SnapKV's selection with this layer's hh_l from the pyramid schedule: a lower layer, whose
        attention is spread wide, keeps more; an upper one, where it funnels into a few tokens, less."""
        if not 0 <= kv.layer_idx < kv.num_layers:
            raise ValueError(f"{self.name}: layer {kv.layer_idx} of a {kv.num_layers}-layer model")
        per_layer = pyramid_budgets(budget.selected, kv.num_layers, self.beta, kv.length - budget.recent)
        return super().select(kv, Budget(per_layer[kv.layer_idx], budget.recent))
