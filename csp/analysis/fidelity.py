"""Label-free fidelity of a pruned cache: how far its next-token distributions drift from the
full cache's, along the full cache's own greedy answer.

Benchmark scores need labels and a model that can answer; on a random-weight model (CI) or a
benchmark with few samples they say little. Fidelity needs neither: two decoders run in
lockstep over the same prompt, one over the full cache and one over the method's pruned cache,
and both are fed the token the FULL cache's greedy decoding picks (teacher forcing). At each
step we compare the two next-token distributions:

- KL(full || method) = sum_v p_full(v) * (log p_full(v) - log p_method(v)), averaged over the
  answer's steps. The full cache is the reference, so the expectation is under ITS
  distribution (as in distillation): the method pays for probability it withholds from what
  the full cache would say, not for mass it spreads over tokens the full cache ignores;
- top-1 agreement: the share of steps where both greedy choices are the same token;
- first divergence: the first step where they differ. Until then teacher forcing and free
  greedy decoding feed the same tokens, so this is exactly where the method's own greedy
  answer leaves the full cache's (None when it never does).

The steps compared are those at which the full-cache greedy decoder emitted a token, the
terminating EOS included (deciding to stop is a decision too). EOS is masked for the first
`min_new_tokens` steps exactly as `greedy_generate` does; the KL is over the model's raw
distributions.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from csp.engine.decode import Decoder, Inputs, greedy_pick
from csp.engine.method import KVPruner


@dataclass
class SampleFidelity:
    """One sample: the full-cache answer's length and how the method followed it."""

    steps: int  # steps compared (answer tokens, plus the EOS step when the answer ended on EOS)
    kl: float  # mean over steps of KL(full || method), nats
    top1: float  # share of steps with the same greedy token
    first_divergence: int | None  # 0-based step of the first different greedy token; None = never
    kv_bytes_ratio: float | None = None  # pruned cache bytes / full cache bytes (for the batch)


@dataclass
class FidelitySummary:
    """A dataset's (or any set of samples') fidelity: every sample weighs the same."""

    samples: int
    kl: float  # mean of the per-sample mean KL
    top1: float  # mean of the per-sample agreement rates
    identical: float  # share of samples whose greedy answer equals the full cache's
    first_divergence_median: float | None  # over the samples that diverge; None if none does
    steps: int  # steps compared in total

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) per row of two logit tensors (B, V), in float32; zero where p is zero.

    Identical rows give exactly 0 (p * (a - a)); a token p can emit and q cannot gives inf.
    """
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(dim=-1)


@torch.inference_mode()
def batch_fidelity(
    adapter,
    inputs: Inputs | Sequence[Inputs],
    method: KVPruner,
    *,
    max_new_tokens: int = 512,
    min_new_tokens: int = 1,
) -> list[SampleFidelity]:
    """Fidelity of `method` against the full cache for each sample of a left-padded batch
    (or of a list of single prompts, each prefilled alone: see `csp.engine.decode.Decoder`).

    Holds both caches at once (the full one and the pruned one); the pruned decoder's
    per-layer mask hooks (ragged layouts) are active only during its own steps.
    """
    if max_new_tokens < 1 or min_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1 and min_new_tokens={min_new_tokens} >= 0")
    full = Decoder(adapter, inputs, None)
    pruned = Decoder(adapter, inputs, method)
    eos = torch.tensor(sorted(set(adapter.eos_token_ids)), device=full.logits.device)
    bytes_ratio = pruned.kv_bytes / full.kv_bytes if full.kv_bytes else None
    ref_logits, our_logits = full.logits, pruned.logits
    batch = ref_logits.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=ref_logits.device)
    kl_sum = torch.zeros(batch, dtype=torch.float64)
    agree = torch.zeros(batch, dtype=torch.long)
    steps = torch.zeros(batch, dtype=torch.long)
    first: list[int | None] = [None] * batch
    for step in range(max_new_tokens):
        kl = kl_divergence(ref_logits, our_logits).double().cpu()
        allow_eos = step >= min_new_tokens
        ref_tok, our_tok = greedy_pick(ref_logits, eos, allow_eos), greedy_pick(our_logits, eos, allow_eos)
        same = (ref_tok == our_tok).cpu()
        active = (~finished).cpu()
        kl_sum += torch.where(active, kl, torch.zeros_like(kl))
        agree += (same & active).long()
        steps += active.long()
        for b in (active & ~same).nonzero().squeeze(-1).tolist():
            if first[b] is None:
                first[b] = step
        finished |= torch.isin(ref_tok, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        tokens = ref_tok.masked_fill(finished, adapter.pad_token_id)
        ref_logits = full.step(tokens)
        with pruned:  # its mask hooks, if any, must not see the full decoder's steps
            our_logits = pruned.step(tokens)
    return [
        SampleFidelity(steps=int(steps[b]), kl=float(kl_sum[b] / steps[b]), top1=float(agree[b]) / int(steps[b]),
                       first_divergence=first[b], kv_bytes_ratio=bytes_ratio)
        for b in range(batch)
    ]


def summarize(samples: Sequence[SampleFidelity]) -> FidelitySummary:
    """Per-sample means, so a long answer does not outweigh a short one."""
    if not samples:
        raise ValueError("summarize: no samples")
    diverged = [s.first_divergence for s in samples if s.first_divergence is not None]
    return FidelitySummary(
        samples=len(samples),
        kl=statistics.fmean(s.kl for s in samples),
        top1=statistics.fmean(s.top1 for s in samples),
        identical=sum(s.first_divergence is None for s in samples) / len(samples),
        first_divergence_median=float(statistics.median(diverged)) if diverged else None,
        steps=sum(s.steps for s in samples),
    )


def fidelity_record(samples: Mapping[int, SampleFidelity], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of a dataset's fidelity.json: the summary, the settings, every sample."""
    ordered = sorted(samples.items())
    summary = summarize([s for _, s in ordered])
    return {
        "summary": summary.as_dict(),
        "meta": dict(meta or {}),
        "samples": [{"sample_id": sid, **asdict(s)} for sid, s in ordered],
    }


def read_summary(record: Mapping[str, Any], source: str = "fidelity record") -> FidelitySummary:
    """The summary of a fidelity.json record, with a clear error naming `source` (the caller's file)
    when a field is missing."""
    try:
        data = record["summary"]
        return FidelitySummary(**{f: data[f] for f in FidelitySummary.__dataclass_fields__})
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: field 'summary' or {e} is missing or malformed") from None


def collect_fidelity(
    adapter,
    batches: Iterable[tuple[Sequence[int], Mapping[str, Tensor]]],
    method: KVPruner,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 1,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """fidelity.json content for (sample ids, encoded left-padded batch) pairs; the caller
    (the benchmark runner) owns prompts and batching, this module only the comparison."""
    samples: dict[int, SampleFidelity] = {}
    for ids, inputs in batches:
        found = batch_fidelity(adapter, inputs, method, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
        if len(found) != len(ids):
            raise ValueError(f"collect_fidelity: {len(ids)} sample ids for a batch of {len(found)}")
        samples.update(zip((int(i) for i in ids), found))
    meta = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, **(meta or {})}
    return fidelity_record(samples, meta)


def recorded_ids(path: Path) -> set[int] | None:
    """Sample ids of an existing fidelity.json (None when absent or unreadable)."""
    try:
        return {int(s["sample_id"]) for s in json.loads(path.read_text(encoding="utf-8"))["samples"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
