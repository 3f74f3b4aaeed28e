"""SnapKV: the last queries of the prompt (the observation window) vote for the keys to keep.

Window = the last R queries (or `window` of them). Their softmax attention over all keys
(causal inside the window) is summed over the window for the keys [0, L - R), smoothed by a
1-D pooling (average, kernel 5, stride 1, padding 2, the pad counted as zeros, i.e. always
divided by the kernel; max pooling as an option), and the top `hh` are kept plus the last R.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from csp.engine.attention import grouped_logits, n_softmax
from csp.engine.method import Budget, ConfigError, LayerKV, ScoredPruner

POOLINGS = ("avg", "max")


def window_scores(kv: LayerKV, window: int) -> Tensor:
    """(kv_heads, L) softmax attention of the last `window` queries, summed over them."""
    start = kv.length - window
    logits = grouped_logits(kv.queries(window), kv.keys, kv.scaling, start, kv.workspace)
    return n_softmax(logits, 0.0, inplace=True).sum(dim=2).mean(dim=1)  # summed before averaging: one tensor held


def smooth(scores: Tensor, kernel: int, pooling: str) -> Tensor:
    """Same-length 1-D pooling along the keys, stride 1, padding kernel // 2."""
    pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
    return pool(scores.unsqueeze(1), kernel_size=kernel, stride=1, padding=kernel // 2).squeeze(1)


@dataclass
class SnapKV(ScoredPruner):
    """window: observation-window length; None = the recent window R of the budget.
    kernel: pooling kernel (odd, so that the smoothed scores keep their length).
    pooling: "avg" (reference) or "max".
    prune_text_only_prompts: True, as the reference's SnapKV path prunes every prompt over the
    budget (the other methods' paths skip prompts without an image)."""

    window: int | None = None
    kernel: int = 5
    pooling: str = "avg"
    prune_text_only_prompts: bool = True
    name: ClassVar[str] = "snapkv"
    display_name: ClassVar[str] = "SnapKV"
    table_label: ClassVar[str | None] = "SnapKV"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is not None and self.window < 1:
            raise ConfigError(f"{self.name}: window={self.window} must be >= 1 (or null for R)")
        if self.window is None and self.recent_ratio == 0:
            raise ConfigError(
                f"{self.name}: window=null means the recent window R, but recent_ratio=0; "
                "set window or recent_ratio > 0"
            )
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"{self.name}: kernel={self.kernel} must be an odd integer >= 1")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"{self.name}: pooling={self.pooling!r} must be one of {POOLINGS}")

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """The observation window's attention summed per key, pooled along the candidates: the last
        queries already look where the answer will, and pooling keeps a voted key's neighbours so
        what is kept stays in spans, not stray tokens (the last R are kept anyway, left unpooled)."""
        window = min(self.window or max(budget.recent, 1), kv.length)
        votes = window_scores(kv, window)
        older = kv.length - budget.recent  # the candidates; the last R are kept anyway
        votes[:, :older] = smooth(votes[:, :older], self.kernel, self.pooling)
        return votes
