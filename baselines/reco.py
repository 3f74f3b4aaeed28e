"""ReCo, as RoCo (Ren and Zhu, arXiv 2402.06262) runs in its public implementation, made
one-shot at prefill like the other baselines.

Per head, over all prompt queries q >= j (causal):
    mean[j] = sum_q a[q, j] / count[j]         count[j] = queries that can see j = L - j
    std[j]  = sqrt(sum_q a[q, j]^2 / count[j] - mean[j]^2)
protected = the first `sinks` tokens and the last R tokens
E         = L - budget                           tokens to evict
pool      = the E + int(std_pool_ratio * budget) unprotected tokens with the LOWEST std
evict     = the E tokens of the pool with the lowest mean
High-variance tokens are never evicted; among stable ones, the least attended on average go.
Grouped-query models: the attention maps of a KV group are averaged before mean and std.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from csp.engine.attention import column_sums
from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection
from csp.engine.select import complement

from baselines.h2o import check_chunk_size


def mean_and_std(kv: LayerKV, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(kv_heads, L) each: mean and standard deviation of the attention each key receives."""
    stats = column_sums(kv.queries(), kv.keys, kv.scaling, chunk=chunk_size, squares=True, workspace=kv.workspace)
    mean = stats.total / stats.count
    var = (stats.total_sq / stats.count - mean.square()).clamp_min(0.0)
    return mean, var.sqrt()


@dataclass
class ReCo(KVPruner):
    """sinks: first tokens never evicted (counted inside the budget; at most `hh` of them).
    std_pool_ratio: the low-deviation pool holds E + int(std_pool_ratio * budget) tokens.
    chunk_size: queries scored at a time."""

    sinks: int = 4
    std_pool_ratio: float = 0.1
    chunk_size: int = 512
    name: ClassVar[str] = "reco"
    display_name: ClassVar[str] = "ReCo"
    table_label: ClassVar[str | None] = "ReCo"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chunk_size(self.name, self.chunk_size)
        if self.sinks < 0:
            raise ConfigError(f"{self.name}: sinks={self.sinks} must be >= 0")
        if self.std_pool_ratio < 0:
            raise ConfigError(f"{self.name}: std_pool_ratio={self.std_pool_ratio} must be >= 0")

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """Evict the least-attended on average among the tokens whose attention varies least: a token
        that some queries attend to strongly may matter to a later one, so a high deviation spares
        it even when its mean is low."""
        length = kv.length
        mean, std = mean_and_std(kv, self.chunk_size)
        protected = torch.zeros(length, dtype=torch.bool, device=mean.device)
        protected[: min(self.sinks, budget.selected)] = True
        protected[length - budget.recent :] = True
        n_evict = length - budget.total
        pool_size = min(n_evict + int(self.std_pool_ratio * budget.total), int((~protected).sum()))
        pool = std.masked_fill(protected, float("inf")).topk(pool_size, dim=-1, largest=False).indices
        evict_in_pool = mean.gather(1, pool).topk(n_evict, dim=-1, largest=False).indices
        evicted = pool.gather(1, evict_in_pool).sort(dim=-1).values
        return Selection(index=complement(evicted, length))
