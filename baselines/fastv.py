"""FastV (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models"): after the first K layers, the
image tokens that receive the least attention are dropped from the rest of the forward.

In the paper, for a prompt whose image tokens are I:
    run layers 0 .. K-1 on every token
    s[j]   = the attention token j receives in layer K-1, averaged over the heads and over
             all the prompt's tokens (those before j cannot attend to it: they count 0)
    drop   = the int(R * |I|) tokens of I with the lowest s
    run layers K .. m-1 on the sequence without `drop` (the others keep their positions)
with K = 2 and R = 50% as the paper's default. Here the forward keeps its length and the
dropped tokens are masked as KEYS in layers >= K during the prefill (the engine's prefill
mask), which gives every other token exactly what dropping them gives; layers < K store the
whole prompt, layers >= K store everything but the dropped tokens. Every KV head of a layer
keeps the same tokens, since the tokens leave the sequence.
The ranking uses the column sums of every prompt query's causal attention, averaged over
all query heads (the average over all tokens times L; H2O's scores, averaged over the KV
heads). FastV has its own budget (K, R): the shared budget fields
only switch it off (budget = 1 keeps everything, as for every method).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection

from baselines.h2o import check_chunk_size, heavy_hitter_scores


@dataclass
class FastV(KVPruner):
    """layer: K, the first layer that no longer sees the dropped tokens (>= 1).
    ratio: R, the share of the prompt's image tokens dropped.
    chunk_size: queries scored at a time in layer K - 1."""

    layer: int = 2
    ratio: float = 0.5
    chunk_size: int = 512
    name: ClassVar[str] = "fastv"
    display_name: ClassVar[str] = "FastV"
    budget_rule: ClassVar[str] = "own"
    prefill_masking: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chunk_size(self.name, self.chunk_size)
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ConfigError(f"{self.name}: layer={self.layer!r} must be an integer >= 1 (K layers see every token)")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"{self.name}: ratio={self.ratio} must lie in [0, 1]")

    def should_prune(self, kv: LayerKV) -> bool:
        if self.budget_tokens is None and self.budget >= 1.0:
            return False
        return bool(kv.visual.any())

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        """The tokens `prefill_mask` left visible, the same for every KV head: FastV ranked them once,
        in layer K - 1, so nothing is scored here; a layer below K keeps the whole prompt."""
        if kv.masked is None or not bool(kv.masked.any()):
            return Selection.everything(kv)
        keep = (~kv.masked).nonzero().squeeze(-1).to(kv.keys.device)
        return Selection(index=keep.expand(kv.kv_heads, -1))

    def prefill_mask(self, kv: LayerKV) -> Tensor | None:
        """In layer K - 1, the int(R * |I|) image tokens the whole prompt attends to least, hidden as
        keys from layer K on: past the first layers the image tokens draw little attention, so the
        least-attended share of them can leave. None in other layers, or when FastV is off."""
        if kv.layer_idx != self.layer - 1 or not self.should_prune(kv):
            return None
        image = kv.visual.nonzero().squeeze(-1)
        n_drop = int(self.ratio * image.numel())
        if n_drop == 0:
            return None
        received = heavy_hitter_scores(kv, self.chunk_size).mean(dim=0)  # (L,), all query heads alike
        lowest = received[image.to(received.device)].topk(n_drop, largest=False).indices
        drop = torch.zeros(kv.length, dtype=torch.bool, device=kv.visual.device)
        drop[image[lowest.to(image.device)]] = True
        return drop
