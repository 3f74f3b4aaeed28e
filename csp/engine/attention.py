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


class Workspace:
    """One reusable float32 buffer for score tensors.

    On the CPU every fresh large tensor is paid for again in page faults, layer after layer;
    a method that scores every layer keeps one of these and writes its scores into it.
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

    def take(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        size = 1
        for n in shape:
            size *= n
        buf = self._buffer
        if buf is None or buf.numel() < size or buf.device != torch.device(device):
            buf = self._buffer = torch.empty(size, dtype=torch.float32, device=device)
        return buf[:size].view(shape)


def grouped_logits(
    queries: Tensor, keys: Tensor, scaling: float, query_start: int, workspace: Workspace | None = None
) -> Tensor:
    """Causal pre-softmax logits Q K^T * scaling, grouped per KV head.

    queries: (Hq, W, D) for prompt positions query_start .. query_start + W - 1;
    keys: (Hkv, L, D). Returns (Hkv, Hq // Hkv, W, L) float32, -inf where a key is in the
    query's future (written into `workspace` when given: valid until its next use).
    """
    hq, w, d = queries.shape
    hkv, length, _ = keys.shape
    g = hq // hkv
    q = (queries.float() * scaling).reshape(hkv, g * w, d)
    k_t = keys.float().transpose(-1, -2)
    if workspace is None:
        logits = torch.bmm(q, k_t)
    else:
        logits = torch.bmm(q, k_t, out=workspace.take((hkv, g * w, length), keys.device))
    logits = logits.view(hkv, g, w, length)
    # only keys after query_start can lie in a window query's future
    q_pos = torch.arange(query_start, query_start + w, device=keys.device)
    future = torch.arange(query_start, length, device=keys.device)[None, :] > q_pos[:, None]
    logits[..., query_start:].masked_fill_(future, float("-inf"))
    return logits


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
    denom = e.sum(dim=-1, keepdim=True).double()
    if n:
        denom += n * torch.exp(-m.double())
    return e.div_(denom.to(e.dtype))


@dataclass
class ColumnStats:
    """Per KV head and key, statistics of the attention it receives from ALL causal queries."""

    total: Tensor  # (Hkv, L) sum over queries of a[q, j]
    total_sq: Tensor  # (Hkv, L) sum over queries of a[q, j]^2
    count: Tensor  # (L,) number of queries that can see key j: L - j


def column_sums(
    queries: Tensor, keys: Tensor, scaling: float, chunk: int = 512, squares: bool = False,
    workspace: Workspace | None = None,
) -> ColumnStats:
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
    workspace = workspace or Workspace()  # every chunk's scores in the same buffer
    for start in range(0, length, chunk):
        logits = grouped_logits(queries[:, start : start + chunk], keys, scaling, start, workspace)
        a = n_softmax(logits, 0.0, inplace=True)
        total += a.sum(dim=2).mean(dim=1)
        if squares:
            a = a.squeeze(1) if a.shape[1] == 1 else a.mean(dim=1)
            total_sq += a.square_().sum(dim=1)
        del a
    count = torch.arange(length, 0, -1, device=keys.device, dtype=torch.float32)
    return ColumnStats(total, total_sq, count)
