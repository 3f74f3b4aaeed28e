"""Label-free fidelity: exact zeros when everything is kept, real drift under a harsh budget,
and a first divergence that is where the method's own greedy answer leaves the full one."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from csp.cross_self import CrossSelfPruner
from csp.fidelity import SampleFidelity, batch_fidelity, fidelity_record, kl_divergence, read_summary, summarize
from csp.generate import greedy_generate

NEW = 10
CASES = [(2, 4), (1, 1)]  # (images, text repeats): two lengths, so the batch is left-padded


def encode(adapter, cases=CASES):
    g = torch.Generator().manual_seed(7)
    prompts, imgs = [], []
    for n, words in cases:
        body = " ".join(["a red car waits at the corner of the street"] * words)
        prompts.append(adapter.format_prompt("\n".join([adapter.image_token] * n) + f"\n{body} What next?"))
        imgs.append([Image.fromarray((torch.rand(20, 30, 3, generator=g) * 255).to(torch.uint8).numpy())
                     for _ in range(n)])
    return adapter.encode(prompts, imgs)


def test_kl_hand_computed():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]).log()
    q = torch.tensor([[0.25, 0.75, 0.0], [0.2, 0.3, 0.5]]).log()
    kl = kl_divergence(p, q)
    assert kl[0].item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert kl[1].item() == 0.0
    # a token the first can emit and the second cannot: infinite divergence
    assert math.isinf(kl_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, float("-inf")]])).item())


def test_summary_weighs_samples_equally():
    s = summarize([SampleFidelity(steps=10, kl=0.2, top1=0.9, first_divergence=3),
                   SampleFidelity(steps=2, kl=0.0, top1=1.0, first_divergence=None),
                   SampleFidelity(steps=4, kl=0.4, top1=0.5, first_divergence=1)])
    assert s.kl == pytest.approx(0.2) and s.top1 == pytest.approx(0.8)
    assert s.identical == pytest.approx(1 / 3) and s.first_divergence_median == 2.0 and s.steps == 16
    rec = fidelity_record({5: SampleFidelity(3, 0.1, 1.0, None), 2: SampleFidelity(1, 0.3, 0.0, 0)}, {"budget": 0.1})
    assert [r["sample_id"] for r in rec["samples"]] == [2, 5]
    assert read_summary(rec).kl == pytest.approx(0.2)
    with pytest.raises(ValueError, match="bad.json"):
        read_summary({"summary": {"kl": 1.0}}, "bad.json")


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_internvl"])
def test_keep_everything_is_exactly_faithful(fixture, request):
    adapter = request.getfixturevalue(fixture)
    out = batch_fidelity(adapter, encode(adapter), CrossSelfPruner(budget=1.0, cross_ratio=0.5, bias=1.0),
                         max_new_tokens=NEW)
    full = greedy_generate(adapter, encode(adapter), None, max_new_tokens=NEW)
    assert len(out) == 2
    for s, tokens in zip(out, full.tokens):
        assert s.kl == 0.0 and s.top1 == 1.0 and s.first_divergence is None
        assert s.steps == min(len(tokens) + 1, NEW)  # the answer, plus its EOS step if it stopped
        assert s.kv_bytes_ratio == 1.0


def test_harsh_budget_drifts_and_divergence_is_where_greedy_differs(tiny_llava):
    method = CrossSelfPruner(budget=0.1, recent_ratio=0.05, cross_ratio=0.5, bias=1.0)
    out = batch_fidelity(tiny_llava, encode(tiny_llava), method, max_new_tokens=NEW)
    full = greedy_generate(tiny_llava, encode(tiny_llava), None, max_new_tokens=NEW).tokens
    ours = greedy_generate(tiny_llava, encode(tiny_llava), method, max_new_tokens=NEW).tokens
    assert all(s.kl > 0 for s in out)
    assert all(s.kv_bytes_ratio < 0.2 for s in out)
    assert any(s.first_divergence is not None for s in out)
    for s, f, o in zip(out, full, ours):
        if s.first_divergence is None:
            assert o == f
        else:
            d = s.first_divergence
            assert o[:d] == f[:d] and o[d : d + 1] != f[d : d + 1]
        assert 0.0 <= s.top1 <= 1.0 - (s.first_divergence is not None) / s.steps + 1e-9
