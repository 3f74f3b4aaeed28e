"""scripts/study_report.py and scripts/bench_standin.py on hand-made run folders: the table's
means, which runs enter it, the targets' verdicts, the CSP claim and the seed-to-seed rank
agreement, each against numbers worked out by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from milebench import catalog

MC = [d.name for d in catalog.DATASETS if d.scoring == "choice"]  # 22, GPR1200 among them


def make_run(results: Path, model: str, run: str, mc: float, open_: float) -> None:
    """A scored run folder: every multiple-choice dataset at `mc`, the 7 others at `open_`."""
    for name in catalog.NAMES:
        folder = results / model / run / name
        folder.mkdir(parents=True)
        value = mc if name in MC else open_
        (folder / "eval.json").write_text(json.dumps({catalog.get(name).metric: value / 100}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "study"
    seed0, seed1 = "standin-llava", "standin-llava-seed1"
    for model in (seed0, seed1):
        make_run(r, model, "full", 100, 71)  # mean (22 * 100 + 7 * 71) / 29 = 93
    # seed 0 at 0.1: ReCo > CSP > H2O > random
    for method, mc, op in (("reco", 96, 67), ("csp", 93, 61), ("h2o", 72, 43), ("random", 51, 22),
                           ("fastv", 100, 71)):
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
    report = load_script("study_report")
    df = report.study_frame(results, "standin-llava")
    assert sorted(zip(df.method, df.budget)) == sorted(
        [("full", 1.0), *((m, 0.1) for m in ("reco", "csp", "h2o", "random", "fastv")),
         *((m, 0.2) for m in ("reco", "csp", "h2o", "random"))])
    row = df[(df.method == "csp") & (df.budget == 0.1)].iloc[0]
    assert row["MC mean"] == pytest.approx(93) and row["open mean"] == pytest.approx(61)
    assert row["mean"] == pytest.approx((22 * 93 + 7 * 61) / 29)
    # task groups as the papers aggregate: S-4 mixes MMCoQA and ALFRED (both free form here),
    # IR is GPR1200 (multiple choice), NH the two needles
    assert row["T-1"] == pytest.approx(93) and row["S-3"] == pytest.approx(61)
    assert row["IR"] == pytest.approx(93) and row["NH"] == pytest.approx(61)
    written = report.write_report(results, "standin-llava")
    table = written["standin-llava/study_table.md"].read_text()
    assert f"| CSP | {(22 * 93 + 7 * 61) / 29:.1f} | 100.0 |" in table
    assert all(p.stat().st_size > 0 for p in written.values())


def test_the_benchmark_verdicts(load_script, results: Path) -> None:
    bench = load_script("bench_standin")
    chance = {name: 25.0 for name in catalog.NAMES}
    layers = {"full": 90.0, "every_layer": 50.0, "one_layer": {0: 88.0, 1: 60.0}, "share": {0: 0.05, 1: 0.75},
              "max_share": 0.75, "limit": None}
    res = bench.analyse(results, chance, layers)
    s0, s1 = res["seeds"][0], res["seeds"][1]
    assert s0["full_mean"] == pytest.approx(93) and s0["chance_mean"] == 25
    assert s0["target1_ok"]  # every group's multiple choice at 100, 93 >= 3 x 25
    assert set(s0["full_mc_by_group"]) == {"T-1", "T-2", "T-3", "T-4", "S-1", "S-2", "S-5", "IR"}
    # FastV keeps its own budget: listed nowhere in the ranking, so ReCo is best at 0.1
    assert "fastv" not in s0["at_0.1"] and s0["best_at_01"] == "reco"
    full, reco, rand = 93, (22 * 96 + 7 * 67) / 29, (22 * 51 + 7 * 22) / 29
    assert s0["best_gap"] == pytest.approx(full - reco) and s0["random_gap"] == pytest.approx(full - rand)
    assert s0["target2_ok"]
    assert s0["csp_at_0.1"]["beaten_by"] == ["reco"] and not s0["csp_at_0.1"]["claim_holds"]
    assert s0["csp_at_0.2"]["claim_holds"]
    assert s1["best_at_01"] == "csp" and s1["csp_at_0.1"]["claim_holds"]
    assert s0["groups_at_0.1"]["h2o"]["T-1"] == pytest.approx(72)
    # ranks 1 2 3 4 against 2 1 3 4: Spearman 1 - 6 * 2 / (4 * 15) = 0.8, Kendall (5 - 1) / 6
    agree = res["ranking_0.1"]
    assert agree["n"] == 4
    assert agree["spearman"] == pytest.approx(0.8) and agree["kendall"] == pytest.approx(4 / 6)
    # at 0.2 both seeds rank CSP, ReCo, H2O, random: 1.0; both at least 0.8
    assert res["ranking_0.2"]["spearman"] == pytest.approx(1.0) and res["target3_ok"] is True
    assert res["target4_ok"] is False
    text = bench.report(res)
    assert "does NOT hold: above CSP are ReCo" in text
    assert f"the best attention-guided method, ReCo, is {full - reco:.1f} below" in text
    assert "layer 1: 75%" in text


def test_chance_scores_use_the_scorer(load_script, tmp_path: Path) -> None:
    """Answering at random: a multiple-choice dataset with four options scores about 25, a
    needle set with all-different answers about 1/n."""
    from milebench.learnable import generate

    bench = load_script("bench_standin")
    data = generate(tmp_path / "data", samples=8, train=1, seed=0)
    chance = bench.chance_scores(data, draws=200)
    assert chance["ObjectExistence"] == pytest.approx(25, abs=5)
    assert chance["GPR1200"] < 40  # four to six candidates
    assert chance["TextNeedleInAHaystack"] <= 100 / 8 + 5
