"""Greedy decoding over a pruned cache: a prefill, then one token at a time.

Plain on purpose (prefill / decode_step / loop), so that positions and masks are explicit:
after pruning, the cache holds fewer entries than the prompt had, but every new token is
placed at its TRUE position (prompt length + step), and the attention mask covers the
pruned cache's slots, which differ between samples of a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from csp.engine.hooks import LayerMaskHooks, PrefillLayout, PruningHooks, left_pad, make_roomy
from csp.engine.method import FullCache, KVPruner


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated ids per sample, EOS excluded
    prompt_lengths: list[int]  # true prompt lengths (after image-token expansion)
    kv_bytes: int  # bytes the cache held right after the prefill (after pruning)
    kept_tokens: list[float]  # per sample, cache entries per layer and head after pruning (mean)


def cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a cache holds, padding slots included."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)


def prefill_positions(attention_mask: Tensor) -> Tensor:
    """Positions of a left-padded batch: each sample's first real token is at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill(
    adapter, inputs: Mapping[str, Tensor], method: KVPruner | None
) -> tuple[Tensor, DynamicCache, PrefillLayout]:
    """Run the prompt through the model, pruning every layer's cache on the way.

    Returns the last position's logits (B, V), the (pruned) cache and its layout.
    """
    model = adapter.model
    inputs = dict(inputs)
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    cache = DynamicCache(config=model.config)
    kwargs = dict(inputs, position_ids=prefill_positions(attention_mask), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
    if method is None or isinstance(method, FullCache):
        logits = model(**kwargs).logits[:, -1]
        layout = PrefillLayout(slot_mask=attention_mask.bool(), prompt_lengths=attention_mask.sum(-1))
        layout.kept = layout.prompt_lengths.float().expand(len(adapter.attention_modules()), -1)
        return logits, cache, layout
    hooks = PruningHooks(
        adapter.attention_modules(), method, input_ids, attention_mask, adapter.image_token_id
    )
    with hooks:
        logits = model(**kwargs).logits[:, -1]
    return logits, cache, hooks.layout()


Inputs = Mapping[str, Tensor]


def prefill_each(
    adapter, samples: Sequence[Inputs], method: KVPruner | None
) -> tuple[Tensor, DynamicCache, PrefillLayout]:
    """Prefill every prompt alone, then stack the pruned caches into one left-padded batch.

    Gives what a batched prefill gives (a batch equals its prompts run alone), without the
    padding mask that makes CPU attention several times slower than plain causal attention;
    decoding then runs batched over the stacked cache.
    """
    parts = [prefill(adapter, one, method) for one in samples]
    width = max(cache.get_seq_length() for _, cache, _ in parts)
    cache = DynamicCache(config=adapter.model.config)
    for i in range(len(parts[0][1].layers)):
        keys = [left_pad(part[1].layers[i].keys, width, -2) for part in parts]
        values = [left_pad(part[1].layers[i].values, width, -2) for part in parts]
        cache.update(torch.cat(keys), torch.cat(values), i)
    layouts = [layout for _, _, layout in parts]
    layer_masks = None
    if any(lay.ragged for lay in layouts):
        heads = cache.layers[0].keys.shape[1]
        per_sample = [lay.layer_masks or [lay.slot_mask[:, None, :].expand(-1, heads, -1)] * len(cache.layers)
                      for lay in layouts]
        layer_masks = [torch.cat([left_pad(m[i], width, -1) for m in per_sample]) for i in range(len(cache.layers))]
    layout = PrefillLayout(
        slot_mask=torch.cat([left_pad(lay.slot_mask, width, -1) for lay in layouts]),
        prompt_lengths=torch.cat([lay.prompt_lengths for lay in layouts]),
        layer_masks=layer_masks,
        kept=torch.cat([lay.kept for lay in layouts], dim=1),
    )
    return torch.cat([logits for logits, _, _ in parts]), cache, layout


def greedy_pick(logits: Tensor, eos: Tensor, allow_eos: bool) -> Tensor:
    """The greedy token of each row (B, V); EOS is barred until `min_new_tokens` are out."""
    if not allow_eos:
        logits = logits.index_fill(-1, eos, float("-inf"))
    return logits.argmax(dim=-1)


def decode_step(model, tokens: Tensor, cache, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """One token per sample at explicit positions; returns its logits (B, V)."""
    out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions[:, None],
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1]


class Decoder:
    """Decoding state after a prefill: feeds one token per sample at its true position.

    Owns the slot mask of the pruned cache (extended by one entry per step) and, for ragged
    layouts, the per-layer mask hooks; use as a context manager so those hooks are removed.
    """

    def __init__(self, adapter, inputs: Inputs | Sequence[Inputs], method: KVPruner | None):
        """`inputs`: one left-padded batch (batched prefill), or a list of single prompts
        (each prefilled alone, see `prefill_each`)."""
        self.model = adapter.model
        if isinstance(inputs, Sequence):
            self.logits, self.cache, self.layout = prefill_each(adapter, inputs, method)
        else:
            self.logits, self.cache, self.layout = prefill(adapter, inputs, method)
        self.kv_bytes = cache_bytes(self.cache)
        make_roomy(self.cache)
        self.steps = 0
        self._slots = self.layout.slot_mask.long()
        self._mask_hooks = (
            LayerMaskHooks(adapter.attention_modules(), self.layout.layer_masks) if self.layout.ragged else None
        )

    def __enter__(self) -> "Decoder":
        if self._mask_hooks:
            self._mask_hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mask_hooks:
            self._mask_hooks.__exit__(*exc)

    def step(self, tokens: Tensor) -> Tensor:
        """Append `tokens` (B,) to the cache and return the next logits (B, V)."""
        if self._mask_hooks:
            self._mask_hooks.generated = self.steps
        mask = torch.cat([self._slots, self._slots.new_ones(len(tokens), self.steps + 1)], dim=-1)
        self.logits = decode_step(self.model, tokens, self.cache, mask, self.layout.prompt_lengths + self.steps)
        self.steps += 1
        return self.logits


@torch.inference_mode()
def greedy_generate(
    adapter,
    inputs: Inputs | Sequence[Inputs],
    method: KVPruner | None = None,
    *,
    max_new_tokens: int = 512,
    min_new_tokens: int = 1,
) -> GenerationOutput:
    """Greedy decoding of a left-padded batch (or a list of single prompts, each prefilled
    alone) with `method` pruning the prompt's cache.

    Each sample stops at its first EOS (not included in its tokens), after at least
    `min_new_tokens` and at most `max_new_tokens` tokens, or once its decoded text holds one of
    the adapter's `stop_strings` (the token that completes it is kept, as the authors' keyword
    stopping criterion keeps it).
    """
    if max_new_tokens < 1 or min_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1 and min_new_tokens={min_new_tokens} >= 0")
    with Decoder(adapter, inputs, method) as dec:
        logits = dec.logits
        eos = torch.tensor(sorted(set(adapter.eos_token_ids)), device=logits.device)
        batch = logits.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=logits.device)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        stop = tuple(getattr(adapter, "stop_strings", ()))
        for step in range(max_new_tokens):
            nxt = greedy_pick(logits, eos, allow_eos=step >= min_new_tokens)
            finished |= torch.isin(nxt, eos)
            for b in (~finished).nonzero().squeeze(-1).tolist():
                tokens[b].append(int(nxt[b]))
                if stop and step + 1 >= min_new_tokens and any(s in adapter.decode(tokens[b]) for s in stop):
                    finished[b] = True
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = dec.step(nxt.masked_fill(finished, adapter.pad_token_id))
    return GenerationOutput(
        tokens=tokens,
        prompt_lengths=dec.layout.prompt_lengths.tolist(),
        kv_bytes=dec.kv_bytes,
        kept_tokens=dec.layout.kept.float().mean(0).tolist(),
    )
