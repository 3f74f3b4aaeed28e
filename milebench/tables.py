"""Every run's scores into the papers' tables, from files alone.

Reads `results/<model>/<run_name>/<D>/eval.json` (and the optional
`eval_rouge_score.json` / `eval_corrected.json`), aggregates as the papers do (dataset scores
x 100, task = mean of its datasets, NH = mean of the two needle sets, IR = GPR1200, overall
realistic = mean of the nine T/S tasks, diagnostic = mean of the two needle sets and
GPR1200) and puts the published row beside ours where one exists. A missing dataset leaves
its task empty and is named; it is never averaged away.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functools import lru_cache

import pandas as pd
import yaml

from milebench import catalog
from milebench.files import (
    CONFIG_FILE,
    CONTENT_EM_FILE,
    EVAL_FILE,
    FIDELITY_FILE,
    PRED_FILE,
    ROUGE_SCORE_FILE,
    corrected_name,
    write_atomic,
)

REFERENCE_DIR = Path(__file__).with_name("reference")
PAPER_BUDGET = 0.2


# ---------------------------------------------------------------- method names ----------
# A method's display name and paper row label are attributes of the method itself
# (`display_name`, `table_label`), found from its config name through csp.engine.registry, so a new
# method needs no entry here. Run folders of a method without a config keep their raw name.

def _method_info(method: str):
    from csp.engine.method import ConfigError
    from csp.engine.registry import method_info

    try:
        return method_info(method)
    except ConfigError:
        return None


def has_own_budget(method: str) -> bool:
    """True for a method that does not keep the shared `budget` (the full cache, FastV): its
    points on a budget axis are not comparable with the others'."""
    info = _method_info(method)
    return info is not None and info.budget_rule == "own"


def method_display(method: str) -> str:
    """How the tables name a method config (`lookm-tp-w` -> "LOOK-M (TP+W-Merge)")."""
    info = _method_info(method)
    return info.display_name if info is not None else method


def method_table_label(method: str) -> str | None:
    """The method's row label in the CSP paper's Table 1, or None where the paper has none."""
    info = _method_info(method)
    return info.table_label if info is not None else None


@lru_cache(maxsize=None)
def _paper_order() -> dict[str, int]:
    labels = load_paper("table1")["method"].tolist()
    return {label: i for i, label in enumerate(dict.fromkeys(labels))}


def method_rank(method: str) -> int:
    """Row order: the paper's Table 1 order (Full Cache first, CSP last), then the methods the
    paper does not have (ordered by name by the caller)."""
    order = _paper_order()
    return order.get(method_table_label(method) or "", len(order))

# Our model config names -> (paper table, the paper's model label in that table). The paper's
# "InternVL-v1.5-7B" row came from InternVL-Chat-ViT-6B-Vicuna-7B (the CSP authors' config names
# that checkpoint), which is our internvl-chat-1.0; InternVL3 (model=internvl) has no paper row.
PAPER_MODELS: dict[str, tuple[str, str]] = {
    "llava-1.5-7b": ("table1", "llava-1.5-7b"),
    "llava-1.5-13b": ("table1", "llava-1.5-13b"),
    "internvl-chat-1.0": ("table3", "InternVL-v1.5-7B"),
    "mobilevlm-v2-3b": ("table3", "MobileVLM-V2-3B"),
}
# Table 3 has one unnamed LOOK-M row; it is compared with this variant (text prior + pivotal
# merge, the full LOOK-M) and with no other.
TABLE3_LOOKM = "lookm-tp-p"

TABLE1_COLUMNS = (*catalog.REALISTIC_GROUPS, *catalog.DIAGNOSTIC_GROUPS)
TABLE3_COLUMNS = ("T-2", "T-4", "S-4", "IR")
OVERALL_COLUMNS = ("Realistic", "Diagnostic")
DIAGNOSTIC_DATASETS = tuple(d.name for d in catalog.DATASETS if d.group in catalog.DIAGNOSTIC_GROUPS)
ROUGE_DATASETS = tuple(d.name for d in catalog.DATASETS if d.scoring == "rouge")
ROUGE_SCORE_COLUMNS = {f"{g} [rouge-score]": g for g in ("S-3", "S-4")}


# ---------------------------------------------------------------- run metadata ----------

@dataclass(frozen=True)
class RunMeta:
    """Who made a run: enough to label it and find the paper's row for it."""

    model: str
    method: str  # the method config name (csp, h2o, lookm-tp-p, ...)
    budget: float | None  # kept fraction; None for the full cache
    budget_tokens: int | None = None
    variant: str = ""  # method overrides named in the run folder (e.g. "cross_ratio=0.3")
    run_name: str = ""
    # settings the saved config holds off the paper's (see `setting_changes`), named or not
    changes: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return method_display(self.method)

    @property
    def budget_label(self) -> str:
        if self.method == "full":
            return "full"
        info = _method_info(self.method)
        if info is not None and info.budget_rule == "own":
            return "own"  # its own budget (FastV's K and R): the shared budget fields do not apply
        if self.budget_tokens is not None:
            return f"{self.budget_tokens} tok"
        return "?" if self.budget is None else f"{self.budget:g}"

    @property
    def label(self) -> str:
        parts = [self.model, self.display, self.budget_label] + ([self.variant] if self.variant else [])
        return " / ".join(parts)

    @property
    def at_paper_setting(self) -> bool:
        """Paper rows are compared only at the paper's budget and with no extra overrides, in the
        run name or in its saved config."""
        if self.variant or self.changes:
            return False
        if self.method == "full":
            return True
        return self.budget_tokens is None and self.budget is not None and math.isclose(self.budget, PAPER_BUDGET)


# The paper's setting beyond method and budget, as a saved run config holds it.
REFERENCE_RUN = {"recent_ratio": 0.1, "budget_tokens": None, "adversarial": False, "combine_image": False}
BUDGET_FIELDS = ("budget", "recent_ratio", "budget_tokens")


@lru_cache(maxsize=1)
def _reference_ratios() -> dict[str, Any]:
    """configs/ratios/reference.yaml as a saved run config holds its `ratios` node, read once."""
    from csp.engine.registry import CONFIGS

    return yaml.safe_load((CONFIGS / "ratios" / "reference.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _method_defaults(method: str) -> dict[str, Any] | None:
    from csp.engine.method import ConfigError
    from csp.engine.registry import method_config

    try:
        node = method_config(method)
    except ConfigError:
        return None
    return {k: v for k, v in node.items() if k != "_target_" and k not in BUDGET_FIELDS}


def setting_changes(cfg: dict[str, Any], method: str) -> tuple[str, ...]:
    """What a saved run config sets off the paper's setting beyond the budget: the recent share,
    an absolute token budget, adversarial or combined-image inputs, another ratio table, any
    method field off its default. A run named by hand (`run_name=...`) shows none of these in
    its folder name, so the saved config is where they are read."""
    out = []
    for key, ref in REFERENCE_RUN.items():
        if key in cfg and cfg[key] != ref and (method != "full" or key not in BUDGET_FIELDS):
            out.append(f"{key}={cfg[key]}")
    if method == "full":
        return tuple(out)
    ratios = cfg.get("ratios")
    if isinstance(ratios, dict) and ratios != _reference_ratios():
        out.append("ratios")
    node, defaults = cfg.get("method"), _method_defaults(method)
    if isinstance(node, dict) and defaults is not None:
        out += [f"method.{k}={node[k]}" for k in defaults if k in node and node[k] != defaults[k]]
    return tuple(out)


_RUN_NAME = re.compile(r"^(?P<method>.+?)(?:_b(?P<budget>\d*\.?\d+(?:e-?\d+)?)|_t(?P<tokens>\d+))?$")


def read_run_meta(run_dir: Path | str) -> RunMeta:
    """Model, method and budget of a run, from its saved config when there is one, else from
    the folder names (`<model>/<method>_b<budget>[,overrides]`) and the predictions."""
    run_dir = Path(run_dir)
    cfg: dict[str, Any] = {}
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    run_name = str(cfg.get("run_name") or run_dir.name)
    head, _, variant = run_name.partition(",")
    parsed = _RUN_NAME.match(head)
    assert parsed is not None  # the pattern matches any non-empty name
    model_cfg = cfg.get("model")
    model = str(model_cfg.get("name") if isinstance(model_cfg, dict) and model_cfg.get("name") else run_dir.parent.name)
    method_cfg = cfg.get("method")
    method = (cfg.get("method_name")
              or (method_cfg.get("name") if isinstance(method_cfg, dict) else method_cfg if isinstance(method_cfg, str) else None)
              or _method_from_predictions(run_dir)
              or parsed.group("method"))
    method = str(method)
    if cfg:
        budget = cfg.get("budget")
        tokens = cfg.get("budget_tokens")
    else:
        budget = parsed.group("budget")
        tokens = parsed.group("tokens")
    return RunMeta(model=model, method=method,
                   budget=None if method == "full" or budget is None else float(budget),
                   budget_tokens=None if method == "full" or tokens is None else int(tokens),
                   variant=variant, run_name=run_name, changes=setting_changes(cfg, method) if cfg else ())


def _method_from_predictions(run_dir: Path) -> str | None:
    """The runner records the method's name in each prediction's gen_kwargs."""
    for pred in sorted(run_dir.glob(f"*/{PRED_FILE}")):
        try:
            preds = json.loads(pred.read_text(encoding="utf-8"))
            name = preds[0]["gen_kwargs"]["method"]["name"]
        except (OSError, ValueError, LookupError, TypeError):
            continue
        if isinstance(name, str) and name:
            return name
    return None


# ---------------------------------------------------------------- collecting ------------

@dataclass
class RunScores:
    meta: RunMeta
    path: Path
    scores: dict[str, float]  # dataset -> score x 100 (faithful)
    rouge_score: dict[str, float] = field(default_factory=dict)  # Google rouge-score x 100
    content_em: dict[str, float] = field(default_factory=dict)  # free-form sets: content-word exact match x 100
    corrected: dict[str, float] = field(default_factory=dict)
    unscored: list[str] = field(default_factory=list)  # pred.json without eval.json
    fidelity: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> fidelity.json summary

    def missing(self, datasets: Iterable[str] = catalog.NAMES) -> list[str]:
        return [d for d in datasets if d not in self.scores]


def find_runs(results_dir: Path | str) -> list[Path]:
    """Every `<model>/<run_name>` folder holding at least one dataset folder."""
    results_dir = Path(results_dir)
    runs = set()
    for marker in (EVAL_FILE, PRED_FILE):
        for f in results_dir.glob(f"*/*/*/{marker}"):
            if f.parent.name in catalog.BY_NAME:
                runs.add(f.parent.parent)
    return sorted(runs)


def _metric_value(path: Path, metric: str) -> float:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        value = doc[metric]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read field {metric!r}: {e}") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{path}: field {metric!r} must be a number, got {value!r}")
    return 100.0 * float(value)


def collect_run(run_dir: Path | str) -> RunScores:
    run_dir = Path(run_dir)
    out = RunScores(meta=read_run_meta(run_dir), path=run_dir, scores={})
    for d in (*catalog.DATASETS, *catalog.PROXY_DATASETS):
        folder = run_dir / d.name
        if (folder / EVAL_FILE).is_file():
            out.scores[d.name] = _metric_value(folder / EVAL_FILE, d.metric)
        elif (folder / PRED_FILE).is_file():
            out.unscored.append(d.name)
        if (folder / corrected_name(EVAL_FILE)).is_file():
            out.corrected[d.name] = _metric_value(folder / corrected_name(EVAL_FILE), d.metric)
        if (folder / ROUGE_SCORE_FILE).is_file():
            out.rouge_score[d.name] = _metric_value(folder / ROUGE_SCORE_FILE, "Rouge-L f")
        if (folder / CONTENT_EM_FILE).is_file():
            out.content_em[d.name] = _metric_value(folder / CONTENT_EM_FILE, "Content EM")
        if (folder / FIDELITY_FILE).is_file():
            out.fidelity[d.name] = _fidelity_summary(folder / FIDELITY_FILE)
    return out


FIDELITY_FIELDS = {"kl": "KL", "top1": "top-1 %", "identical": "identical %"}


def _fidelity_summary(path: Path) -> dict[str, float]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        values = {k: float(summary[k]) for k in FIDELITY_FIELDS}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read field summary.{e if isinstance(e, KeyError) else ''}: "
                         f"expected summary.kl, summary.top1 and summary.identical numbers") from None
    return values


def fidelity_frame(runs: Sequence[RunScores], formatted: bool = False) -> pd.DataFrame:
    """Datasets as rows; per run with fidelity.json files, columns `<label> KL` (mean
    KL(full || method), nats), `<label> top-1 %` and `<label> identical %` (greedy answers
    equal to the full cache's). formatted=True gives strings: KL to 4 decimals, shares to 1."""
    runs = [r for r in sort_runs(runs) if r.fidelity]
    datasets = [d for d in (*catalog.NAMES, *catalog.PROXY_NAMES) if any(d in r.fidelity for r in runs)]
    data: dict[str, list[Any]] = {"dataset": datasets, "group": [catalog.get(d).group for d in datasets]}
    for run in runs:
        for key, name in FIDELITY_FIELDS.items():
            values = [run.fidelity[d][key] * (1 if key == "kl" else 100) if d in run.fidelity else float("nan")
                      for d in datasets]
            if formatted:
                values = ["–" if math.isnan(v) else f"{v:.4f}" if key == "kl" else f"{v:.1f}" for v in values]
            data[f"{run.meta.label} {name}"] = values
    return pd.DataFrame(data)


def sort_runs(runs: Sequence[RunScores]) -> list[RunScores]:
    def key(r: RunScores) -> tuple:
        m = r.meta
        return (m.model, method_rank(m.method), m.method,
                m.budget if m.budget is not None else 2.0, m.budget_tokens or 0, m.variant, m.run_name)
    return sorted(runs, key=key)


# ---------------------------------------------------------------- aggregation -----------

def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def task_scores(scores: dict[str, float], rouge_score: dict[str, float] | None = None) -> dict[str, float]:
    """Task, overall and rouge-score columns of one run; NaN where a needed dataset is missing."""
    nan = float("nan")
    out: dict[str, float] = {}
    for group in TABLE1_COLUMNS:
        names = [d.name for d in catalog.in_group(group)]
        out[group] = _mean([scores[n] for n in names]) if all(n in scores for n in names) else nan
    realistic = [out[g] for g in catalog.REALISTIC_GROUPS]
    out["Realistic"] = nan if any(math.isnan(v) for v in realistic) else _mean(realistic)
    diag = [scores.get(n, nan) for n in DIAGNOSTIC_DATASETS]
    out["Diagnostic"] = nan if any(math.isnan(v) for v in diag) else _mean(diag)
    # the same task means with Google's rouge-score in place of the reference ROUGE-L
    merged = {**scores, **(rouge_score or {})}
    for column, group in ROUGE_SCORE_COLUMNS.items():
        names = [d.name for d in catalog.in_group(group)]
        ok = all(n in scores for n in names) and all(n in (rouge_score or {}) for n in names if n in ROUGE_DATASETS)
        out[column] = _mean([merged[n] for n in names]) if ok else nan
    return out


def load_paper(table: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DIR / f"paper_{table}.csv")


def paper_row(meta: RunMeta, table: str, papers: dict[str, pd.DataFrame]) -> dict[str, float] | None:
    """The published row for a run, or None (other model, other budget, unpublished method)."""
    if not meta.at_paper_setting or PAPER_MODELS.get(meta.model.lower(), ("", ""))[0] != table:
        return None
    paper_model = PAPER_MODELS[meta.model.lower()][1]
    if table == "table3":
        if meta.method.startswith("lookm"):
            if meta.method != TABLE3_LOOKM:
                return None
            name = "LOOK-M"
        else:
            name = method_table_label(meta.method)
    else:
        name = method_table_label(meta.method)
    if name is None:
        return None
    df = papers[table]
    hit = df[(df["model"] == paper_model) & (df["method"] == name)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {c: float(row[c]) for c in df.columns if c not in ("model", "method")}


# ---------------------------------------------------------------- tables ----------------

def table_frame(runs: Sequence[RunScores], table: str, columns: Sequence[str]) -> pd.DataFrame:
    """One row per run, each followed by the paper's row and the difference where published."""
    papers = {table: load_paper(table)}
    needed = {d.name for g in columns if g in catalog.GROUPS for d in catalog.in_group(g)}
    rows = []
    for run in sort_runs(runs):
        m = run.meta
        tasks = task_scores(run.scores, run.rouge_score)
        base = {"model": m.model, "method": m.display, "budget": m.budget_label, "variant": m.variant,
                "run": m.run_name}
        missing = [d for d in catalog.NAMES if d in needed and d not in run.scores]
        ours = {**base, "row": "ours", **{c: tasks[c] for c in columns}, "missing": missing_label(missing)}
        rows.append(ours)
        paper = paper_row(m, table, papers)
        if paper is not None:
            rows.append({**base, "row": "paper", **{c: paper.get(c, float("nan")) for c in columns}, "missing": ""})
            rows.append({**base, "row": "diff",
                         **{c: ours[c] - paper[c] if c in paper else float("nan") for c in columns},
                         "missing": ""})
    return pd.DataFrame(rows, columns=["model", "method", "budget", "variant", "run", "row", *columns, "missing"])


def missing_label(missing: Sequence[str]) -> str:
    """Missing datasets, a whole task group named once: "T-1 (all), ObjectShuffle"."""
    gone = set(missing)
    parts: list[str] = []
    for group in catalog.GROUPS:
        names = [d.name for d in catalog.in_group(group)]
        if len(names) > 1 and all(n in gone for n in names):
            parts.append(f"{group} (all)")
        else:
            parts += [n for n in names if n in gone]
    return ", ".join(parts)


def eval_score_frame(runs: Sequence[RunScores], which: str = "scores") -> pd.DataFrame:
    """Datasets as rows, runs as columns (x 100). which: scores | rouge_score | content_em | corrected."""
    runs = sort_runs(runs)
    datasets = ROUGE_DATASETS if which in ("rouge_score", "content_em") else catalog.NAMES
    proxy = [d.name for d in catalog.PROXY_DATASETS if (which not in ("rouge_score", "content_em") or d.scoring == "rouge")
             and any(d.name in getattr(r, which) for r in runs)]
    if proxy:  # proxy runs (milebench/proxy.py): their rows, and the 29 only when some run has them
        real = any(d in getattr(r, which) for r in runs for d in datasets)
        datasets = [*(datasets if real else ()), *proxy]
    data = {"dataset": list(datasets), "group": [catalog.get(d).group for d in datasets],
            "metric": [_metric_label(d, which) for d in datasets]}
    for run in runs:
        values = getattr(run, which)
        data[run.meta.label] = [values.get(d, float("nan")) for d in datasets]
    return pd.DataFrame(data)


def _metric_label(dataset: str, which: str) -> str:
    info = catalog.get(dataset)
    if which == "rouge_score":
        return "ROUGE-L F (Google rouge-score)"
    if which == "content_em":
        return "content-word exact match"
    if info.scoring == "rouge":
        return "ROUGE-L F (rouge 1.0.1)"
    return {"choice": "accuracy (choice)", "needle": "accuracy (needle token)",
            "substring": "accuracy (substring)"}[info.scoring]


def to_markdown(df: pd.DataFrame, *, missing_text: str = "missing", signed_rows: str = "diff",
                optional: Sequence[str] = tuple(ROUGE_SCORE_COLUMNS)) -> str:
    """A GitHub table; numbers to 1 decimal, 0.0 printed as 0.0, NaN as `missing_text` (as "–"
    in paper/diff rows and `optional` columns, where it means "not available")."""
    def cell(value: Any, signed: bool) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return missing_text
            return f"{value:+.1f}" if signed else f"{value:.1f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        kind = row.get("row")
        cells = []
        for column, v in zip(df.columns, row.tolist()):
            if isinstance(v, float) and math.isnan(v) and (kind in ("paper", "diff") or column in optional):
                cells.append("–")  # not published / not computed; not a missing result of ours
            else:
                cells.append(cell(v, kind == signed_rows and isinstance(v, float)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_model(df: pd.DataFrame, heading: str) -> str:
    parts = []
    for model, block in df.groupby("model", sort=True):
        paper = PAPER_MODELS.get(str(model).lower())
        note = f" (paper rows: {paper[1]})" if paper and paper[0] == heading else ""
        drop = ["model", "run"] + ([] if (block["variant"] != "").any() else ["variant"])
        parts.append(f"## {model}{note}\n\n" + to_markdown(block.drop(columns=drop)))
    return "\n\n".join(parts) if parts else "_no runs found_"


TABLE1_HEADER = """# Table 1: task scores per model (x 100)

Task = mean of its datasets; NH = mean of the two needle sets; IR = GPR1200; Realistic = mean
of the nine T/S tasks; Diagnostic = mean of TextNeedle, ImageNeedle and GPR1200. S-3 and S-4
use ROUGE-L of the `rouge` 1.0.1 package (MileBench's); the `[rouge-score]` columns recompute
them with Google's rouge-score. `paper` rows: CSP paper Table 1, shown for llava-1.5-7b /
llava-1.5-13b at budget {budget:g} (and for the full cache); `diff` = ours - paper. `missing`
in a cell: a dataset of that task has no eval.json (listed in the last column).
"""

TABLE3_HEADER = """# Table 3: other architectures, T-2 / T-4 / S-4 / IR (x 100)

`paper` rows: CSP paper Table 3 for internvl-chat-1.0 (the checkpoint behind its "InternVL-v1.5-7B"
rows) and mobilevlm-v2-3b (MobileVLM-V2-3B) at budget {budget:g}. The paper's single LOOK-M row is compared with our
`{lookm}` ({lookm_display}) only. S-4 mixes MMCoQA accuracy and ALFRED ROUGE-L (rouge 1.0.1).
"""

EVAL_SCORE_HEADER = """# Scores per dataset and run (x 100)

Columns are runs (`model / method / budget`). Accuracy for multiple choice, needles
(whole-token) and MMCoQA (substring); ROUGE-L F with the `rouge` 1.0.1 package for the
open-ended sets, as MileBench computes it. `missing`: no eval.json for that dataset.
"""


def build_tables(results_dir: Path | str, runs: Sequence[RunScores] | None = None) -> dict[str, Path]:
    """Write eval_score, table1 and table3 as Markdown and CSV into `results_dir`."""
    results_dir = Path(results_dir)
    if runs is None:
        runs = [collect_run(r) for r in find_runs(results_dir)]
    written: dict[str, Path] = {}

    scores = eval_score_frame(runs)
    md = [EVAL_SCORE_HEADER, to_markdown(scores)]
    unscored = [f"{r.meta.label}: {', '.join(r.unscored)}" for r in sort_runs(runs) if r.unscored]
    if unscored:
        md += ["\nPredictions without eval.json (score them with `python -m milebench.score`):\n",
               "\n".join(f"- {u}" for u in unscored)]
    if any(r.rouge_score for r in runs):
        md += ["\n## ROUGE-L with Google's rouge-score (extra; not what the papers report)\n",
               to_markdown(eval_score_frame(runs, "rouge_score"))]
    if any(r.content_em for r in runs):
        md += ["\n## Content-word exact match on the free-form sets (extra; ROUGE-L gives a wrong colour in "
               "\"red to blue\" 0.67, this gives it 0)\n",
               to_markdown(eval_score_frame(runs, "content_em"))]
    if any(r.corrected for r in runs):
        md += ["\n## Corrected mode (quirks fixed; not comparable with published numbers)\n",
               to_markdown(eval_score_frame(runs, "corrected"))]
    if any(r.fidelity for r in runs):
        md += ["\n## Fidelity against the full cache (label-free; runs made with `fidelity=true`)\n",
               "Teacher-forced on the full cache's greedy answer: mean KL(full || method) of the next-token "
               "distributions (nats), top-1 agreement, and the share of samples whose greedy answer is "
               "identical to the full cache's.\n",
               to_markdown(fidelity_frame(runs, formatted=True))]
        written["fidelity.csv"] = results_dir / "fidelity.csv"
        write_atomic(written["fidelity.csv"], fidelity_frame(runs).round(6).to_csv(index=False))
    written["eval_score.md"] = results_dir / "eval_score.md"
    write_atomic(written["eval_score.md"], "\n".join(md) + "\n")
    written["eval_score.csv"] = results_dir / "eval_score.csv"
    write_atomic(written["eval_score.csv"], scores.round(4).to_csv(index=False))

    t1 = table_frame(runs, "table1", (*TABLE1_COLUMNS, *OVERALL_COLUMNS, *ROUGE_SCORE_COLUMNS))
    t3 = table_frame(runs, "table3", TABLE3_COLUMNS)
    for name, frame, header in (
        ("table1", t1, TABLE1_HEADER.format(budget=PAPER_BUDGET)),
        ("table3", t3, TABLE3_HEADER.format(budget=PAPER_BUDGET, lookm=TABLE3_LOOKM,
                                            lookm_display=method_display(TABLE3_LOOKM))),
    ):
        written[f"{name}.md"] = results_dir / f"{name}.md"
        write_atomic(written[f"{name}.md"], header + "\n" + _by_model(frame, name) + "\n")
        written[f"{name}.csv"] = results_dir / f"{name}.csv"
        write_atomic(written[f"{name}.csv"], frame.round(4).to_csv(index=False))
    return written
