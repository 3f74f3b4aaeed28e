"""scripts/plot_sweeps.py on hand-made run folders: which runs enter each figure, the values
and means it reports, the best cross ratio, and the files it writes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from milebench import catalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plots(load_script):
    return load_script("plot_sweeps")


def make_run(results: Path, run: str, scores: dict[str, float], method: dict | None = None, budget=0.2) -> None:
    run_dir = results / "m" / run
    for name, value in scores.items():
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "eval.json").write_text(json.dumps({catalog.get(name).metric: value / 100}))
    if method is not None:
        cfg = {"model": {"name": "m"}, "budget": budget, "budget_tokens": None, "run_name": run,
               "method": {"_target_": "csp.cross_self.CrossSelfPruner", **method}}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    csp = {"cross_ratio": None, "score_fn": "nsoftmax", "decompose": True}
    for ratio, web, tqa in ((0.1, 40, 20), (0.5, 50, 10), (0.9, 30, 30)):  # figure 3
        make_run(r, f"csp_b0.2,cross_ratio={ratio}", {"WebQA": web, "TQA": tqa}, {**csp, "cross_ratio": ratio})
    make_run(r, "csp_b0.2", {"WebQA": 45, "TQA": 25, "GPR1200": 5}, csp)  # figures 4 and 5
    make_run(r, "csp_b0.2,score_fn=softmax", {"WebQA": 35, "TQA": 25}, {**csp, "score_fn": "softmax"})
    make_run(r, "csp_b0.2,decompose=false,score_fn=softmax", {"WebQA": 15, "TQA": 25})  # no config: the name
    make_run(r, "full", {"WebQA": 60, "TQA": 30})
    make_run(r, "csp_b0.1", {"WebQA": 35, "TQA": 15})
    make_run(r, "h2o_b0.1", {"WebQA": 25, "TQA": 15})
    make_run(r, "h2o_b0.2", {"WebQA": 35, "TQA": 20})
    return r


def test_each_figure_takes_its_runs_and_values(plots, results, tmp_path):
    out = tmp_path / "plots"
    frames = plots.main(["--results", str(results), "--out", str(out)])
    f3 = frames["figure3_cross_ratio"]
    assert sorted(f3.cross_ratio.unique()) == [0.1, 0.5, 0.9]  # the default run (ratio per dataset) is not in it
    assert f3[(f3.dataset == "WebQA") & (f3.cross_ratio == 0.5)].score.item() == pytest.approx(50)
    md3 = (out / "figure3_cross_ratio.md").read_text()
    assert "| WebQA | 40.0 | 50.0 | 30.0 | 0.5 |" in md3 and "| TQA | 20.0 | 10.0 | 30.0 | 0.9 |" in md3

    f4 = frames["figure4_ablation"]
    assert set(zip(f4.score_fn, f4.decompose)) == {("nsoftmax", True), ("softmax", True), ("softmax", False)}
    assert set(f4.dataset) == {"WebQA", "TQA"}  # GPR1200 is in one run only
    md4 = (out / "figure4_ablation.md").read_text()
    # means: (45 + 25) / 2, (35 + 25) / 2, (15 + 25) / 2
    assert "| mean | 35.0 | 30.0 | 20.0 |" in md4

    f5 = frames["figure5_budget"]
    assert set(f5.method) == {"full", "csp", "h2o"} and set(f5.dataset) == {"WebQA", "TQA"}
    md5 = (out / "figure5_budget.md").read_text()
    assert "| Full Cache | – | – | 45.0 |" in md5
    assert "| H2O | 20.0 | 27.5 | – |" in md5 and "| CSP | 25.0 | 35.0 | – |" in md5
    for name in plots.FIGURES:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert pd.read_csv(out / f"{name}.csv").shape[0] == len(frames[name])


def test_missing_figures_are_skipped_and_named(plots, tmp_path, capsys):
    r = tmp_path / "results"
    make_run(r, "full", {"WebQA": 60})
    frames = plots.main(["--results", str(r), "--out", str(tmp_path / "p")])
    assert list(frames) == ["figure5_budget"]
    assert "figure3_cross_ratio: no runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plots.main(["--results", str(tmp_path / "nowhere")])
