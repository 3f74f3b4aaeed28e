"""A test double for the engine's bookkeeping: evict by masking instead of dropping.

`MaskedEviction(inner)` asks `inner` what to keep and then keeps EVERY prompt entry in its
place, marking only `inner`'s choice as valid. The decode loop then masks the rest out of
attention instead of storing fewer entries. For a pure selection both must generate alike:
if they do not, the gather, the slots, the per-head masks or the decode positions are wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from csp.engine.method import KVPruner, LayerKV, Selection


def as_mask(sel: Selection, kv: LayerKV) -> Selection:
    """Every position in prompt order, valid where `sel` keeps it."""
    if sel.keys is not None:
        raise ValueError("masking cannot express merged entries")
    ok = sel.valid if sel.valid is not None else torch.ones_like(sel.index, dtype=torch.bool)
    keep = torch.zeros(kv.kv_heads, kv.length, dtype=torch.long, device=kv.keys.device)
    keep.scatter_add_(1, sel.index, ok.long())
    if bool((keep > 1).any()):
        raise ValueError("masking cannot express an entry stored twice (CSP concat)")
    everything = torch.arange(kv.length, device=kv.keys.device).expand(kv.kv_heads, -1)
    return Selection(index=everything, valid=keep.bool())


@dataclass
class MaskedEviction(KVPruner):
    inner: KVPruner = field(default=None)  # type: ignore[assignment]

    @property
    def cross_layer(self) -> bool:  # type: ignore[override]
        return self.inner.cross_layer

    @property
    def prefill_masking(self) -> bool:  # type: ignore[override]
        return self.inner.prefill_masking

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def __call__(self, kv: LayerKV) -> Selection:
        return as_mask(self.inner(kv), kv)

    def observe(self, kv: LayerKV) -> Any:
        return self.inner.observe(kv)

    def select_layers(self, kvs: list[LayerKV], observations: list[Any]) -> list[Selection]:
        return [as_mask(s, kv) for s, kv in zip(self.inner.select_layers(kvs, observations), kvs)]

    def prefill_mask(self, kv: LayerKV) -> Tensor | None:
        return self.inner.prefill_mask(kv)
