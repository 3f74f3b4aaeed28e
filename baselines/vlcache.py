"""VL-Cache (Tu et al. 2024, "VL-Cache: Sparsity and Modality-Aware KV Cache Compression for
Vision-Language Model Inference Acceleration"): score with the queries that come AFTER the
image, and give each layer a budget by how dense that attention is.

Post-vision queries are the prompt positions after the last image token (the question that
follows the images); when the prompt ends on an image token, the last position alone.
Per layer l, with a_q the softmax attention of post-vision query q over all keys (causal):
    s_l[h, j]  = sum over post-vision q of a_q[j], averaged over the query heads of KV group h
                 (modality-aware scoring: visual and text keys ranked by the same
                 post-vision attention)
    zero       = a_q[j] < p * max_j a_q[j]                  among the keys q can see, p = 1%
    gamma_l    = share of zero entries over all query heads and post-vision queries
                 (the layer's sparsity)
Across the m layers of the sample, with hh the uniform per-layer budget:
    hh_l       = m * hh * (1 - gamma_l) / sum_k (1 - gamma_k)   dense layers keep more
                 (largest-remainder rounding; no layer keeps more than its L - R candidates,
                 its excess goes to the others in proportion)
    per layer l, per head: the top hh_l of s_l among [0, L - R), then the last R
The allocation needs every layer's sparsity before any layer is pruned, so the method is
cross-layer: the engine shows it each layer during the prefill (`observe`: scores and
sparsity, computed while the layer's queries exist) and has it select all layers at the end
(`select_layers`); until then the full prompt KV stays in the cache. The recent window R is
kept in every layer, as every method of the harness keeps it. Called on a single layer
(`method(kv)`), it keeps that layer's top hh by post-vision scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from csp.engine.attention import grouped_logits
from csp.engine.method import Budget, ConfigError, LayerKV, ScoredPruner, Selection
from csp.engine.select import apportion, top_selected_plus_recent


@dataclass
class PostVision:
    """What one layer tells the cross-layer allocation."""

    scores: Tensor  # (kv_heads, L) accumulated post-vision attention
    density: float  # 1 - sparsity


def post_vision_queries(visual: Tensor) -> int:
    """How many of the last prompt positions come after the last image token (at least 1)."""
    hits = visual.nonzero()
    after = visual.shape[0] - 1 - int(hits[-1]) if hits.numel() else visual.shape[0]
    return max(after, 1)


def softmax_counting(logits: Tensor, log_p: float) -> tuple[Tensor, int]:
    """The softmax over the last dim, in place, and how many entries fall below p times their
    row's maximum, counted on the way: a_j < p * max a  <=>  l_j - max l < log p. One pass over
    the scores fewer than a softmax followed by a max and a comparison; the comparison is
    made one KV head at a time so that its mask stays small. Masked (-inf) entries count."""
    logits.sub_(logits.amax(dim=-1, keepdim=True))
    small = sum(int(torch.count_nonzero(head < log_p)) for head in logits)
    probs = logits.exp_()
    return probs.div_(probs.sum(dim=-1, keepdim=True)), small


def post_vision_stats(kv: LayerKV, threshold: float, chunk: int) -> PostVision:
    """Scores and density of one layer, `chunk` post-vision queries at a time."""
    length, n_post = kv.length, post_vision_queries(kv.visual)
    queries = kv.queries(n_post)
    scores = torch.zeros(kv.kv_heads, length, dtype=torch.float32, device=kv.keys.device)
    small = visible = 0
    for offset in range(0, n_post, chunk):
        start = length - n_post + offset
        logits = grouped_logits(queries[:, offset : offset + chunk], kv.keys, kv.scaling, start, kv.workspace)
        a, below = softmax_counting(logits, math.log(threshold))  # (Hkv, g, w, L); 0 in a query's future
        scores += a.sum(dim=2).mean(dim=1)
        rows = a.shape[0] * a.shape[1]
        seen = torch.arange(start + 1, start + a.shape[2] + 1, device=a.device)  # keys query q sees
        small += below - rows * int((length - seen).sum())  # the future is no sparsity
        visible += rows * int(seen.sum())
    return PostVision(scores, 1.0 - small / visible)


@dataclass
class VLCache(ScoredPruner):
    """sparsity_threshold: p; attention below p times its row's maximum counts as zero.
    chunk_size: post-vision queries scored at a time."""

    sparsity_threshold: float = 0.01
    chunk_size: int = 512
    name: ClassVar[str] = "vlcache"
    display_name: ClassVar[str] = "VL-Cache"
    budget_rule: ClassVar[str] = "spread"
    cross_layer: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.sparsity_threshold < 1.0:
            raise ConfigError(f"{self.name}: sparsity_threshold={self.sparsity_threshold} must lie in (0, 1)")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConfigError(f"{self.name}: chunk_size={self.chunk_size!r} must be an integer >= 1")

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """The post-vision queries' attention summed per key: the question after the images says which
        image and text keys the answer reads. Only a single-layer call uses it; a sample's layers go
        through `observe` and `select_layers`, which also share the budget out by density."""
        return post_vision_stats(kv, self.sparsity_threshold, self.chunk_size).scores

    def observe(self, kv: LayerKV) -> PostVision | None:
        if not self.should_prune(kv):
            return None  # kept whole: no attention to compute
        return post_vision_stats(kv, self.sparsity_threshold, self.chunk_size)

    def select_layers(self, kvs: list[LayerKV], observations: list[Any]) -> list[Selection]:
        if any(obs is None for obs in observations):
            return [Selection.everything(kv) for kv in kvs]
        budget = self.split_budget(kvs[0].length)
        per_layer = layer_budgets([obs.density for obs in observations], budget.selected,
                                  kvs[0].length - budget.recent)
        return [Selection(index=top_selected_plus_recent(obs.scores, hh, budget.recent))
                for obs, hh in zip(observations, per_layer)]


def layer_budgets(densities: list[float], selected: int, candidates: int) -> list[int]:
    """hh_l in proportion to each layer's density, summing to len(densities) * selected."""
    return apportion(densities, len(densities) * selected, candidates)
