"""H2O (heavy hitters), one-shot at prefill as the CSP reference code runs it.

Per head, a key's score is the softmax attention it receives from ALL prompt queries
(causal), summed; keep the top `hh` of the keys [0, L - R) plus the last R.
The original paper evicts step by step while decoding; that is not the reproduced baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from csp.engine.attention import column_sums
from csp.engine.method import Budget, ConfigError, LayerKV, ScoredPruner


def heavy_hitter_scores(kv: LayerKV, chunk_size: int) -> Tensor:
    """(kv_heads, L) column sums of every query's attention, over query chunks."""
    return column_sums(kv.queries(), kv.keys, kv.scaling, chunk=chunk_size, workspace=kv.workspace).total


def check_chunk_size(name: str, chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"{name}: chunk_size={chunk_size!r} must be an integer >= 1")


@dataclass
class H2O(ScoredPruner):
    """chunk_size: queries scored at a time; memory is kv_heads x chunk x L, never L x L."""

    chunk_size: int = 512
    name: ClassVar[str] = "h2o"
    display_name: ClassVar[str] = "H2O"
    table_label: ClassVar[str | None] = "H2O"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chunk_size(self.name, self.chunk_size)

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """The attention each key receives from every prompt query, summed: the few keys that
        draw most of it across the whole prompt (the heavy hitters) are the ones worth keeping."""
        return heavy_hitter_scores(kv, self.chunk_size)
