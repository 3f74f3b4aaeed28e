"""K-norm (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
Compression"): keys with a LOW L2 norm draw high attention, so they are the ones to keep.

    s[j]  = -||k_j||_2                                 per KV head, no query needed
    keep  = the `hh` keys of [0, L - R) with the highest s (the smallest norms), then the last R
The cached keys are post-rotary; the rotary embedding rotates pairs of channels, which leaves
the norm unchanged, so this is the paper's norm of the key. No attention is computed, so the
method costs one pass over the keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from csp.engine.method import Budget, LayerKV, ScoredPruner


@dataclass
class KNorm(ScoredPruner):
    """No options: the key norm alone decides."""

    name: ClassVar[str] = "knorm"
    display_name: ClassVar[str] = "K-Norm"

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """Minus each key's L2 norm: a low-norm key draws high attention, so the norm ranks keys
        as attention would, without computing any."""
        return -kv.keys.float().norm(dim=-1)
