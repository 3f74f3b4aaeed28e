"""Attention scores for ranking cached tokens, computed from queries and keys.

Methods never read the attention weights a kernel returns (flash-attention returns none),
so they score from the layer's own queries and keys here. Everything is done in float32
and per KV head: the query heads of a grouped-query KV group are averaged.
No function here holds more than heads x chunk x L scores at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def grouped_logits(queries: Tensor, keys: Tensor, scaling: float, query_start: int) -> Tensor:
    """Causal pre-softmax logits Q K^T * scaling, grouped per KV head.

    queries: (Hq, W, D) for prompt positions query_start .. query_start + W - 1;
    keys: (Hkv, L, D). Returns (Hkv, Hq // Hkv, W, L) float32, -inf where a key is in the
    query's future.
    """
    hq, w, d = queries.shape
    hkv, length, _ = keys.shape
    q = (queries.float() * scaling).view(hkv, hq // hkv, w, d)
    logits = torch.matmul(q, keys.float().transpose(-1, -2).unsqueeze(1))
    q_pos = torch.arange(query_start, query_start + w, device=keys.device)
    future = torch.arange(length, device=keys.device)[None, :] > q_pos[:, None]
    return logits.masked_fill_(future, float("-inf"))


def n_softmax(logits: Tensor, n: float = 1.0, *, inplace: bool = False) -> Tensor:
    """exp(O_i) / (n + sum_j exp(O_j)) over the last dim, computed stably; n = 0 is softmax.

    With m the row max: exp(O_i - m) / (n * exp(-m) + sum_j exp(O_j - m)); the per-row
    denominators are formed in float64 so that n * exp(-m) does not overflow for a low max.
    inplace=True overwrites `logits`, so that scoring a long prompt holds one score tensor.
    Each row needs at least one finite logit.
    """
    m = logits.amax(dim=-1, keepdim=True)
    e = logits.sub_(m) if inplace else logits - m
    e = e.exp_()
    denom = e.sum(dim=-1, keepdim=True, dtype=torch.float64)
    if n:
        denom += n * torch.exp(-m.double())
    return e.div_(denom.to(e.dtype))


@dataclass
class ColumnStats:
    """Per KV head and key, statistics of the attention it receives from ALL causal queries."""

    total: Tensor  # (Hkv, L) sum over queries of a[q, j]
    total_sq: Tensor  # (Hkv, L) sum over queries of a[q, j]^2
    count: Tensor  # (L,) number of queries that can see key j: L - j


def column_sums(queries: Tensor, keys: Tensor, scaling: float, chunk: int = 512, squares: bool = False) -> ColumnStats:
    """Softmax attention of every prompt query, accumulated over query chunks, holding ONE
    chunk's scores at a time.

    The softmax overwrites the chunk's logits and the group average is taken after the sum
    over queries wherever it is linear, so the peak is Hq x chunk x L floats (plus a
    Hkv x chunk x L average for the squares of grouped-query maps). total_sq is only
    accumulated when `squares` (ReCo's deviation); otherwise it is left at zero.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    hkv, length, _ = keys.shape
    total = torch.zeros(hkv, length, dtype=torch.float32, device=keys.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, length, chunk):
        a = n_softmax(grouped_logits(queries[:, start : start + chunk], keys, scaling, start), 0.0, inplace=True)
        total += a.sum(dim=2).mean(dim=1)
        if squares:
            a = a.squeeze(1) if a.shape[1] == 1 else a.mean(dim=1)
            total_sq += a.square_().sum(dim=1)
        del a
    count = torch.arange(length, 0, -1, device=keys.device, dtype=torch.float32)
    return ColumnStats(total, total_sq, count)
