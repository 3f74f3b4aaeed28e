"""StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"),
one-shot at prefill: the first tokens, which soak up attention whatever they say, plus the
most recent ones.

With T = hh + R the shared budget (the same total as every other method):
    S     = min(sinks, T)                       attention sinks, 4 by default
    keep  = positions [0, S), then the last T - S positions
No score is computed; every head of every layer keeps the same positions. The paper's rolling
cache, which evicts while decoding, is not what runs here: pruning is once, after the prefill.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection


@dataclass
class StreamingLLM(KVPruner):
    """sinks: first tokens kept, counted inside the budget; the rest of it is the most recent
    tokens (so the recent window is T - sinks, not R)."""

    sinks: int = 4
    name: ClassVar[str] = "streamingllm"
    display_name: ClassVar[str] = "StreamingLLM"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise ConfigError(f"{self.name}: sinks={self.sinks!r} must be an integer >= 0")

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """The first `sinks` positions and the most recent ones, for every head: no score, since the
        sinks draw attention whatever they hold and the recent tokens carry the local context."""
        total = min(budget.total, kv.length)
        sinks = min(self.sinks, total)
        device = kv.keys.device
        index = torch.cat([torch.arange(sinks, device=device),
                           torch.arange(kv.length - (total - sinks), kv.length, device=device)])
        return Selection(index=index.expand(kv.kv_heads, -1))
