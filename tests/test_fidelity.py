"""Label-free fidelity: exact zeros when everything is kept, real drift under a harsh budget,
and a first divergence that is where the method's own greedy answer leaves the full one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from csp.cross_self import CrossSelfPruner
from csp.analysis.fidelity import SampleFidelity, batch_fidelity, fidelity_record, kl_divergence, read_summary, summarize
from csp.engine.decode import greedy_generate

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


def test_kl_direction_is_full_given_pruned_along_the_full_answer(tiny_llava):
    """fidelity.json's KL is KL(full || pruned): the expectation under the FULL cache's
    distribution, the reference the method is judged against (as in distillation, it
    charges the method for probability it withholds from what the full cache would say).
    Truth: torch's own kl_div over two decoders stepped by hand on the full cache's greedy
    tokens; the reverse direction is checked to give a different number, so the test tells
    the two apart."""
    from torch.nn.functional import kl_div, log_softmax

    from csp.engine.decode import Decoder

    method = CrossSelfPruner(budget=0.1, recent_ratio=0.05, cross_ratio=0.5, bias=1.0)
    inputs = encode(tiny_llava, [(2, 4)])
    steps = 4
    (got,) = batch_fidelity(tiny_llava, inputs, method, max_new_tokens=steps, min_new_tokens=steps)
    eos = sorted(set(tiny_llava.eos_token_ids))
    forward, reverse = [], []
    with torch.inference_mode(), Decoder(tiny_llava, inputs, None) as full, Decoder(tiny_llava, inputs, method) as pruned:
        f, p = full.logits, pruned.logits
        for _ in range(steps):
            lf, lp = log_softmax(f.double(), -1), log_softmax(p.double(), -1)
            forward.append(kl_div(lp, lf, log_target=True, reduction="sum").item())  # KL(full || pruned)
            reverse.append(kl_div(lf, lp, log_target=True, reduction="sum").item())
            tok = f.index_fill(-1, torch.tensor(eos), float("-inf")).argmax(-1)  # EOS barred: min_new_tokens
            f, p = full.step(tok), pruned.step(tok)
    want, other = sum(forward) / steps, sum(reverse) / steps
    assert got.steps == steps and want > 0
    assert abs(want - other) > 0.01 * want  # the directions differ here
    assert got.kl == pytest.approx(want, rel=1e-4)


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


@pytest.mark.parametrize("combine", ["concat", "intersection"])  # intersection: per-layer mask hooks
def test_harsh_budget_drifts_and_divergence_is_where_greedy_differs(tiny_llava, combine):
    method = CrossSelfPruner(budget=0.1, recent_ratio=0.05, cross_ratio=0.5, bias=1.0, combine=combine)
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


# -- the runner (fidelity=true) and the tables ------------------------------------------------

def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_runner_writes_fidelity_per_dataset_and_keeps_it_on_rerun(tmp_path):
    from milebench.runner.loop import run
    from milebench.synthetic import DEFAULT_DIR, ensure_synthetic

    ensure_synthetic(DEFAULT_DIR)
    args = ["method=csp", "budget=0.1", "recent_ratio=0.05", "datasets=[WebQA]", "limit=2", "max_new_tokens=5",
            f"output_dir={tmp_path}"]
    run_dir = run(_compose(*args), method_name="csp")  # no fidelity: no file
    path = run_dir / "WebQA" / "fidelity.json"
    assert not path.exists()
    run(_compose(*args, "fidelity=true"), method_name="csp")  # the same folder, resumed: fidelity only
    record = json.loads(path.read_text())
    preds = json.loads((run_dir / "WebQA" / "pred.json").read_text())
    assert [s["sample_id"] for s in record["samples"]] == sorted(p["sample_id"] for p in preds)
    assert record["summary"]["samples"] == 2 and record["summary"]["kl"] > 0
    assert record["meta"]["method"]["budget"] == 0.1 and record["meta"]["max_new_tokens"] == 5
    before = path.stat().st_mtime_ns
    run(_compose(*args, "fidelity=true"), method_name="csp", load_adapter=lambda *a: pytest.fail("model loaded"))
    assert path.stat().st_mtime_ns == before  # up to date: kept, no model loaded


def test_fidelity_flag_must_be_boolean(tmp_path):
    from milebench.runner.loop import run
    from milebench.runner.settings import RunConfigError

    with pytest.raises(RunConfigError, match="fidelity"):
        run(_compose("fidelity=maybe", f"output_dir={tmp_path}"), load_adapter=lambda *a: pytest.fail("loaded"))


def test_tables_show_fidelity_columns(tmp_path):
    from milebench.tables import build_tables, collect_run, fidelity_frame

    run_dir = tmp_path / "m" / "csp_b0.1"
    for name, kl, top1 in (("WebQA", 0.25, 0.5), ("TQA", 0.125, 0.75)):
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "eval.json").write_text(json.dumps({"Accuracy": 0.5}))
        record = fidelity_record({1: SampleFidelity(4, kl, top1, 0), 2: SampleFidelity(2, kl, top1, None)})
        (run_dir / name / "fidelity.json").write_text(json.dumps(record))
    run = collect_run(run_dir)
    assert run.fidelity["TQA"] == {"kl": 0.125, "top1": 0.75, "identical": 0.5}
    frame = fidelity_frame([run])
    label = run.meta.label
    assert frame.dataset.tolist() == ["WebQA", "TQA"]  # catalog order
    assert frame[f"{label} top-1 %"].tolist() == [50.0, 75.0] and frame[f"{label} identical %"].tolist() == [50.0, 50.0]
    written = build_tables(tmp_path, [run])
    md = written["eval_score.md"].read_text()
    assert "## Fidelity against the full cache" in md and "| WebQA | S-1 | 0.2500 | 50.0 | 50.0 |" in md
    assert "fidelity.csv" in written
    (run_dir / "TQA" / "fidelity.json").write_text(json.dumps({"summary": {"kl": 1.0}}))
    with pytest.raises(ValueError, match="TQA/fidelity.json"):
        collect_run(run_dir)
