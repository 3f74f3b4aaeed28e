"""scripts/proxy_report.py and scripts/bench_proxy.py on hand-made proxy run folders: the
table's means, which runs enter it, the targets' verdicts, the CSP claim and the seed-to-seed
rank agreement, each against numbers worked out by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from milebench import catalog

MC = [d.name for d in catalog.PROXY_DATASETS if d.scoring == "choice"]
OPEN = [d.name for d in catalog.PROXY_DATASETS if d.scoring != "choice"]


def make_run(results: Path, model: str, run: str, mc: float, open_: float) -> None:
    """A scored run folder: every multiple-choice proxy task at `mc`, the free-form ones at `open_`."""
    for name in catalog.PROXY_NAMES:
        folder = results / model / run / name
        folder.mkdir(parents=True)
        value = mc if name in MC else open_
        (folder / "eval.json").write_text(json.dumps({catalog.get(name).metric: value / 100}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "proxy"
    seed0, seed1 = "proxy-llava", "proxy-llava-seed1"
    for model in (seed0, seed1):
        make_run(r, model, "full", 100, 94)
    # seed 0 at 0.1: ReCo 95 > CSP 90 > H2O 70 > random 50 (means of MC x4 and open x2)
    for method, mc, op in (("reco", 96, 93), ("csp", 93, 84), ("h2o", 72, 66), ("random", 51, 48),
                           ("fastv", 100, 94)):
        make_run(r, seed0, f"{method}_b0.1,recent_ratio=0.05", mc, op)
    for method, mc, op in (("reco", 95, 95), ("csp", 100, 100), ("h2o", 90, 90), ("random", 70, 70)):
        make_run(r, seed0, f"{method}_b0.2,recent_ratio=0.1", mc, op)
    make_run(r, seed0, "csp_b0.1,recent_ratio=0.05,cross_ratio=0.3", 10, 10)  # a variant: not in the table
    make_run(r, seed0, "h2o_b0.1", 10, 10)  # another recent split than the sweep's: not in the table
    # seed 1 at 0.1: CSP and ReCo change places
    for method, v in (("csp", 90), ("reco", 85), ("h2o", 60), ("random", 40)):
        make_run(r, seed1, f"{method}_b0.1,recent_ratio=0.05", v, v)
        make_run(r, seed1, f"{method}_b0.2,recent_ratio=0.1", v + 5, v + 5)
    return r


def test_the_table_holds_the_sweeps_runs_with_their_means(load_script, results: Path) -> None:
    report = load_script("proxy_report")
    df = report.proxy_frame(results, "proxy-llava")
    assert sorted(zip(df.method, df.budget)) == sorted(
        [("full", 1.0), *((m, 0.1) for m in ("reco", "csp", "h2o", "random", "fastv")),
         *((m, 0.2) for m in ("reco", "csp", "h2o", "random"))])
    row = df[(df.method == "csp") & (df.budget == 0.1)].iloc[0]
    assert row["MC mean"] == pytest.approx(93) and row["open mean"] == pytest.approx(84)
    assert row["mean"] == pytest.approx((4 * 93 + 2 * 84) / 6)  # 90
    written = report.write_report(results, "proxy-llava")
    table = written["proxy-llava/proxy_table.md"].read_text()
    assert "| CSP | 90.0 | 100.0 |" in table
    assert all(p.stat().st_size > 0 for p in written.values())


def test_the_benchmark_verdicts(load_script, results: Path) -> None:
    bench = load_script("bench_proxy")
    res = bench.analyse(results)
    s0, s1 = res["seeds"][0], res["seeds"][1]
    assert s0["target1_ok"] and s0["full_mc"] == {"VisualNeedle": 100, "CrossModal": 100, "Temporal": 100,
                                                     "MultiTurn": 100}
    # FastV keeps its own budget: listed nowhere in the ranking, so ReCo is best at 0.1
    assert "fastv" not in s0["at_0.1"] and s0["best_at_0.1"] == "reco"
    assert s0["gap_best_minus_random"] == pytest.approx(95 - 50) and s0["target2_ok"]
    assert s0["csp_at_0.1"]["beaten_by"] == ["reco"] and not s0["csp_at_0.1"]["claim_holds"]
    assert s0["csp_at_0.2"]["claim_holds"]
    assert s1["best_at_0.1"] == "csp" and s1["csp_at_0.1"]["claim_holds"]
    # ranks 1 2 3 4 against 2 1 3 4: Spearman 1 - 6 * 2 / (4 * 15) = 0.8, Kendall (5 - 1) / 6
    agree = res["ranking_0.1_seed0_vs_seed1"]
    assert agree["n"] == 4
    assert agree["spearman"] == pytest.approx(0.8) and agree["kendall"] == pytest.approx(4 / 6)
    text = bench.report(res)
    assert "the paper's claim does NOT hold: beaten by ReCo" in text
    assert "target 2, at budget 0.1 best - random >= 15: MET (best ReCo 95.0, random 50.0, gap 45.0)" in text
