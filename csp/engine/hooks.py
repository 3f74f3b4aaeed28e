"""The pruning engine: hooks that hand each layer's prompt KV to a method and store what it keeps.

During the prefill only, a forward hook on every decoder attention module reads the layer's
freshly cached keys and values, recomputes the queries a method asks for from the layer's
input (q projection + rotary, so any attention kernel works), splits the left-padded batch
into samples, calls the method once per sample, and rewrites that layer's cache with what
the method keeps. The full prompt KV of a layer is thus freed as soon as the layer is done.
A method that allocates across layers (`KVPruner.cross_layer`) is instead shown each layer
(`observe`, while its queries can be computed) and selects every layer at once when the
prefill is done (`layout`); the full prompt KV is held until then, as an unpruned prefill holds it.
A method that changes the prefill itself (`KVPruner.prefill_masking`, FastV) names after a
layer the keys that every later layer must not attend to; a pre-hook then gives those layers
a full attention mask (sdpa or eager) until the prefill ends.

Samples of a batch may keep different numbers of entries: each sample's kept entries are
left-padded to the batch's longest and the padding slots are masked out of attention while
decoding. When every layer and head of a sample keeps the same number of entries (every
method but CSP's intersection mode), one 2-D padding mask serves all layers and every
kernel, flash-attention included. Otherwise (`ragged`), the decode loop installs a
per-layer, per-head mask through a forward pre-hook on each attention module.

Everything that depends on transformers' cache internals is in `cache_layer` and `RoomyLayer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from csp.engine.attention import Workspace
from csp.engine.method import KVPruner, LayerKV, Selection

def cache_layer(cache, layer_idx: int):
    """The object holding one layer's `keys` / `values` tensors (B, Hkv, T, D) in the cache."""
    return cache.layers[layer_idx]


class RoomyLayer(DynamicLayer):
    """A cache layer for decoding that appends into spare capacity.

    transformers' DynamicLayer concatenates the whole layer at every step, so each decoded
    token copies the cache once more; here entries are written into a buffer with room to
    spare (grown by an eighth, at least 64 slots, when full), and `keys` / `values` are views
    of its filled part.
    """

    MIN_ROOM = 64

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._k = self._v = None
        self._place(keys, values)

    def _place(self, keys: Tensor, values: Tensor, extra: int = 0) -> None:
        n = keys.shape[-2]
        capacity = n + extra + max(self.MIN_ROOM, n // 8)
        self._k = keys.new_empty(*keys.shape[:2], capacity, keys.shape[-1])
        self._v = values.new_empty(*values.shape[:2], capacity, values.shape[-1])
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n, add = self.keys.shape[-2], key_states.shape[-2]
        if n + add > self._k.shape[-2]:
            self._place(self.keys, self.values, add)
        self._k[:, :, n : n + add] = key_states
        self._v[:, :, n : n + add] = value_states
        self.keys, self.values = self._k[:, :, : n + add], self._v[:, :, : n + add]
        return self.keys, self.values


def make_roomy(cache) -> None:
    """Turn every layer of a prefilled cache into a RoomyLayer (same entries, same order)."""
    for i, layer in enumerate(cache.layers):
        cache.layers[i] = RoomyLayer(layer.keys, layer.values)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def recompute_queries(module: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Post-rotary queries (Hq, n, D) of one sample's positions, from the layer's input (n, hidden).

    Follows the Llama / Qwen2 attention of LLaVA and InternVL: q = q_proj(h), split into heads,
    then the rotary embedding with the layer's own cos/sin of those positions.
    """
    q = module.q_proj(hidden).view(hidden.shape[0], -1, module.head_dim).transpose(0, 1)
    return q * cos + rotate_half(q) * sin


@dataclass
class PrefillLayout:
    """Where each sample's kept entries sit in the pruned cache, for the decode loop.

    slot_mask: (B, N) True where slot n of sample b holds a kept prompt entry in every layer
        and head (the padding mask to extend while decoding).
    layer_masks: None, or per layer (B, Hkv, N) when layers or heads keep different slots.
    prompt_lengths: (B,) TRUE prompt lengths: decoding positions continue from these.
    kept: (layers, B) entries kept per head (mean over heads), for reporting.
    """

    slot_mask: Tensor
    prompt_lengths: Tensor
    layer_masks: list[Tensor] | None = None
    kept: Tensor | None = None

    @property
    def ragged(self) -> bool:
        return self.layer_masks is not None


@dataclass
class _LayerResult:
    valid: Tensor  # (B, Hkv, N_layer) bool
    kept: Tensor  # (B,) float, mean kept entries per head


@dataclass
class _Deferred:
    """One sample's layer, held for a cross-layer method until every layer has been seen."""

    kv: LayerKV  # without its queries: they can only be computed inside the layer's forward
    observation: object
    selection: Selection | None = None


def _queries_gone(last: int | None = None) -> Tensor:
    raise RuntimeError("a layer's queries can only be computed during its prefill (use `observe`)")


@dataclass
class PruningHooks:
    """Context manager that prunes every decoder layer's cache during ONE prefill forward:
    each layer's cache then stores only the kept (or merged) entries."""

    attention_modules: Sequence[nn.Module]
    method: KVPruner
    input_ids: Tensor  # (B, P) left-padded prompt ids, after image-token expansion
    attention_mask: Tensor  # (B, P) 1 for real tokens
    image_token_id: int
    _handles: list = field(default_factory=list, init=False, repr=False)
    _results: dict[int, _LayerResult] = field(default_factory=dict, init=False, repr=False)
    _caches: dict[int, object] = field(default_factory=dict, init=False, repr=False)
    _workspace: Workspace = field(default_factory=Workspace, init=False, repr=False)
    _deferred: dict[int, list[_Deferred]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._real = self.attention_mask.bool()
        lengths = self._real.sum(-1)
        tail = torch.arange(self._real.shape[1], device=self._real.device) >= (self._real.shape[1] - lengths)[:, None]
        if not bool((tail == self._real).all()):
            raise ValueError("the prompt batch must be left-padded: every sample's real tokens are its last ones")
        self._lengths = lengths.tolist()
        self._visual = self.input_ids == self.image_token_id
        self._prefill_masking = getattr(self.method, "prefill_masking", False)
        self._masked_keys = torch.zeros_like(self._real)  # (B, P) keys masked by a method's prefill_mask

    def __enter__(self) -> "PruningHooks":
        for module in self.attention_modules:
            self._handles.append(module.register_forward_hook(self._after_attention, with_kwargs=True))
            if self._prefill_masking:
                self._handles.append(module.register_forward_pre_hook(self._prefill_key_mask, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- the hook ---------------------------------------------------------------------------
    def _after_attention(self, module: nn.Module, args, kwargs, output) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.prune_layer(module, hidden, kwargs["position_embeddings"], kwargs.get("past_key_values"))

    def prune_layer(self, module: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor],
                    cache) -> None:
        """What the hook does after one attention module's prefill forward: the method prunes
        that layer's freshly written cache entries. `hidden` is the module's input (B, P, d),
        `position_embeddings` its rotary (cos, sin). Public so that a benchmark can time the
        pruning of one layer apart from its forward."""
        if hidden.shape[1] != self.input_ids.shape[1]:
            raise RuntimeError(
                "pruning hooks saw a forward of length "
                f"{hidden.shape[1]} instead of the prompt's {self.input_ids.shape[1]}: they are "
                "meant to be active during the prefill only"
            )
        cos, sin = position_embeddings
        if cache is None:
            raise RuntimeError("pruning needs the prefill to run with a cache (use_cache=True)")
        layer_idx = module.layer_idx
        layer = cache_layer(cache, layer_idx)
        keys, values = layer.keys, layer.values
        kept_k, kept_v, valid, kept = [], [], [], []
        cross_layer, deferred = getattr(self.method, "cross_layer", False), []
        with torch.no_grad():
            for b in range(keys.shape[0]):
                pos = self._real[b].nonzero().squeeze(-1)
                real = slice(keys.shape[2] - self._lengths[b], keys.shape[2])  # left padding: a view, no copy
                kv = LayerKV(
                    layer_idx=layer_idx,
                    keys=keys[b, :, real],
                    values=values[b, :, real],
                    visual=self._visual[b, pos],
                    scaling=float(module.scaling),
                    query_fn=self._query_fn(module, hidden[b], cos[b], sin[b], pos),
                    workspace=self._workspace,
                    num_layers=len(self.attention_modules),
                    masked=self._masked_keys[b, pos] if self._prefill_masking else None,
                )
                if cross_layer:  # selected once every layer is in: see _select_deferred
                    held = replace(kv, query_fn=_queries_gone, workspace=None)
                    deferred.append(_Deferred(held, self.method.observe(kv)))
                    continue
                sel = self.method(kv)
                if self._prefill_masking:
                    hide = self.method.prefill_mask(kv)
                    if hide is not None:
                        self._masked_keys[b, pos[hide.to(pos.device)]] = True
                k, v, ok = self._gather(sel, kv)
                kept_k.append(k)
                kept_v.append(v)
                valid.append(ok)
                kept.append(ok.float().sum(-1).mean())
        if cross_layer:  # the full prompt KV stays in the cache until the prefill is done
            self._deferred[layer_idx], self._caches[layer_idx] = deferred, cache
            return
        layer.keys, layer.values = stack_left_padded(kept_k, -2), stack_left_padded(kept_v, -2)
        self._results[layer_idx] = _LayerResult(stack_left_padded(valid, -1), torch.stack(kept))
        self._caches[layer_idx] = cache

    def _prefill_key_mask(self, module: nn.Module, args, kwargs):
        """Before a layer's prefill attention: once a method has hidden keys (`prefill_mask`),
        the layer attends causally to the real, unhidden keys only. Every query still sees
        itself, so no row is empty (a hidden token's own output reaches no other token)."""
        if not bool(self._masked_keys.any()):
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        length = self._real.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
        allowed = allowed & (self._real & ~self._masked_keys).to(hidden.device)[:, None, :]
        allowed = (allowed | torch.eye(length, dtype=torch.bool, device=hidden.device))[:, None]
        impl = module.config._attn_implementation
        if impl == "eager":
            kwargs["attention_mask"] = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
                ~allowed, torch.finfo(hidden.dtype).min)
        elif impl == "sdpa":
            kwargs["attention_mask"] = allowed
        else:
            raise ValueError(f"{self.method.name} masks keys during the prefill, which needs a full attention "
                             f"mask; attn_implementation={impl!r} takes only a padding mask: use 'sdpa' or 'eager'")
        return args, kwargs

    @staticmethod
    def _query_fn(module, hidden_b, cos_b, sin_b, pos):
        def queries(last: int | None = None) -> Tensor:
            p = pos if last is None else pos[pos.numel() - last :]
            return recompute_queries(module, hidden_b[p], cos_b[p], sin_b[p])

        return queries

    @staticmethod
    def _gather(sel: Selection, kv: LayerKV) -> tuple[Tensor, Tensor, Tensor]:
        if sel.keys is not None:
            k, v = sel.keys.to(kv.keys.dtype), sel.values.to(kv.values.dtype)
        else:
            idx = sel.index.unsqueeze(-1).expand(-1, -1, kv.keys.shape[-1])
            k, v = kv.keys.gather(1, idx), kv.values.gather(1, idx)
        ok = sel.valid if sel.valid is not None else torch.ones(sel.index.shape, dtype=torch.bool, device=k.device)
        return k, v, ok

    # -- after the prefill --------------------------------------------------------------------
    def _select_deferred(self) -> None:
        """A cross-layer method (`KVPruner.cross_layer`) has observed every layer: select each
        sample's layers together, then rewrite every layer's cache as the hook would have."""
        layers = sorted(self._deferred)
        with torch.no_grad():
            for b in range(len(self._deferred[layers[0]])):
                held = [self._deferred[i][b] for i in layers]
                chosen = self.method.select_layers([h.kv for h in held], [h.observation for h in held])
                for h, sel in zip(held, chosen):
                    h.selection = sel
            for i in layers:
                kept_k, kept_v, valid, kept = [], [], [], []
                for h in self._deferred[i]:
                    k, v, ok = self._gather(h.selection, h.kv)
                    kept_k.append(k)
                    kept_v.append(v)
                    valid.append(ok)
                    kept.append(ok.float().sum(-1).mean())
                layer = cache_layer(self._caches[i], i)
                layer.keys, layer.values = stack_left_padded(kept_k, -2), stack_left_padded(kept_v, -2)
                self._results[i] = _LayerResult(stack_left_padded(valid, -1), torch.stack(kept))
        self._deferred.clear()

    def layout(self) -> PrefillLayout:
        """Equalize the layers' cache lengths and describe the slots for the decode loop."""
        if self._deferred:
            self._select_deferred()
        if len(self._results) != len(self.attention_modules):
            raise RuntimeError(
                f"pruning hooks ran in {len(self._results)} of {len(self.attention_modules)} layers"
            )
        layers = sorted(self._results)
        width = max(self._results[i].valid.shape[-1] for i in layers)
        masks = []
        for i in layers:
            res, layer = self._results[i], cache_layer(self._caches[i], i)
            layer.keys, layer.values = left_pad(layer.keys, width, -2), left_pad(layer.values, width, -2)
            res.valid = left_pad(res.valid, width, -1)
            masks.append(res.valid)
        first = masks[0][:, 0]
        uniform = all(bool((m == first[:, None, :]).all()) for m in masks)
        return PrefillLayout(
            slot_mask=first,
            prompt_lengths=self._real.sum(-1),
            layer_masks=None if uniform else masks,
            kept=torch.stack([self._results[i].kept for i in layers]),
        )


def left_pad(t: Tensor, width: int, dim: int) -> Tensor:
    """`t` with zeros (False) added on the left of its slot dimension `dim` (negative) up to
    `width`: cache tensors (..., slots, D) use dim=-2, slot masks (..., slots) dim=-1."""
    extra = width - t.shape[dim]
    if not extra:
        return t
    return nn.functional.pad(t, [0, 0] * (-dim - 1) + [extra, 0])


def stack_left_padded(tensors: list[Tensor], dim: int) -> Tensor:
    """Per-sample tensors with different slot counts, stacked into one left-padded batch."""
    width = max(t.shape[dim] for t in tensors)
    return torch.stack([left_pad(t, width, dim) for t in tensors])


@dataclass
class LayerMaskHooks:
    """While decoding, gives each attention module its own per-head mask over the cache.

    Needed only for ragged layouts; the mask is rebuilt for each decode step from the prompt
    slots of that layer plus the generated entries, in the format the kernel expects
    (boolean for sdpa, additive for eager). Flash-attention takes only a padding mask.
    """

    attention_modules: Sequence[nn.Module]
    layer_masks: list[Tensor]  # per layer (B, Hkv, N)
    generated: int = 0
    _handles: list = field(default_factory=list, init=False, repr=False)

    def __enter__(self) -> "LayerMaskHooks":
        for module, mask in zip(self.attention_modules, self.layer_masks):
            impl = module.config._attn_implementation
            if impl not in ("eager", "sdpa"):
                raise ValueError(
                    f"this method keeps a different number of tokens per layer or head, which needs a "
                    f"per-head attention mask; attn_implementation={impl!r} takes only a padding mask: "
                    "use 'sdpa' or 'eager'"
                )
            self._handles.append(
                module.register_forward_pre_hook(self._hook(module, mask, impl), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, prompt_mask: Tensor, impl: str):
        groups = module.num_key_value_groups

        def pre_hook(mod, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            b, q_len = hidden.shape[:2]
            if q_len != 1:
                raise RuntimeError(f"per-head decode masks are built for one new token a step, not {q_len}")
            new = torch.ones(b, prompt_mask.shape[1], self.generated + q_len, dtype=torch.bool, device=hidden.device)
            allowed = torch.cat([prompt_mask, new], dim=-1)
            allowed = allowed.repeat_interleave(groups, dim=1).unsqueeze(2).expand(-1, -1, q_len, -1)
            if impl == "eager":
                mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
                mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            else:
                mask = allowed
            kwargs["attention_mask"] = mask
            return args, kwargs

        return pre_hook
