"""Score a run's predictions exactly as MileBench's evaluation does, and write its files.

    python -m milebench.score RUN_DIR --data-dir DATA_DIR [--corrected] [--datasets A B ...]

For every `RUN_DIR/<D>/pred.json` the gold is read from `DATA_DIR/<D>/<D>.json` (or the
parquet form) and `eval.json`, `eval_score.json` and, for multiple choice,
`pred_with_extracted.json` are written beside it in MileBench's formats. ROUGE-L datasets
also get `eval_rouge_score.json` with Google's rouge-score ROUGE-L and `eval_content_em.json`
with the content-word exact match (`metrics.content_exact_match`: a wrong colour in "red to
blue" is wrong, not 0.67), extra figures that never replace the reference one. `--corrected` fixes the reference's quirks and writes the
same files with a `_corrected` suffix, leaving the faithful ones untouched.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from milebench import catalog
from milebench.data import DatasetFile, load_dataset
from milebench.files import (
    EVAL_FILE,
    EVAL_SCORE_FILE,
    EXTRACTED_FILE,
    PRED_FILE,
    CONTENT_EM_FILE,
    ROUGE_SCORE_FILE,
    corrected_name,
    write_atomic,
)
from milebench.metrics import (
    content_exact_match,
    gold_key,
    match_choice,
    needle_correct,
    rouge_l,
    rouge_l_google,
    route,
    substring_correct,
)
from milebench.normalize import normalize

LEVELS = ("Few", "Medium", "Many")
ROUGE_METRIC = "Rouge-L f"
ADV_SUFFIX = "-adv"


class ScoreError(ValueError):
    """Predictions that cannot be scored; the message names the file, sample and field."""


@dataclass
class DatasetScore:
    """One dataset's result; `value` is a fraction (tables multiply by 100)."""

    dataset: str
    metric: str  # "Accuracy" or "Rouge-L f", the key MileBench writes
    value: float
    levels: dict[str, list[float]]  # level -> [sum, count]
    per_sample: list[tuple[int, float]]
    extracted: list[str] | None = None  # multiple choice: the key each prediction resolved to
    google_rouge_l: float | None = None
    content_em: float | None = None  # free-form (ROUGE-L) sets: content-word exact match
    corrected: bool = False
    notes: list[str] = field(default_factory=list)

    def eval_json(self) -> dict[str, Any]:
        """MileBench's eval.json: every level present, an empty one as 0 and [0, 0]."""
        return {
            self.metric: self.value,
            "image_quantity_level-Accuracy": {lv: s / n if n else 0 for lv, (s, n) in self.levels.items()},
            "image_quantity_level-Result": self.levels,
        }

    def eval_score_json(self) -> list[dict[str, str]]:
        """MileBench's eval_score.json: ROUGE-L as str(round(score, 3)) (an empty prediction
        is the integer 0, so "0"), accuracy as str(score) ("1" or "0")."""
        fmt = (lambda s: str(round(s, 3))) if self.metric == ROUGE_METRIC else str
        return [{"id": str(sid), "score": fmt(score)} for sid, score in self.per_sample]


# ---------------------------------------------------------------- predictions -----------

def load_predictions(path: Path, dataset: DatasetFile) -> list[dict[str, Any]]:
    """Read and check a pred.json against its dataset: one prediction per sample, no more."""
    if not path.is_file():
        raise ScoreError(f"{path}: prediction file not found")
    try:
        preds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ScoreError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(preds, list):
        raise ScoreError(f"{path}: must be a JSON list of predictions, got {type(preds).__name__}")
    gold = {s.sample_id: s for s in dataset.samples}
    seen: set[int] = set()
    for i, p in enumerate(preds):
        if not isinstance(p, dict):
            raise ScoreError(f"{path}: entry [{i}] must be an object")
        sid = p.get("sample_id")
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise ScoreError(f"{path}: entry [{i}]: field 'sample_id' must be an integer, got {sid!r}")
        where = f"{path}: sample {sid}"
        if sid in seen:
            raise ScoreError(f"{where}: field 'sample_id' is duplicated")
        seen.add(sid)
        if sid not in gold:
            raise ScoreError(f"{where}: field 'sample_id' is not in dataset {dataset.name}")
        if not isinstance(p.get("pred_response"), str):
            raise ScoreError(f"{where}: field 'pred_response' must be a string, got {p.get('pred_response')!r}")
        if "gt_response" in p and str(p["gt_response"]) != gold[sid].response:
            raise ScoreError(f"{where}: field 'gt_response' {p['gt_response']!r} differs from the dataset's "
                             f"response {gold[sid].response!r}: predictions made on other data?")
    if len(preds) != len(dataset.samples):
        missing = sorted(set(gold) - seen)
        raise ScoreError(
            f"{path}: {len(preds)} predictions but dataset {dataset.name} has {len(dataset.samples)} samples "
            f"(missing sample ids: {_short(missing)}); exactly one prediction per sample is required")
    return preds


def _short(ids: Sequence[int], n: int = 10) -> str:
    head = ", ".join(map(str, ids[:n]))
    return head + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


# ---------------------------------------------------------------- scoring ---------------

def score_predictions(dataset: DatasetFile, preds: list[dict[str, Any]], *, corrected: bool = False,
                      source: str = "") -> DatasetScore:
    """Score checked predictions against a loaded dataset (no files touched)."""
    info = catalog.get(dataset.name)
    how = route(dataset.name, dataset.question_type)
    gold = {s.sample_id: s for s in dataset.samples}
    levels: dict[str, list[float]] = {lv: [0, 0] for lv in LEVELS}  # all three, even when empty
    per_sample: list[tuple[int, float]] = []
    extracted: list[str] | None = [] if how == "choice" else None
    google: list[float] = []
    content_em: list[int] = []
    notes: list[str] = []
    for p in preds:
        sample = gold[p["sample_id"]]
        where = f"{source}: sample {sample.sample_id}"
        g = normalize(sample.response, corrected=corrected)
        pr = normalize(p["pred_response"], corrected=corrected)
        score: float
        if how == "choice":
            if sample.choices is None:
                raise ScoreError(f"{where}: field 'choice_list' is missing in the dataset; cannot score a choice")
            options = [normalize(c, corrected=corrected) for c in sample.choices]
            key = gold_key(g, options)
            got = match_choice(pr, options, corrected=corrected)
            assert extracted is not None
            extracted.append(got)
            if key is None:
                notes.append(f"{where}: gold {sample.response!r} is not among the choices; scored 0")
            score = int(key is not None and got == key)
        elif how == "needle":
            score = int(needle_correct(pr, g))
        elif how == "substring":
            score = int(substring_correct(pr, g))
        else:
            try:
                score = rouge_l(pr, g)
            except ValueError as e:
                raise ScoreError(f"{where}: field 'response': {e}") from None
            google.append(rouge_l_google(pr, g))
            content_em.append(int(content_exact_match(pr, g)))
        per_sample.append((sample.sample_id, score))
        acc = levels[sample.image_quantity_level]
        acc[0] += score
        acc[1] += 1
    value = sum(s for _, s in per_sample) / len(per_sample) if per_sample else 0.0
    return DatasetScore(dataset=dataset.name, metric=info.metric, value=value, levels=levels,
                        per_sample=per_sample, extracted=extracted,
                        google_rouge_l=sum(google) / len(google) if google else None,
                        content_em=sum(content_em) / len(content_em) if content_em else None,
                        corrected=corrected, notes=notes)


def output_names(corrected: bool) -> dict[str, str]:
    """File names written beside pred.json; the corrected mode never reuses a faithful name."""
    names = {"eval": EVAL_FILE, "eval_score": EVAL_SCORE_FILE, "pred_with_extracted": EXTRACTED_FILE,
             "eval_rouge_score": ROUGE_SCORE_FILE, "eval_content_em": CONTENT_EM_FILE}
    return {k: corrected_name(v) if corrected else v for k, v in names.items()}


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=4, ensure_ascii=False))


def write_result_files(folder: Path, preds: list[dict[str, Any]], result: DatasetScore) -> None:
    """Write a scored dataset's files beside its pred.json (names from `output_names`).

    eval.json goes LAST: the runner takes it as the mark of a scored dataset, so a kill
    between two of these files must leave it absent and the dataset is scored again."""
    names = output_names(result.corrected)
    _write_json(folder / names["eval_score"], result.eval_score_json())
    if result.extracted is not None:
        _write_json(folder / names["pred_with_extracted"],
                    [dict(p, extracted=x) for p, x in zip(preds, result.extracted)])
    if result.google_rouge_l is not None:
        _write_json(folder / names["eval_rouge_score"], {
            "Rouge-L f": result.google_rouge_l,
            "implementation": "rouge-score (Google) rougeL, no stemming, on normalized text",
        })
    if result.content_em is not None:
        _write_json(folder / names["eval_content_em"], {
            "Content EM": result.content_em,
            "implementation": "content words (normalized, function words dropped) equal, in order",
        })
    _write_json(folder / names["eval"], result.eval_json())


def dataset_of(folder_name: str) -> tuple[str, bool]:
    """A run sub-folder's dataset name and whether it is the adversarial variant (`<D>-adv`)."""
    if folder_name.endswith(ADV_SUFFIX) and folder_name[: -len(ADV_SUFFIX)] in catalog.BY_NAME:
        return folder_name[: -len(ADV_SUFFIX)], True
    return catalog.get(folder_name).name, False


def score_dataset(pred_dir: Path | str, data_dir: Path | str | None = None, *, corrected: bool = False,
                  write: bool = True, dataset: DatasetFile | None = None,
                  predicted_only: bool = False) -> DatasetScore:
    """Score `pred_dir/pred.json` (the folder is named after the dataset) and write the
    result files beside it.

    By default every sample of the dataset must have exactly one prediction, as in
    MileBench. predicted_only=True scores the samples that were predicted (a run with
    `limit`, or with samples skipped on bad input), so its figures say what was run.
    `dataset` saves a reload when the caller already holds the dataset file.
    """
    pred_dir = Path(pred_dir)
    if dataset is None:
        if data_dir is None:
            raise ScoreError(f"{pred_dir}: give data_dir or the loaded dataset")
        name, adversarial = dataset_of(pred_dir.name)
        dataset = load_dataset(data_dir, name, adversarial=adversarial, check_images=False)
    pred_path = pred_dir / PRED_FILE
    if predicted_only:
        dataset = restrict_to_predicted(dataset, pred_path)
    preds = load_predictions(pred_path, dataset)
    result = score_predictions(dataset, preds, corrected=corrected, source=str(pred_path))
    if write:
        write_result_files(pred_dir, preds, result)
    return result


def restrict_to_predicted(dataset: DatasetFile, pred_path: Path) -> DatasetFile:
    """The dataset cut down to the samples `pred_path` has a prediction for."""
    try:
        predicted = {int(p["sample_id"]) for p in json.loads(pred_path.read_text(encoding="utf-8"))}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ScoreError(f"{pred_path}: cannot read the predicted sample ids: {e}") from None
    return replace(dataset, samples=[s for s in dataset.samples if s.sample_id in predicted])


def run_datasets(run_dir: Path | str) -> list[Path]:
    """The dataset folders of a run that hold predictions, in catalog order."""
    run_dir = Path(run_dir)
    found = [p.parent for p in run_dir.glob(f"*/{PRED_FILE}")]
    order = {n: i for i, n in enumerate(catalog.NAMES)}

    def rank(folder: Path) -> tuple[int, str]:
        base = folder.name[: -len(ADV_SUFFIX)] if folder.name.endswith(ADV_SUFFIX) else folder.name
        return order.get(base, len(order)), folder.name

    return sorted(found, key=rank)


def score_run(run_dir: Path | str, data_dir: Path | str, *, corrected: bool = False,
              datasets: Sequence[str] | None = None, predicted_only: bool = False) -> dict[str, DatasetScore]:
    """Score every dataset folder of a run (or the named ones)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScoreError(f"{run_dir}: run folder not found")
    folders = run_datasets(run_dir)
    if datasets is not None:
        wanted = set(datasets)
        for name in wanted:
            if not (run_dir / name / PRED_FILE).is_file():
                raise ScoreError(f"{run_dir / name / PRED_FILE}: prediction file not found")
        folders = [f for f in folders if f.name in wanted]
    if not folders:
        raise ScoreError(f"{run_dir}: no <dataset>/{PRED_FILE} found")
    results: dict[str, DatasetScore] = {}
    for folder in tqdm(folders, desc="scoring", unit="dataset", disable=len(folders) < 2):
        results[folder.name] = score_dataset(folder, data_dir, corrected=corrected, predicted_only=predicted_only)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m milebench.score", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="folder holding <D>/pred.json for each dataset")
    ap.add_argument("--data-dir", type=Path, required=True, help="MileBench data folder (<D>/<D>.json)")
    ap.add_argument("--corrected", action="store_true",
                    help="fix the reference's quirks; writes *_corrected.json, never the faithful files")
    ap.add_argument("--datasets", nargs="+", help="score only these dataset folders")
    ap.add_argument("--predicted-only", action="store_true",
                    help="score the samples that have a prediction (runs with limit=N) instead of "
                         "requiring one prediction per sample")
    args = ap.parse_args(argv)
    try:
        results = score_run(args.run_dir, args.data_dir, corrected=args.corrected, datasets=args.datasets,
                            predicted_only=args.predicted_only)
    except (ScoreError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    width = max(len(n) for n in results)
    for name, r in results.items():
        extra = f"   (rouge-score {100 * r.google_rouge_l:.2f})" if r.google_rouge_l is not None else ""
        print(f"{name:<{width}}  {r.metric:<10} {100 * r.value:6.2f}{extra}")
        for note in r.notes:
            print(f"  note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
