"""How differently a layer attends within a modality and across modalities (the paper's
Figures 1, 6 and 7): the attention weights of intra-modality pairs (text->text,
image->image) and cross-modality pairs (text->image, image->text), their kernel density
estimates, and the Jensen-Shannon divergence between the two.

The weights are recorded through the pruning engine: `AttentionRecorder` is a method that
keeps everything and, on the way, scores the layer's own queries and keys (chunked, so no
heads x L x L matrix is held), which works with any attention kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import gaussian_kde
from torch import Tensor

from csp.engine.attention import grouped_logits
from csp.engine.method import KVPruner, LayerKV, Selection

KINDS = ("intra", "cross")
LOG_FLOOR = 1e-12  # weights are compared on a log10 scale; exact zeros are lifted to this


def modality_weights(
    queries: Tensor, keys: Tensor, visual: Tensor, scaling: float, *, chunk: int = 256
) -> dict[str, Tensor]:
    """Causal softmax attention weights of every (query head, query, visible key) pair,
    split into intra- and cross-modality pairs.

    queries: (Hq, L, D) for positions 0..L-1; keys: (Hkv, L, D); visual: (L,) bool.
    Returns {"intra": (n,), "cross": (m,)} float32 on the CPU.
    """
    length = keys.shape[1]
    out: dict[str, list[Tensor]] = {k: [] for k in KINDS}
    for start in range(0, length, chunk):
        q = queries[:, start : start + chunk]
        attn = torch.softmax(grouped_logits(q, keys, scaling, start), dim=-1)  # (Hkv, g, w, L)
        w = q.shape[1]
        q_pos = torch.arange(start, start + w, device=keys.device)
        visible = torch.arange(length, device=keys.device)[None, :] <= q_pos[:, None]  # (w, L)
        same = visual[start : start + w, None] == visual[None, :]
        for kind, pairs in (("intra", visible & same), ("cross", visible & ~same)):
            out[kind].append(attn[..., pairs].reshape(-1).float().cpu())
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


def to_log10(weights: np.ndarray | Tensor) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return np.log10(np.maximum(w, LOG_FLOOR))


def kde_on_grid(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE (Scott's bandwidth) of `samples` evaluated on `grid`, as a density.

    A sample with (almost) no spread has no KDE; it is a spike at its value, put on the
    nearest grid point with the mass of one grid cell."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("kde_on_grid: no samples")
    if samples.size < 2 or np.ptp(samples) < 1e-12:
        spike = np.zeros_like(grid, dtype=np.float64)
        spike[np.abs(grid - samples.mean()).argmin()] = 1.0 / (grid[1] - grid[0])
        return spike
    return gaussian_kde(samples)(grid)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log, so in [0, ln 2]) of two non-negative weight
    vectors on the same support, each normalized to sum to one."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
        raise ValueError("js_divergence: two non-negative vectors of the same shape with positive mass")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return max(0.5 * kl(p) + 0.5 * kl(q), 0.0)


def common_grid(*samples: np.ndarray, points: int = 512, pad: float = 0.25) -> np.ndarray:
    lo = min(float(np.min(s)) for s in samples)
    hi = max(float(np.max(s)) for s in samples)
    span = max(hi - lo, 1e-6)
    return np.linspace(lo - pad * span, hi + pad * span, points)


def kde_js(a: np.ndarray, b: np.ndarray, points: int = 512) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """JS divergence between the KDEs of two samples on a shared grid; also (grid, pdf_a, pdf_b)."""
    grid = common_grid(a, b, points=points)
    pa, pb = kde_on_grid(a, grid), kde_on_grid(b, grid)
    return js_divergence(pa, pb), grid, pa, pb


@dataclass
class AttentionRecorder(KVPruner):
    """A 'method' that keeps every entry and records each layer's intra / cross weights.

    At most `max_per_layer` weights of each kind are kept per layer and prompt (a uniform
    random subset from a seeded generator), so long prompts stay cheap to analyse. Prompts
    without both modalities are skipped: they have no cross pairs.
    """

    budget: float = 1.0
    recent_ratio: float = 0.0
    max_per_layer: int = 20000
    chunk: int = 256
    seed: int = 0
    weights: dict[int, dict[str, list[Tensor]]] = field(default_factory=dict, repr=False)

    name: ClassVar[str] = "attention-recorder"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._gen = torch.Generator().manual_seed(self.seed)

    def should_prune(self, kv: LayerKV) -> bool:
        return True

    def select(self, kv: LayerKV, budget) -> Selection:
        if bool(kv.visual.any()) and not bool(kv.visual.all()):
            found = modality_weights(kv.queries(None), kv.keys, kv.visual, kv.scaling, chunk=self.chunk)
            layer = self.weights.setdefault(kv.layer_idx, {k: [] for k in KINDS})
            for kind, values in found.items():
                if values.numel() > self.max_per_layer:
                    values = values[torch.randperm(values.numel(), generator=self._gen)[: self.max_per_layer]]
                layer[kind].append(values)
        return Selection.everything(kv)

    def collected(self) -> dict[int, dict[str, np.ndarray]]:
        """layer -> {"intra": weights, "cross": weights}, over every prompt recorded so far."""
        return {layer: {k: torch.cat(v).numpy() if v else np.empty(0) for k, v in kinds.items()}
                for layer, kinds in sorted(self.weights.items())}
