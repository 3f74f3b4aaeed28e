"""Random eviction: the floor every scoring rule has to beat.

Per layer and KV head, with the same budget split as the scored methods:
    u[j]  ~ Uniform(0, 1) for every prompt position j, drawn from a generator seeded by
            (seed, layer, head) alone
    keep  = the `hh` positions of [0, L - R) with the largest u (a uniform random subset),
            then the last R
The draw never looks at the keys, values or queries, so a rerun with the same seed keeps
exactly the same positions, and two heads (or layers) keep independent subsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from csp.engine.method import Budget, ConfigError, LayerKV, ScoredPruner


def head_generator(seed: int, layer: int, head: int) -> torch.Generator:
    """A CPU generator whose stream depends on (seed, layer, head) only; SeedSequence mixes the
    three so that nearby triples give unrelated streams."""
    state = np.random.SeedSequence([seed, layer, head]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def uniform_scores(seed: int, layer: int, heads: int, length: int) -> torch.Tensor:
    """(heads, length) independent uniform draws, one seeded stream per head."""
    return torch.stack([torch.rand(length, generator=head_generator(seed, layer, h)) for h in range(heads)])


@dataclass
class RandomEviction(ScoredPruner):
    """seed: the run's seed; the kept positions of a (layer, head) depend on it and on L only."""

    seed: int = 0
    name: ClassVar[str] = "random"
    display_name: ClassVar[str] = "Random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"{self.name}: seed={self.seed!r} must be an integer >= 0")

    def score(self, kv: LayerKV, budget: Budget) -> torch.Tensor:
        """Uniform draws seeded by (seed, layer, head) alone, blind to the keys: the floor a scoring
        rule must beat, the same positions on every rerun."""
        return uniform_scores(self.seed, kv.layer_idx, kv.kv_heads, kv.length).to(kv.keys.device)
