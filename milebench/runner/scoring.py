"""Score one finished dataset folder of a run with `milebench.score`.

A run with `limit` (or with samples skipped on bad input) predicts a subset of a dataset;
it is scored against that subset, so the figures say what was run and `eval.json` is written
in MileBench's format all the same.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from milebench import score
from milebench.data import DatasetFile
from milebench.runner.store import PRED_FILE, write_atomic


def _dump(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(obj, indent=4, ensure_ascii=False))


def score_folder(folder: Path, dataset: DatasetFile) -> score.DatasetScore:
    """Write eval.json and eval_score.json (and the scorer's extra files) beside pred.json."""
    pred_path = folder / PRED_FILE
    predicted = {int(p["sample_id"]) for p in json.loads(pred_path.read_text(encoding="utf-8"))}
    subset = replace(dataset, samples=[s for s in dataset.samples if s.sample_id in predicted])
    preds = score.load_predictions(pred_path, subset)
    result = score.score_predictions(subset, preds, source=str(pred_path))
    names = score.output_names(False)
    _dump(folder / names["eval"], result.eval_json())
    _dump(folder / names["eval_score"], result.eval_score_json())
    if result.extracted is not None:
        _dump(folder / names["pred_with_extracted"], [dict(p, extracted=x) for p, x in zip(preds, result.extracted)])
    return result
