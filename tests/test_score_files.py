"""`python -m milebench.score`: files written in MileBench's formats, bad predictions refused
with clear errors, and the corrected mode kept apart from the faithful one."""
import json
from pathlib import Path

import pytest

from milebench.score import ScoreError, main, score_run


def write_dataset(data_dir: Path, name: str, question_type: str, rows: list[dict]) -> None:
    """A dataset file in the exact on-disk layout of the spec (section 2).

    rows: {"response", "level", optional "choices"}; sample ids are 0, 1, 2, ...
    """
    data = []
    for i, row in enumerate(rows):
        inst = {"context": "{image#1}{image#2}Question?", "images_path": ["a.jpg", "sub/b.png"],
                "combined_1_images": [f"{i}.jpg"]}
        if "choices" in row:
            inst["choice_list"] = row["choices"]
        data.append({"sample_id": i, "task_instruction_id": 0, "image_quantity_level": row["level"],
                     "task_instance": inst, "response": row["response"]})
    doc = {"meta_data": {"dataset": name, "split": "test", "num_sample": len(data),
                         "task_instruction": ["Look at the images."], "question_type": question_type},
           "data": data}
    (data_dir / name).mkdir(parents=True, exist_ok=True)
    (data_dir / name / f"{name}.json").write_text(json.dumps(doc))


def write_preds(run_dir: Path, name: str, answers: list[str], golds: list[str]) -> Path:
    folder = run_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    preds = [{"sample_id": i, "image": [], "question": "q", "gt_response": g, "gen_model_id": "m",
              "pred_response": a, "gen_kwargs": {}} for i, (a, g) in enumerate(zip(answers, golds))]
    (folder / "pred.json").write_text(json.dumps(preds))
    return folder


COLOURS = ["red", "blue", "green", "yellow"]


@pytest.fixture
def mc_run(tmp_path):
    """ActionLocalization, 4 samples; golds B, C, A, D; answers: "(B) blue" (right), empty
    (-> C, right), "Answer: A" (letters a, a -> "AA", wrong), "red" (-> A, wrong)."""
    data, run = tmp_path / "data", tmp_path / "run"
    golds = ["blue", "green", "red", "yellow"]
    levels = ["Few", "Few", "Medium", "Many"]
    write_dataset(data, "ActionLocalization", "multi-choice",
                  [{"response": g, "level": lv, "choices": COLOURS} for g, lv in zip(golds, levels)])
    write_preds(run, "ActionLocalization", ["(B) blue", "", "Answer: A", "red"], golds)
    return data, run


def read(path: Path):
    return json.loads(path.read_text())


def test_multiple_choice_files(mc_run):
    data, run = mc_run
    assert main([str(run), "--data-dir", str(data)]) == 0
    folder = run / "ActionLocalization"
    # "Answer: A" -> letters a, a -> "AA": not a key, wrong. Right: samples 0 and 1.
    assert read(folder / "eval.json") == {
        "Accuracy": 0.5,
        "image_quantity_level-Accuracy": {"Few": 1.0, "Medium": 0.0, "Many": 0.0},
        "image_quantity_level-Result": {"Few": [2, 2], "Medium": [0, 1], "Many": [0, 1]},
    }
    assert read(folder / "eval_score.json") == [
        {"id": "0", "score": "1"}, {"id": "1", "score": "1"}, {"id": "2", "score": "0"}, {"id": "3", "score": "0"}]
    extracted = read(folder / "pred_with_extracted.json")
    assert [p["extracted"] for p in extracted] == ["B", "C", "AA", "A"]
    assert extracted[0]["pred_response"] == "(B) blue"
    assert not (folder / "eval_corrected.json").exists()


def test_files_are_byte_for_byte_milebenchs(tmp_path):
    """The exact text of eval.json and eval_score.json: every level present (an empty one as
    0 and [0, 0]), accuracy per sample as str(int), ROUGE-L as str(round(score, 3)) with the
    integer 0 for an empty prediction."""
    data, run = tmp_path / "data", tmp_path / "run"
    golds = ["blue", "green", "red", "yellow"]
    write_dataset(data, "ActionLocalization", "multi-choice",
                  [{"response": g, "level": lv, "choices": COLOURS} for g, lv in zip(golds, ["Few", "Few", "Many", "Many"])])
    write_preds(run, "ActionLocalization", ["(B) blue", "", "Answer: A", "red"], golds)
    # ALFRED: "the the the cat" vs "the cat sat" is 0.79999999 (unique words, +1e-8 in F),
    # "a b c" vs "a b d e" is 2PR / (P + R) with P = 2/3, R = 1/2: 0.5714285..., "" is 0
    rouge_golds = ["the cat sat", "go left", "a b d e"]
    write_dataset(data, "ALFRED", "open-ended", [{"response": g, "level": "Medium"} for g in rouge_golds])
    write_preds(run, "ALFRED", ["the the the cat", "", "a b c"], rouge_golds)
    assert main([str(run), "--data-dir", str(data)]) == 0
    assert (run / "ActionLocalization" / "eval.json").read_text() == """{
    "Accuracy": 0.5,
    "image_quantity_level-Accuracy": {
        "Few": 1.0,
        "Medium": 0,
        "Many": 0.0
    },
    "image_quantity_level-Result": {
        "Few": [
            2,
            2
        ],
        "Medium": [
            0,
            0
        ],
        "Many": [
            0,
            2
        ]
    }
}"""
    assert (run / "ActionLocalization" / "eval_score.json").read_text() == """[
    {
        "id": "0",
        "score": "1"
    },
    {
        "id": "1",
        "score": "1"
    },
    {
        "id": "2",
        "score": "0"
    },
    {
        "id": "3",
        "score": "0"
    }
]"""
    assert (run / "ALFRED" / "eval_score.json").read_text() == """[
    {
        "id": "0",
        "score": "0.8"
    },
    {
        "id": "1",
        "score": "0"
    },
    {
        "id": "2",
        "score": "0.571"
    }
]"""
    alfred = read(run / "ALFRED" / "eval.json")
    f1, f3 = 2 * 1 * (2 / 3) / (1 + 2 / 3 + 1e-8), 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2 + 1e-8)
    assert alfred["Rouge-L f"] == pytest.approx((f1 + 0 + f3) / 3, abs=1e-12)
    assert alfred["image_quantity_level-Accuracy"] == {"Few": 0, "Medium": pytest.approx((f1 + f3) / 3, abs=1e-12),
                                                       "Many": 0}
    assert alfred["image_quantity_level-Result"] == {"Few": [0, 0], "Medium": [pytest.approx(f1 + f3, abs=1e-12), 3],
                                                     "Many": [0, 0]}
    assert list(alfred["image_quantity_level-Result"]) == ["Few", "Medium", "Many"]


@pytest.mark.parametrize("images, level", [(2, "Few"), (5, "Few"), (6, "Medium"), (31, "Medium"), (32, "Many"),
                                           (109, "Many")])
def test_image_quantity_buckets_at_the_spec_boundaries(images, level):
    """Few (< 6), Medium (6 to 31), Many (> 31): the level the parquet form leaves out."""
    from milebench.catalog import image_quantity_level

    assert image_quantity_level(images) == level


def test_corrected_mode_writes_apart(mc_run):
    data, run = mc_run
    folder = run / "ActionLocalization"
    main([str(run), "--data-dir", str(data)])
    faithful = (folder / "eval.json").read_bytes()
    assert main([str(run), "--data-dir", str(data), "--corrected"]) == 0
    assert (folder / "eval.json").read_bytes() == faithful
    # corrected: empty is no answer (wrong), "Answer: A" -> A (right)
    assert read(folder / "eval_corrected.json")["Accuracy"] == 0.5
    assert [s["score"] for s in read(folder / "eval_score_corrected.json")] == ["1", "0", "1", "0"]
    assert [p["extracted"] for p in read(folder / "pred_with_extracted_corrected.json")] == ["B", "", "A", "A"]


def test_open_ended_files(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    write_dataset(data, "ALFRED", "open-ended",
                  [{"response": "the cat sat", "level": "Few"}, {"response": "go left", "level": "Many"}])
    write_preds(run, "ALFRED", ["the the the cat", ""], ["the cat sat", "go left"])
    write_dataset(data, "TextNeedleInAHaystack", "open-ended",
                  [{"response": "7984462", "level": "Few"}, {"response": "1234", "level": "Few"}])
    write_preds(run, "TextNeedleInAHaystack", ["It is 7984462.", "12345"], ["7984462", "1234"])
    write_dataset(data, "MMCoQA", "open-ended", [{"response": "Paris", "level": "Few"}])
    write_preds(run, "MMCoQA", ["parisian"], ["Paris"])
    results = score_run(run, data)
    assert list(results) == ["MMCoQA", "ALFRED", "TextNeedleInAHaystack"]  # catalog order
    alfred = read(run / "ALFRED" / "eval.json")
    assert alfred["Rouge-L f"] == pytest.approx(0.8 / 2, abs=1e-7)  # (0.8 + 0) / 2
    assert alfred["image_quantity_level-Accuracy"]["Few"] == pytest.approx(0.8, abs=1e-7)
    assert alfred["image_quantity_level-Result"]["Many"] == [0, 1]
    assert not (run / "ALFRED" / "pred_with_extracted.json").exists()
    # Google's rouge-score: (4/7 + 0) / 2, in its own file
    assert read(run / "ALFRED" / "eval_rouge_score.json")["Rouge-L f"] == pytest.approx(2 / 7)
    # content words: "cat" against "cat sat" is wrong, the empty answer too; needles and
    # MMCoQA are not free form (no file)
    assert read(run / "ALFRED" / "eval_content_em.json")["Content EM"] == 0.0
    assert not (run / "MMCoQA" / "eval_content_em.json").exists()
    assert read(run / "TextNeedleInAHaystack" / "eval.json")["Accuracy"] == 0.5
    assert read(run / "MMCoQA" / "eval.json")["Accuracy"] == 1.0


def test_prediction_count_mismatch_is_an_error(mc_run, capsys):
    data, run = mc_run
    pred = run / "ActionLocalization" / "pred.json"
    preds = read(pred)[:3]
    pred.write_text(json.dumps(preds))
    with pytest.raises(ScoreError, match=r"pred.json: 3 predictions but dataset ActionLocalization has 4 "
                                         r"samples \(missing sample ids: 3\)"):
        score_run(run, data)
    assert main([str(run), "--data-dir", str(data)]) == 2
    assert "3 predictions but dataset ActionLocalization has 4 samples" in capsys.readouterr().err
    assert not (run / "ActionLocalization" / "eval.json").exists()


def test_predicted_only_scores_the_subset_that_was_run(mc_run):
    """A run with limit=3: the first three samples, (B) blue right, empty -> C right, AA wrong."""
    data, run = mc_run
    pred = run / "ActionLocalization" / "pred.json"
    pred.write_text(json.dumps(read(pred)[:3]))
    assert main([str(run), "--data-dir", str(data), "--predicted-only"]) == 0
    result = read(run / "ActionLocalization" / "eval.json")
    assert result["Accuracy"] == pytest.approx(2 / 3)
    assert result["image_quantity_level-Result"] == {"Few": [2, 2], "Medium": [0, 1], "Many": [0, 0]}


@pytest.mark.parametrize("mutate, message", [
    (lambda ps: ps + [dict(ps[0])], r"sample 0: field 'sample_id' is duplicated"),
    (lambda ps: [dict(p, sample_id=p["sample_id"] + 10) for p in ps], r"sample 10: field 'sample_id' is not in"),
    (lambda ps: [dict(ps[0], pred_response=None)] + ps[1:], r"sample 0: field 'pred_response' must be a string"),
    (lambda ps: [dict(ps[0], gt_response="red")] + ps[1:], r"sample 0: field 'gt_response' 'red' differs"),
    (lambda ps: {"preds": ps}, r"must be a JSON list"),
])
def test_bad_predictions_name_file_sample_field(mc_run, mutate, message):
    data, run = mc_run
    pred = run / "ActionLocalization" / "pred.json"
    pred.write_text(json.dumps(mutate(read(pred))))
    with pytest.raises(ScoreError, match=message):
        score_run(run, data)


def test_invalid_json_and_missing_gold(mc_run, tmp_path):
    data, run = mc_run
    (run / "ActionLocalization" / "pred.json").write_text("[{")
    with pytest.raises(ScoreError, match=r"pred.json: invalid JSON at line 1"):
        score_run(run, data)
    empty = tmp_path / "nodata"
    empty.mkdir()
    write_preds(run, "ActionLocalization", ["B"], ["blue"])
    with pytest.raises(ValueError, match="ActionLocalization"):
        score_run(run, empty)
