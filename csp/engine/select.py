"""Shared selection and merging mechanics: which prompt positions a head keeps, and how
evicted entries are folded into kept ones.

Every baseline ends the same way, "the best `hh` of the older tokens plus the last R", and
the merging baselines all pair each evicted token with its most key-similar kept token.
Writing these once keeps the method files down to their scoring rule.
All functions work per KV head on (heads, L, ...) tensors and return index lists sorted by
position, so a pruned cache stores its entries in prompt order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def recent_positions(length: int, recent: int, heads: int, device: torch.device | None = None) -> Tensor:
    """(heads, recent) the last `recent` prompt positions, which every baseline keeps."""
    return torch.arange(length - recent, length, device=device).expand(heads, -1)


def top_selected_plus_recent(
    scores: Tensor, selected: int, recent: int, always: Tensor | None = None
) -> Tensor:
    """Keep, per head, the `selected` best-scoring positions among [0, L - recent), then the
    last `recent` positions.

    scores: (heads, L); only the candidates [0, L - recent) are read.
    always: (L,) bool, positions ranked above every score (attention sinks, LOOK-M's text
        prior). They are kept even when there are more of them than `selected`; the rest of
        the room goes to the best-scoring others. Returns (heads, K) sorted positions with
        K = max(selected, #always among candidates) + recent.
    """
    heads, length = scores.shape
    n_cand = length - recent
    if not 0 <= selected <= n_cand:
        raise ValueError(f"cannot select {selected} of {n_cand} candidates")
    cand = scores[:, :n_cand].float()
    if always is None:
        top = cand.topk(selected, dim=-1).indices
    else:
        forced = always[:n_cand].to(device=scores.device, dtype=torch.bool)
        n_forced = int(forced.sum())
        room = max(selected - n_forced, 0)
        forced_idx = forced.nonzero().squeeze(-1).expand(heads, -1)
        top = cand.masked_fill(forced, float("-inf")).topk(room, dim=-1).indices
        top = torch.cat([forced_idx, top], dim=-1)
    top = top.sort(dim=-1).values
    return torch.cat([top, recent_positions(length, recent, heads, scores.device)], dim=-1)


def complement(index: Tensor, length: int) -> Tensor:
    """(heads, L - K) the positions NOT in each head's `index` (heads, K of distinct positions),
    sorted."""
    heads = index.shape[0]
    kept = torch.zeros(heads, length, dtype=torch.bool, device=index.device)
    kept.scatter_(1, index, True)
    positions = torch.arange(length, device=index.device).expand(heads, -1)
    return positions[~kept].view(heads, -1)


def cosine_pivots(keys: Tensor, kept: Tensor, evicted: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """For each evicted position, the kept entry whose key is most cosine-similar to its key.

    keys: (heads, L, D); kept: (heads, K); evicted: (heads, E) positions.
    Returns (pivot, similarity), both (heads, E): pivot indexes into `kept` (0 .. K-1).
    Evicted tokens are processed `chunk` at a time, so at most heads x chunk x K
    similarities exist at once.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    d = keys.shape[-1]
    kept_unit = unit.gather(1, kept.unsqueeze(-1).expand(-1, -1, d))
    pivots, sims = [], []
    for start in range(0, evicted.shape[1], chunk):
        idx = evicted[:, start : start + chunk]
        ev_unit = unit.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
        best = torch.matmul(ev_unit, kept_unit.transpose(-1, -2)).max(dim=-1)
        pivots.append(best.indices)
        sims.append(best.values)
    if not pivots:
        empty = evicted.new_zeros(evicted.shape)
        return empty, empty.float()
    return torch.cat(pivots, dim=1), torch.cat(sims, dim=1)


def merge_into_pivots(
    states: Tensor, kept: Tensor, evicted: Tensor, pivot: Tensor, weight: Tensor | None = None,
    pivotal: bool = False,
) -> Tensor:
    """Each kept entry becomes the mean of itself and the evicted entries mapped to it.

    states: (heads, L, D) keys or values; kept (heads, K), evicted (heads, E) positions;
    pivot (heads, E) indexes into `kept`. An evicted entry contributes `weight * x` when a
    weight is given (W-merge) or `(x + its pivot) / 2` when `pivotal` (P-merge), else `x`
    (A-merge). The mean divides by 1 + the number of evicted entries mapped to the kept one.
    Returns (heads, K, D) in the dtype of `states`.
    """
    d = states.shape[-1]
    base = states.float().gather(1, kept.unsqueeze(-1).expand(-1, -1, d))
    moved = states.float().gather(1, evicted.unsqueeze(-1).expand(-1, -1, d))
    pivot_d = pivot.unsqueeze(-1).expand(-1, -1, d)
    if pivotal:
        moved = (moved + base.gather(1, pivot_d)) / 2
    if weight is not None:
        moved = moved * weight.unsqueeze(-1)
    total = base.scatter_add(1, pivot_d, moved)
    count = torch.ones(base.shape[:2], device=states.device).scatter_add(
        1, pivot, torch.ones(pivot.shape, device=states.device)
    )
    return (total / count.unsqueeze(-1)).to(states.dtype)


def apportion(weights: Sequence[float], total: int, cap: int) -> list[int]:
    """Integers n_i in [0, cap] that sum to `total`, in proportion to `weights`: the budget of
    each layer (or head) when a method reallocates a shared total.

    Shares are rounded by largest remainder (ties to the earlier entry). An entry whose share
    exceeds `cap` (it cannot keep more than its candidates) gets `cap`, and the rest of the
    total is shared out again among the others, in proportion to their weights. All-zero
    weights share equally.
    """
    n = len(weights)
    if not 0 <= total <= cap * n:
        raise ValueError(f"cannot apportion {total} among {n} entries of at most {cap}")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {list(weights)}")
    out = [0] * n
    free = list(range(n))
    remaining = total
    while free:
        mass = sum(weights[i] for i in free)
        w = {i: (weights[i] / mass if mass > 0 else 1.0 / len(free)) for i in free}
        share = {i: remaining * w[i] for i in free}
        over = [i for i in free if share[i] > cap]
        if over:
            for i in over:
                out[i] = cap
                remaining -= cap
            free = [i for i in free if i not in over]
            continue
        for i in free:
            out[i] = math.floor(share[i])
        left = remaining - sum(out[i] for i in free)
        # remainders compared to 1e-9, so that float noise does not break a tie
        for i in sorted(free, key=lambda i: (-round(share[i] - out[i], 9), i))[:left]:
            out[i] += 1
        break
    return out
