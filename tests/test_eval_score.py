"""eval_score.py on a generated set of runs: task means, overall scores, paper rows and
differences, missing datasets named, run metadata with and without a saved config."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import eval_score
from milebench import catalog
from milebench.tables import read_run_meta

ROOT = Path(__file__).resolve().parents[1]

# fractions, as eval.json holds them
SCORES = {
    "ActionLocalization": .30, "ActionPrediction": .40, "ActionSequence": .50,  # T-1 40
    "ObjectExistence": .50, "ObjectInteraction": .60, "MovingAttribute": .70, "ObjectShuffle": .80,  # T-2 65
    "EgocentricNavigation": .20, "MovingDirection": .30,  # T-3 25
    "CounterfactualInference": .40, "StateChange": .40, "CharacterOrder": .50, "SceneTransition": .50,  # T-4 45
    "WebQA": .60, "TQA": .70, "MultiModalQA": .80, "WikiVQA": .90,  # S-1 75
    "SlideVQA": .30, "OCR-VQA": .30, "DocVQA": .60,  # S-2 40
    "Spot-the-Diff": .10, "CLEVR-Change": .20, "IEdit": .30,  # S-3 20
    "MMCoQA": .25, "ALFRED": .15,  # S-4 20
    "nuscenes": .55,  # S-5 55
    "TextNeedleInAHaystack": 0.0, "ImageNeedleInAHaystack": .10,  # NH 5
    "GPR1200": .05,  # IR 5
}
TASKS = {"T-1": 40.0, "T-2": 65.0, "T-3": 25.0, "T-4": 45.0, "S-1": 75.0, "S-2": 40.0, "S-3": 20.0,
         "S-4": 20.0, "S-5": 55.0, "NH": 5.0, "IR": 5.0}
REALISTIC = (40 + 65 + 25 + 45 + 75 + 40 + 20 + 20 + 55) / 9  # 42.777...
DIAGNOSTIC = (0 + 10 + 5) / 3  # needles 0 and 10, GPR1200 5


def make_run(results: Path, model: str, run: str, scores: dict, config: dict | None = None,
             rouge_score: dict | None = None) -> Path:
    run_dir = results / model / run
    for name, value in scores.items():
        folder = run_dir / name
        folder.mkdir(parents=True)
        metric = catalog.get(name).metric
        (folder / "eval.json").write_text(json.dumps({
            metric: value, "image_quantity_level-Accuracy": {"Few": value},
            "image_quantity_level-Result": {"Few": [value * 10, 10]}}))
        if rouge_score and name in rouge_score:
            (folder / "eval_rouge_score.json").write_text(json.dumps({"Rouge-L f": rouge_score[name]}))
    if config is not None:
        import yaml
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def rows(csv: Path, **match) -> pd.DataFrame:
    df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    for k, v in match.items():
        df = df[df[k].astype(str) == str(v)]
    return df


@pytest.fixture
def results(tmp_path):
    res = tmp_path / "results"
    rouge = {"Spot-the-Diff": .40, "CLEVR-Change": .50, "IEdit": .60, "ALFRED": .35}
    make_run(res, "llava-1.5-7b", "csp_b0.2", SCORES,
             config={"model": {"name": "llava-1.5-7b"}, "method": {"_target_": "x"}, "budget": 0.2,
                     "budget_tokens": None, "run_name": "csp_b0.2"}, rouge_score=rouge)
    make_run(res, "llava-1.5-7b", "h2o_b0.2", {k: v for k, v in SCORES.items() if k != "ObjectShuffle"})
    make_run(res, "llava-1.5-7b", "csp_b0.1", SCORES)
    make_run(res, "llava-1.5-7b", "full", SCORES)
    t3 = {d: SCORES[d] for g in ("T-2", "T-4", "S-4", "IR") for d in (x.name for x in catalog.in_group(g))}
    make_run(res, "internvl-chat-1.0", "lookm-tp-p_b0.2", t3)
    make_run(res, "internvl-chat-1.0", "lookm-a_b0.2", t3)
    assert eval_score.main(["--results", str(res)]) == 0
    return res


def test_task_means_and_overall(results):
    ours = rows(results / "table1.csv", run="csp_b0.2", row="ours").iloc[0]
    for task, expected in TASKS.items():
        assert ours[task] == pytest.approx(expected, abs=1e-4), task
    assert ours["Realistic"] == pytest.approx(REALISTIC, abs=1e-4)
    assert ours["Diagnostic"] == pytest.approx(DIAGNOSTIC, abs=1e-4)
    # rouge-score columns: S-3 = (40 + 50 + 60) / 3, S-4 = (MMCoQA 25 + ALFRED 35) / 2
    assert ours["S-3 [rouge-score]"] == pytest.approx(50.0)
    assert ours["S-4 [rouge-score]"] == pytest.approx(30.0)
    assert ours["method"] == "CSP" and str(ours["budget"]) == "0.2"


def test_paper_row_and_difference(results):
    paper = rows(results / "table1.csv", run="csp_b0.2", row="paper").iloc[0]
    diff = rows(results / "table1.csv", run="csp_b0.2", row="diff").iloc[0]
    assert paper["T-1"] == 39.9 and paper["IR"] == 6.3  # CSP, LLaVA-v1.5-7b
    assert diff["T-1"] == pytest.approx(40.0 - 39.9, abs=1e-4)
    assert diff["T-2"] == pytest.approx(65.0 - 46.8, abs=1e-4)
    assert diff["NH"] == pytest.approx(5.0 - 1.4, abs=1e-4)
    # the full cache is compared whatever the budget field says
    assert rows(results / "table1.csv", run="full", row="paper").iloc[0]["T-1"] == 39.8
    # another budget: no paper row
    assert rows(results / "table1.csv", run="csp_b0.1", row="paper").empty
    md = (results / "table1.md").read_text()
    assert "| CSP | 0.2 | ours | 40.0 | 65.0 | 25.0 | 45.0 | 75.0 | 40.0 | 20.0 | 20.0 | 55.0 | 5.0 | 5.0 | 42.8 | 5.0 |" in md
    assert "| CSP | 0.2 | diff | +0.1 | +18.2 |" in md


def test_missing_dataset_is_named_not_averaged(results):
    h2o = rows(results / "table1.csv", run="h2o_b0.2", row="ours").iloc[0]
    assert math.isnan(h2o["T-2"]) and math.isnan(h2o["Realistic"])
    assert h2o["missing"] == "ObjectShuffle"
    assert h2o["T-1"] == pytest.approx(40.0)
    assert h2o["NH"] == pytest.approx(5.0)  # TextNeedle 0.0 is a score, not a gap
    assert h2o["method"] == "H2O" and str(h2o["budget"]) == "0.2"  # no config: from the folder name
    md = (results / "table1.md").read_text()
    assert "| H2O | 0.2 | ours | 40.0 | missing | 25.0 |" in md
    # the per-dataset table: a hole shows as missing, a zero as 0.0
    lines = (results / "eval_score.md").read_text().splitlines()
    header = next(s for s in lines if s.startswith("| dataset |")).split(" | ")
    col = header.index("llava-1.5-7b / H2O / 0.2")

    def cell(dataset):
        return next(s for s in lines if s.startswith(f"| {dataset} |")).split(" | ")[col]
    assert cell("ObjectShuffle") == "missing"
    assert cell("TextNeedleInAHaystack") == "0.0"
    assert cell("ImageNeedleInAHaystack") == "10.0"


def test_table3_and_its_lookm_variant(results):
    t3 = results / "table3.csv"
    ours = rows(t3, model="internvl-chat-1.0", run="lookm-tp-p_b0.2", row="ours").iloc[0]
    assert ours["T-2"] == pytest.approx(65.0) and ours["IR"] == pytest.approx(5.0)
    paper = rows(t3, model="internvl-chat-1.0", run="lookm-tp-p_b0.2", row="paper").iloc[0]
    assert (paper["T-2"], paper["T-4"], paper["S-4"], paper["IR"]) == (22.0, 19.6, 22.9, 0.5)
    assert rows(t3, model="internvl-chat-1.0", run="lookm-a_b0.2", row="paper").empty
    assert isinstance(ours["missing"], float) and math.isnan(ours["missing"])  # none missing
    # llava runs sit in table 3 too, with no paper row (Table 3 has no LLaVA block)
    assert rows(t3, model="llava-1.5-7b", row="paper").empty
    assert "InternVL-v1.5-7B" in (results / "table3.md").read_text()


def test_table3_rows_of_mobilevlm_and_not_of_internvl3(tmp_path):
    """MobileVLM-V2-3B's CSP row beside ours; InternVL3 (model=internvl) is not the paper's InternVL."""
    res = tmp_path / "results"
    t3 = {d: SCORES[d] for g in ("T-2", "T-4", "S-4", "IR") for d in (x.name for x in catalog.in_group(g))}
    make_run(res, "mobilevlm-v2-3b", "csp_b0.2", t3)
    make_run(res, "internvl3-8b", "csp_b0.2", t3)
    assert eval_score.main(["--results", str(res)]) == 0
    mobile = rows(res / "table3.csv", model="mobilevlm-v2-3b", row="paper").iloc[0]
    assert (mobile["T-2"], mobile["T-4"], mobile["S-4"], mobile["IR"]) == (47.3, 39.0, 33.1, 5.3)
    assert rows(res / "table3.csv", model="internvl3-8b", row="paper").empty
    assert not rows(res / "table3.csv", model="internvl3-8b", row="ours").empty


def test_eval_score_csv_has_every_dataset_and_run(results):
    df = pd.read_csv(results / "eval_score.csv")
    assert list(df["dataset"]) == list(catalog.NAMES)
    col = "llava-1.5-7b / CSP / 0.2"
    assert df.set_index("dataset").loc["ALFRED", col] == pytest.approx(15.0)
    assert "ROUGE-L F (rouge 1.0.1)" in set(df["metric"])
    assert len([c for c in df.columns if " / " in c]) == 6


def test_run_meta_from_config_folder_and_predictions(tmp_path):
    run = tmp_path / "results" / "tiny-llava" / "csp_b0.3,cross_ratio=0.5"
    run.mkdir(parents=True)
    meta = read_run_meta(run)
    assert (meta.model, meta.method, meta.budget, meta.variant) == ("tiny-llava", "csp", 0.3, "cross_ratio=0.5")
    assert not meta.at_paper_setting
    (run / "config.yaml").write_text("model:\n  name: llava-1.5-13b\nbudget: 0.2\nbudget_tokens: null\n"
                                     "run_name: csp_b0.2\n")
    meta = read_run_meta(run)
    assert (meta.model, meta.method, meta.budget, meta.variant) == ("llava-1.5-13b", "csp", 0.2, "")
    assert meta.at_paper_setting
    custom = tmp_path / "results" / "m" / "my-run"
    (custom / "WebQA").mkdir(parents=True)
    (custom / "WebQA" / "pred.json").write_text(json.dumps(
        [{"sample_id": 0, "pred_response": "a", "gen_kwargs": {"method": {"name": "lookm-tp-w"}}}]))
    meta = read_run_meta(custom)
    assert meta.method == "lookm-tp-w" and meta.display == "LOOK-M (TP+W-Merge)"
    full = tmp_path / "results" / "m" / "full"
    full.mkdir()
    assert read_run_meta(full).budget is None and read_run_meta(full).budget_label == "full"
    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="config.yaml: invalid YAML"):
        read_run_meta(run)


def test_scores_predictions_first_with_data_dir(tmp_path):
    data, res = tmp_path / "data", tmp_path / "results"
    doc = {"meta_data": {"dataset": "WebQA", "split": "test", "num_sample": 2, "task_instruction": ["I"],
                         "question_type": "multi-choice"},
           "data": [{"sample_id": i, "task_instruction_id": 0, "image_quantity_level": "Few",
                     "task_instance": {"context": "{image#1}Q", "images_path": ["x.jpg"],
                                       "choice_list": ["yes", "no"]},
                     "response": "yes"} for i in range(2)]}
    (data / "WebQA").mkdir(parents=True)
    (data / "WebQA" / "WebQA.json").write_text(json.dumps(doc))
    folder = res / "llava-1.5-7b" / "snapkv_b0.2" / "WebQA"
    folder.mkdir(parents=True)
    (folder / "pred.json").write_text(json.dumps(
        [{"sample_id": 0, "gt_response": "yes", "pred_response": "A. yes"},
         {"sample_id": 1, "gt_response": "yes", "pred_response": "no"}]))
    proc = subprocess.run([sys.executable, "eval_score.py", "--results", str(res), "--data-dir", str(data)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((folder / "eval.json").read_text())["Accuracy"] == 0.5
    df = rows(res / "eval_score.csv")
    assert df.set_index("dataset").loc["WebQA", "llava-1.5-7b / SnapKV / 0.2"] == pytest.approx(50.0)
    snap = rows(res / "table1.csv", row="ours").iloc[0]
    assert math.isnan(snap["S-1"]) and "TQA" in snap["missing"]


def test_table1_names_whole_missing_groups(results):
    lookm = rows(results / "table1.csv", model="internvl-chat-1.0", run="lookm-a_b0.2", row="ours").iloc[0]
    assert lookm["missing"] == "T-1 (all), T-3 (all), S-1 (all), S-2 (all), S-3 (all), nuscenes, NH (all)"
    assert math.isnan(lookm["T-1"]) and lookm["T-2"] == pytest.approx(65.0)


def test_corrected_scores_get_their_own_section(results):
    folder = results / "llava-1.5-7b" / "full" / "WebQA"
    (folder / "eval_corrected.json").write_text(json.dumps({"Accuracy": 0.625}))
    assert eval_score.main(["--results", str(results)]) == 0
    text = (results / "eval_score.md").read_text()
    main_part, corrected = text.split("## Corrected mode")
    row = next(s for s in corrected.splitlines() if s.startswith("| WebQA |"))
    assert "62.5" in row
    assert "62.5" not in main_part  # the faithful table keeps the faithful 60.0
    assert rows(results / "eval_score.csv").set_index("dataset").loc["WebQA", "llava-1.5-7b / Full Cache / full"] == 60.0


def test_every_registered_method_reaches_the_tables_with_its_own_row(tmp_path):
    """Names come from the methods themselves (csp.engine.registry); the paper's rows are found for
    exactly the paper's methods, whose labels are the paper CSV's own."""
    from csp.engine.registry import method_info, method_names

    res = tmp_path / "results"
    names = method_names()
    for name in names:
        make_run(res, "llava-1.5-7b", "full" if name == "full" else f"{name}_b0.2", {"WebQA": .5})
    assert eval_score.main(["--results", str(res)]) == 0
    ours = rows(res / "table1.csv", row="ours")
    assert sorted(ours["run"].str.split("_b").str[0]) == sorted(names)
    assert list(ours["method"]) == [method_info(r.split("_b")[0]).display_name for r in ours["run"]]
    assert ours["method"].is_unique
    paper_labels = pd.read_csv(ROOT / "milebench" / "reference" / "paper_table1.csv").query(
        "model == 'llava-1.5-7b'")["method"]
    paper = rows(res / "table1.csv", row="paper")
    assert sorted(paper["method"]) == sorted(paper_labels)  # all eleven, LOOK-M's six variants included
    # the paper's order first (Full Cache ... CSP), then the methods it does not have
    assert list(ours["method"])[: len(paper_labels)] == list(paper_labels)
    header = next(s for s in (res / "eval_score.md").read_text().splitlines() if s.startswith("| dataset |"))
    assert all(f"llava-1.5-7b / {m} /" in header for m in ours["method"])
    # a method with its own budget is not labelled with the shared one its run name carries
    own = {n for n in names if method_info(n).budget_rule == "own" and n != "full"}
    assert own and set(ours[ours["budget"] == "own"]["run"].str.split("_b").str[0]) == own


REFERENCE_CSP = {"budget": 0.2, "recent_ratio": 0.1, "budget_tokens": None, "_target_": "csp.cross_self.CrossSelfPruner",
                 "cross_ratio": None, "bias": None, "combine": "concat", "score_fn": "nsoftmax", "n": 1.0,
                 "decompose": True, "zero_ratio_quirk": True}


def with_method_record(run: Path, method: str) -> None:
    """The method's name as the runner records it in every prediction's gen_kwargs."""
    (run / "WebQA" / "pred.json").write_text(json.dumps(
        [{"sample_id": 0, "pred_response": "a", "gen_kwargs": {"method": {"name": method}}}]))


def saved_config(**changes) -> dict:
    """A run config as the runner saves it for `method=csp model=llava-1.5-7b run_name=mine`."""
    import yaml as _yaml

    cfg = {"model": {"name": "llava-1.5-7b"}, "method": dict(REFERENCE_CSP), "budget": 0.2, "recent_ratio": 0.1,
           "budget_tokens": None, "adversarial": False, "combine_image": False, "run_name": "mine",
           "ratios": _yaml.safe_load((ROOT / "configs" / "ratios" / "reference.yaml").read_text())}
    for key, value in changes.items():
        if key.startswith("method_"):
            cfg["method"][key.removeprefix("method_")] = value
        elif key == "ratios":
            cfg["ratios"] = _yaml.safe_load((ROOT / "configs" / "ratios" / f"{value}.yaml").read_text())
        else:
            cfg[key] = value
    return cfg


@pytest.mark.parametrize("changes, paper", [
    ({}, True),  # a hand-named run at the paper's setting is compared
    ({"budget_tokens": 128}, False),
    ({"recent_ratio": 0.05}, False),
    ({"method_cross_ratio": 0.3}, False),
    ({"method_combine": "union"}, False),
    ({"method_n": 0.0}, False),
    ({"ratios": "paper-7b"}, False),
    ({"adversarial": True}, False),
    ({"combine_image": True}, False),
])
def test_a_hand_named_run_off_the_papers_setting_gets_no_paper_row(tmp_path, changes, paper):
    """run_name=mine hides every override from the folder name: the saved config decides."""
    res = tmp_path / "results"
    run = make_run(res, "llava-1.5-7b", "mine", SCORES, config=saved_config(**changes))
    with_method_record(run, "csp")
    assert eval_score.main(["--results", str(res)]) == 0
    assert rows(res / "table1.csv", run="mine", row="paper").empty != paper
    meta = read_run_meta(res / "llava-1.5-7b" / "mine")
    assert meta.at_paper_setting == paper and len(meta.changes) == (0 if paper else 1)


def test_full_cache_on_adversarial_inputs_gets_no_paper_row(tmp_path):
    cfg = saved_config(adversarial=True, recent_ratio=0.3)
    cfg["method"] = {"budget": 1.0, "_target_": "csp.engine.method.FullCache"}
    run = make_run(tmp_path / "results", "llava-1.5-7b", "full", SCORES, config=cfg)
    with_method_record(run, "full")
    assert read_run_meta(run).changes == ("adversarial=True",)  # the budget fields mean nothing to it


def test_eval_json_older_than_its_predictions_is_scored_again(tmp_path):
    """A rerun that rewrote pred.json after scoring (a resumed or merged run) leaves an eval.json
    that no longer describes it: eval_score --data-dir scores it again; a newer one is kept."""
    import os

    data, res = tmp_path / "data", tmp_path / "results"
    doc = {"meta_data": {"dataset": "WebQA", "split": "test", "num_sample": 2, "task_instruction": ["I"],
                         "question_type": "multi-choice"},
           "data": [{"sample_id": i, "task_instruction_id": 0, "image_quantity_level": "Few",
                     "task_instance": {"context": "{image#1}Q", "images_path": ["x.jpg"],
                                       "choice_list": ["yes", "no"]}, "response": "yes"} for i in range(2)]}
    (data / "WebQA").mkdir(parents=True)
    (data / "WebQA" / "WebQA.json").write_text(json.dumps(doc))
    folder = res / "llava-1.5-7b" / "h2o_b0.2" / "WebQA"
    folder.mkdir(parents=True)
    pred, ev = folder / "pred.json", folder / "eval.json"
    pred.write_text(json.dumps([{"sample_id": 0, "gt_response": "yes", "pred_response": "A. yes"},
                                {"sample_id": 1, "gt_response": "yes", "pred_response": "A. yes"}]))
    ev.write_text(json.dumps({"Accuracy": 0.0}))  # stale: written before the predictions below
    os.utime(ev, (1_000_000, 1_000_000))
    assert eval_score.main(["--results", str(res), "--data-dir", str(data)]) == 0
    assert json.loads(ev.read_text())["Accuracy"] == 1.0
    # an eval.json newer than its predictions is not touched
    ev.write_text(json.dumps({"Accuracy": 0.25}))
    os.utime(pred, (1_000_000, 1_000_000))
    assert eval_score.main(["--results", str(res), "--data-dir", str(data)]) == 0
    assert json.loads(ev.read_text())["Accuracy"] == 0.25
