"""The contract between the pruning engine and a KV-pruning method.

The engine (`csp.engine.hooks`) owns the mechanics: hooks on the decoder's attention modules,
recomputing queries, modality masks, per-sample unpadding and the cache rewrite. A method
only sees one sample's prompt KV in one layer (`LayerKV`) and answers which entries to keep,
or what merged entries to store (`Selection`). Budget arithmetic lives here once, so one
override of `budget` / `recent_ratio` / `budget_tokens` changes every method alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor

from csp.engine.attention import Workspace
from csp.engine.select import top_selected_plus_recent


class ConfigError(ValueError):
    """A method or run configured with values that cannot work; raised before any model loads."""


@dataclass
class LayerKV:
    """One sample's prompt in one decoder layer (padding already removed).

    keys, values: (kv_heads, L, head_dim), keys after the rotary embedding, as cached.
    visual: (L,) bool, True where the input id is the model's image token.
    queries(last): (query_heads, n, head_dim) post-rotary queries of the last `last` prompt
    positions (all L when None), recomputed from the layer's input on demand, so a method
    that only needs its observation window never pays for all L queries.
    """

    layer_idx: int
    keys: Tensor
    values: Tensor
    visual: Tensor
    scaling: float
    query_fn: Callable[[int | None], Tensor] = field(repr=False)
    workspace: Workspace | None = field(default=None, repr=False)  # reusable score buffer
    num_layers: int = 1  # decoder layers of the model: per-layer budgets (PyramidKV) need it
    # (L,) bool: keys this layer's prefill did not attend to, because an earlier layer's
    # `prefill_mask` masked them (None: none masked)
    masked: Tensor | None = None

    @property
    def length(self) -> int:
        return self.keys.shape[-2]

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[0]

    def queries(self, last: int | None = None) -> Tensor:
        return self.query_fn(last)


@dataclass
class Selection:
    """What a method keeps of one layer's prompt KV, per KV head.

    index: (kv_heads, K) prompt positions, in the order they are stored. A position may
        appear twice (CSP's concat mode stores such a token twice, as the reference does).
    valid: (kv_heads, K) bool or None. When heads keep different numbers of entries the
        lists are padded to a common K and `valid` marks the real ones.
    keys, values: (kv_heads, K, head_dim) or None; merging methods store these instead of
        keys[index] / values[index]. `index` still names the position each entry stands for.
    """

    index: Tensor
    valid: Tensor | None = None
    keys: Tensor | None = None
    values: Tensor | None = None

    @classmethod
    def everything(cls, kv: LayerKV) -> "Selection":
        idx = torch.arange(kv.length, device=kv.keys.device)
        return cls(index=idx.expand(kv.kv_heads, -1))


@dataclass(frozen=True)
class Budget:
    """How many prompt tokens a method keeps: `selected` chosen by score plus the last `recent`."""

    selected: int
    recent: int

    @property
    def total(self) -> int:
        return self.selected + self.recent


def check_budget_fields(budget: float, recent_ratio: float, budget_tokens: int | None) -> None:
    """The rules of the budget fields every method shares (the runner checks them too, since
    the full cache does not read them)."""
    if not 0.0 < budget <= 1.0:
        raise ConfigError(f"budget={budget} is out of range: a kept fraction in (0, 1]")
    if not 0.0 <= recent_ratio <= budget:
        raise ConfigError(f"recent_ratio={recent_ratio} is out of range: it must lie in [0, budget={budget}]")
    if budget_tokens is not None and budget_tokens < 1:
        raise ConfigError(f"budget_tokens={budget_tokens} must be >= 1 (or null for the fraction `budget`)")


@dataclass
class KVPruner:
    """Base of every method: the shared budget fields, their validation and the guards.

    budget: kept fraction of the prompt's L tokens (0.2 = the reference's hh 0.1 + recent 0.1);
        1.0 keeps everything.
    recent_ratio: the part of `budget` spent on the most recent tokens, always kept.
    budget_tokens: an absolute number of kept tokens instead of a fraction; the recent window
        then gets the same share of it as recent_ratio has of budget.
    prune_text_only_prompts: False keeps a prompt without any image whole, as the reference's
        CSP, H2O, ReCo and LOOK-M paths do; its SnapKV path has no such check, so SnapKV
        defaults to True.
    """

    budget: float = 0.2
    recent_ratio: float = 0.1
    budget_tokens: int | None = None
    prune_text_only_prompts: bool = False

    name: ClassVar[str] = "base"
    # How the tables name the method, and its row label in the CSP paper's Table 1 (None: the
    # paper has no such row, so no published numbers are put beside ours).
    display_name: ClassVar[str] = ""
    table_label: ClassVar[str | None] = None
    # How many entries a pruned prompt keeps per layer and KV head; the end-to-end tests hold
    # every registered method to its rule. exact: hh + R everywhere; spread: hh + R on average
    # over the layers and heads (the same total, reallocated); at_least / at_most: never fewer /
    # more than hh + R; own: the method's own rule, not the shared budget.
    budget_rule: ClassVar[str] = "exact"
    # True for a method that allocates across layers: the engine then calls `observe` in every
    # layer's prefill and `select_layers` once the last layer is done (see csp.engine.hooks).
    cross_layer: ClassVar[bool] = False
    # True for a method that changes the prefill itself: after each layer the engine asks
    # `prefill_mask` which keys every later layer of the prefill must not attend to.
    prefill_masking: ClassVar[bool] = False

    def __post_init__(self) -> None:
        try:
            check_budget_fields(self.budget, self.recent_ratio, self.budget_tokens)
        except ConfigError as e:
            raise ConfigError(f"{self.name}: {e}") from None

    def split_budget(self, length: int) -> Budget:
        """The reference arithmetic: hh = int(hh_ratio * L), R = int(recent_ratio * L)."""
        if self.budget_tokens is not None:
            recent = int(self.budget_tokens * self.recent_ratio / self.budget)
            return Budget(self.budget_tokens - recent, recent)
        # round() so that e.g. 0.3 - 0.1 is 0.2 and not 0.19999999999999998
        hh_ratio = round(self.budget - self.recent_ratio, 12)
        return Budget(int(hh_ratio * length), int(self.recent_ratio * length))

    def should_prune(self, kv: LayerKV) -> bool:
        if self.budget_tokens is None and self.budget >= 1.0:
            return False  # int(0.9 * L) + int(0.1 * L) can fall one short of L
        if self.split_budget(kv.length).total >= kv.length:
            return False  # a prompt within the budget is kept whole
        return self.prune_text_only_prompts or bool(kv.visual.any())

    def __call__(self, kv: LayerKV) -> Selection:
        """What the engine calls: the guards, then the method's own selection."""
        if not self.should_prune(kv):
            return Selection.everything(kv)
        return self.select(kv, self.split_budget(kv.length))

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        raise NotImplementedError

    def observe(self, kv: LayerKV) -> Any:
        """What a cross-layer method must learn from a layer while its queries can still be
        computed (during that layer's prefill); nothing for a per-layer method."""
        return None

    def select_layers(self, kvs: list[LayerKV], observations: list[Any]) -> list[Selection]:
        """One sample's every layer at once, after the prefill; a per-layer method selects each
        layer on its own."""
        return [self(kv) for kv in kvs]

    def prefill_mask(self, kv: LayerKV) -> Tensor | None:
        """(L,) bool: keys to hide from every later layer during the prefill (FastV), or None."""
        return None

    def prune_layers(self, kvs: list[LayerKV]) -> list[Selection]:
        """What a prefill does with one sample's layers, in order, on tensors alone (tests and
        analyses call this; the engine interleaves the same steps with the forward). The
        tensors are given, so a prefill mask only reaches the later layers' `masked`."""
        if self.prefill_masking:
            out, masked = [], None
            for kv in kvs:
                kv = replace(kv, masked=masked)
                out.append(self(kv))
                new = self.prefill_mask(kv)
                if new is not None:
                    masked = new if masked is None else masked | new
            return out
        return self.select_layers(kvs, [self.observe(kv) for kv in kvs])

    def for_dataset(self, settings: Mapping[str, Any]) -> "KVPruner":
        """The method as configured for one dataset (CSP takes its cross ratio and bias from a
        per-dataset table); settings the method has no field for, or has set explicitly, are
        ignored. The base method has no per-dataset settings."""
        return self


@dataclass
class FullCache(KVPruner):
    """No pruning: the reference point of every table."""

    budget: float = 1.0
    recent_ratio: float = 0.0
    name: ClassVar[str] = "full"
    budget_rule: ClassVar[str] = "own"  # never prunes
    display_name: ClassVar[str] = "Full Cache"
    table_label: ClassVar[str | None] = "Full Cache"

    def should_prune(self, kv: LayerKV) -> bool:
        return False


@dataclass
class ScoredPruner(KVPruner):
    """Base of the methods that only rank keys: the method writes `score`, the base keeps, per
    KV head, the `hh` best-scoring of the candidates [0, L - R) and then the last R.

    A new ranking rule is thus one `score` function; methods that also change how many each
    layer or head keeps (PyramidKV, Ada-KV) override `select` and call `score` themselves.
    """

    def score(self, kv: LayerKV, budget: Budget) -> Tensor:
        """(kv_heads, L), higher = more worth keeping; only the candidates [0, L - budget.recent)
        are read. `budget` is the selection the scores are for: window-scored methods watch its
        last R queries (SnapKV's observation window is the recent window)."""
        raise NotImplementedError

    def select(self, kv: LayerKV, budget: Budget) -> Selection:
        return Selection(index=top_selected_plus_recent(self.score(kv, budget), budget.selected, budget.recent))
