"""FastV (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models"): after the first K layers, the
image tokens that receive the least attention are dropped from the rest of the forward.

For a prompt whose image tokens are I:
    run layers 0 .. K-1 on every token
    s[j]   = the attention token j receives in layer K-1, averaged over all heads, from
             the LAST prompt token                          (rank="last", the authors' code)
           | from every prompt token, averaged (those before j count 0)   (rank="all")
    keep   = the round(|I| (1 - R)) tokens of I with the highest s (Python's round: half
             to even, so 577 image tokens at R = 50% keep 288 and drop 289)
    run layers K .. m-1 on the sequence without the others (the kept keep their positions)
with K = 2 and R = 50% as the paper's default.

The paper's text describes the attention each token receives from all tokens (rank="all");
the authors' released code, which produced FastV's published numbers, ranks by the last
token's row of layer K-1's head-averaged attention map (rank="last"), and is the default
here, as every baseline of this harness follows the code behind its numbers. Their code
assumes one contiguous image span; here I is every image token of the prompt.

Here the forward keeps its length and the dropped tokens are masked as KEYS in layers >= K
during the prefill (the engine's prefill mask), which gives every other token exactly what
dropping them gives; layers < K store the whole prompt, layers >= K store everything but
the dropped tokens. Every KV head of a layer keeps the same tokens, since the tokens leave
the sequence. FastV has its own budget (K, R): the shared budget fields only switch it off
(budget = 1 keeps everything, as for every method).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from csp.engine.method import Budget, ConfigError, KVPruner, LayerKV, Selection

from baselines.h2o import check_chunk_size, heavy_hitter_scores
from baselines.snapkv import window_scores

RANKS = ("last", "all")


def kept_image_tokens(n_image: int, ratio: float) -> int:
    """round(|I| (1 - R)) as the authors' code counts it, Python's half-to-even rounding included."""
    return round(n_image * (1 - ratio))


@dataclass
class FastV(KVPruner):
    """layer: K, the first layer that no longer sees the dropped tokens (>= 1).
    ratio: R, the share of the prompt's image tokens dropped.
    rank: "last" (authors' code: the last token's attention) or "all" (the paper's text: the
        attention from every prompt token).
    chunk_size: queries scored at a time in layer K - 1 (rank="all")."""

    layer: int = 2
    ratio: float = 0.5
    rank: str = "last"
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
        if self.rank not in RANKS:
            raise ConfigError(f"{self.name}: rank={self.rank!r} must be one of {RANKS}")

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

    def received(self, kv: LayerKV) -> Tensor:
        """(L,) the attention each token receives in this layer, averaged over all query heads
        (every KV group has as many, so the mean of the group means)."""
        if self.rank == "last":
            return window_scores(kv, 1).mean(dim=0)
        return heavy_hitter_scores(kv, self.chunk_size).mean(dim=0)

    def prefill_mask(self, kv: LayerKV) -> Tensor | None:
        """In layer K - 1, the image tokens outside the round(|I| (1 - R)) most attended, hidden as
        keys from layer K on: past the first layers the image tokens draw little attention, so the
        least-attended share of them can leave. None in other layers, or when FastV is off."""
        if kv.layer_idx != self.layer - 1 or not self.should_prune(kv):
            return None
        image = kv.visual.nonzero().squeeze(-1)
        n_keep = kept_image_tokens(image.numel(), self.ratio)
        if n_keep >= image.numel():
            return None
        scores = self.received(kv)[image.to(kv.keys.device)]
        kept = scores.topk(n_keep).indices
        drop = torch.ones(image.numel(), dtype=torch.bool, device=kv.visual.device)
        drop[kept.to(drop.device)] = False
        mask = torch.zeros(kv.length, dtype=torch.bool, device=kv.visual.device)
        mask[image[drop]] = True
        return mask
