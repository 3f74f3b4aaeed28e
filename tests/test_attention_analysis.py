"""Intra/cross attention statistics: hand-computed weights, JS divergences with known values,
the recorder inside a real prefill, and scripts/analyze_attention.py end to end."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from csp.analysis.attention_stats import AttentionRecorder, js_divergence, kde_js, modality_weights
from csp.engine.decode import prefill

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2)


def test_js_divergence_of_known_discrete_distributions():
    assert js_divergence([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5 * LN2)
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(LN2)  # disjoint: the maximum
    assert js_divergence([2.0, 6.0], [1.0, 3.0]) == 0.0  # same after normalization
    with pytest.raises(ValueError):
        js_divergence([1.0, -1.0], [1.0, 1.0])


def test_kde_js_matches_the_integrated_divergence_of_two_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, 4000), rng.normal(1.0, 1.0, 4000)

    def integrand(x):
        p, q = norm.pdf(x, 0, 1), norm.pdf(x, 1, 1)
        m = (p + q) / 2
        return 0.5 * p * np.log(p / m) + 0.5 * q * np.log(q / m)

    exact = integrate.quad(integrand, -12, 13)[0]  # about 0.1121 nats
    assert exact == pytest.approx(0.112, abs=2e-3)
    assert kde_js(a, b)[0] == pytest.approx(exact, abs=0.02)
    assert kde_js(rng.normal(-10, 1, 2000), rng.normal(10, 1, 2000))[0] == pytest.approx(LN2, abs=1e-3)
    assert kde_js(a, rng.normal(0.0, 1.0, 4000))[0] < 0.005


def test_modality_weights_hand_computed():
    # equal keys: uniform causal attention, query i gives 1 / (i + 1) to keys 0..i
    queries, keys = torch.ones(1, 3, 2), torch.zeros(1, 3, 2)
    visual = torch.tensor([False, True, True])  # text, image, image
    out = modality_weights(queries, keys, visual, scaling=1.0, chunk=2)  # two chunks: 2 + 1 queries
    # intra: (0,0)=1, (1,1)=1/2, (2,1)=1/3, (2,2)=1/3; cross: (1,0)=1/2, (2,0)=1/3
    assert sorted(out["intra"].tolist()) == pytest.approx([1 / 3, 1 / 3, 1 / 2, 1])
    assert sorted(out["cross"].tolist()) == pytest.approx([1 / 3, 1 / 2])


def test_recorder_sees_every_causal_pair_and_keeps_the_cache(tiny_llava):
    from PIL import Image

    prompt = tiny_llava.format_prompt(f"{tiny_llava.image_token}\nwhat is in the picture?")
    image = Image.fromarray((torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(1)) * 255)
                            .to(torch.uint8).numpy())
    inputs = tiny_llava.encode([prompt], [[image]])
    length = inputs["input_ids"].shape[1]
    recorder = AttentionRecorder(max_per_layer=10**9)
    with torch.inference_mode():
        logits, cache, layout = prefill(tiny_llava, inputs, recorder)
        ref_logits, ref_cache, _ = prefill(tiny_llava, inputs, None)
    heads = tiny_llava.model.config.text_config.num_attention_heads
    collected = recorder.collected()
    assert sorted(collected) == list(range(tiny_llava.model.config.text_config.num_hidden_layers))
    for kinds in collected.values():
        assert kinds["intra"].size + kinds["cross"].size == heads * length * (length + 1) // 2
        # each query's weights sum to one: the total mass is heads x L
        assert kinds["intra"].sum() + kinds["cross"].sum() == pytest.approx(heads * length, rel=1e-4)
    assert torch.equal(cache.layers[0].keys, ref_cache.layers[0].keys) and torch.allclose(logits, ref_logits)
    capped = AttentionRecorder(max_per_layer=50)
    with torch.inference_mode():
        prefill(tiny_llava, inputs, capped)
    assert all(v["intra"].size == 50 and v["cross"].size == 50 for v in capped.collected().values())


def test_analyze_attention_script_writes_its_files(tiny_llava_path, tmp_path, load_script):
    module = load_script("analyze_attention")
    js = module.main(["--datasets", "ALFRED,MMCoQA", "--limit", "1", "--grid", "64", "--out", str(tmp_path)])
    layers = 4
    assert len(js) == layers * 3  # pooled + two datasets
    assert set(js.scope) == {"all", "ALFRED", "MMCoQA"}
    assert js.js.between(0, LN2).all() and (js.js > 0).all()
    saved = pd.read_csv(tmp_path / "js.csv")
    assert saved.js.tolist() == pytest.approx(js.js.tolist())
    kde = pd.read_csv(tmp_path / "kde.csv")
    assert len(kde) == layers * 64 and set(kde.scope) == {"all"}
    for _, d in kde.groupby("layer"):  # densities integrate to about one on the grid
        assert np.trapezoid(d.intra, d.log10_weight) == pytest.approx(1.0, abs=0.02)
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert "| layer | all | ALFRED | MMCoQA |" in (tmp_path / "attention.md").read_text()
    with pytest.raises(SystemExit):
        module.main(["--datasets", "NoSuchSet", "--out", str(tmp_path)])
