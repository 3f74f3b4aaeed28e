"""The budget study's table and figures from the run files of `bash scripts/study.sh`.

    python scripts/study_report.py [--results results/study] [--model standin-llava]

Reads every `<results>/<model>/<run>/<D>/eval.json` (and `fidelity.json`), exactly as
eval_score.py does, and writes into `<results>/<model>/`:
- study_table.md / .csv: every method x budget, the mean over the 29 datasets (x 100), each
  task group's score (T-1 .. S-5, NH, IR, as the papers aggregate), the multiple-choice and
  free-form means, and the label-free fidelity columns (mean KL(full || method) in nats,
  top-1 agreement %);
- study_budget.png: the paper's Figure 5 (mean score against budget, a line per method, the
  full cache dashed), drawn by scripts/plot_sweeps.py;
- study_budget_per_method.png: one panel per method, with `random` and the full cache beside it.
A budget b ran with recent_ratio b/2 (the reference split 0.1 + 0.1 at 0.2), so run names
carry `recent_ratio=...`: that is the sweep's rule, not a variant.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from milebench import catalog  # noqa: E402
from milebench.files import atomic_path, write_atomic  # noqa: E402
from milebench.tables import (  # noqa: E402
    collect_run,
    find_runs,
    has_own_budget,
    method_display,
    method_rank,
    task_scores,
)

DEFAULT_RESULTS = ROOT / "results" / "study"
MC = [d.name for d in catalog.DATASETS if d.scoring == "choice"]
OPEN = [d.name for d in catalog.DATASETS if d.scoring != "choice"]
GROUPS = tuple(catalog.GROUPS)
BUDGETS = (0.05, 0.1, 0.2, 0.5, 1.0)


def _is_sweep_variant(variant: str, budget: float | None, method: str) -> bool:
    """The sweep's own runs: the full cache, or only the override recent_ratio = budget / 2
    (scripts/study.sh always passes it; a run without it split its budget another way)."""
    if not variant:
        return method == "full"
    key, _, value = variant.partition("=")
    try:
        return key == "recent_ratio" and "," not in variant and budget is not None and math.isclose(
            float(value), budget / 2)
    except ValueError:
        return False


def study_frame(results: Path, model: str | None = None) -> pd.DataFrame:
    """One row per (model, method, budget) run that has all 29 datasets scored."""
    rows = []
    for path in find_runs(results):
        run = collect_run(path)
        m = run.meta
        if model is not None and m.model != model:
            continue
        if m.budget_tokens is not None or not _is_sweep_variant(m.variant, m.budget, m.method):
            continue
        if not all(d in run.scores for d in catalog.NAMES):
            continue
        row = {"model": m.model, "method": m.method, "budget": 1.0 if m.method == "full" else m.budget,
               "run": m.run_name}
        row["mean"] = sum(run.scores[d] for d in catalog.NAMES) / len(catalog.NAMES)
        row["MC mean"] = sum(run.scores[d] for d in MC) / len(MC)
        row["open mean"] = sum(run.scores[d] for d in OPEN) / len(OPEN)
        groups = task_scores(run.scores)
        row.update({g: groups[g] for g in GROUPS})
        row.update({d: run.scores[d] for d in catalog.NAMES})
        fid = [run.fidelity[d] for d in catalog.NAMES if d in run.fidelity]
        row["KL"] = sum(f["kl"] for f in fid) / len(fid) if fid else float("nan")
        row["top-1 %"] = 100 * sum(f["top1"] for f in fid) / len(fid) if fid else float("nan")
        rows.append(row)
    columns = ["model", "method", "budget", "run", "mean", "MC mean", "open mean", "KL", "top-1 %",
               *GROUPS, *catalog.NAMES]
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return df
    df["_rank"] = [method_rank(m) for m in df.method]
    df = df.sort_values(["model", "_rank", "method", "budget"]).drop(columns="_rank").reset_index(drop=True)
    return df


def wide(df: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """method x budget of one value (the full cache as its own row at budget 1)."""
    table = df.pivot_table(index="method", columns="budget", values=value, aggfunc="first")
    return table.reindex(sorted(table.index, key=lambda m: (method_rank(m), m)))


def markdown(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.4f}" if abs(v) < 1 and v != 0 else f"{v:.1f}"
        return str(v)

    parts = ["# Budget study: every method x budget (x 100; mean over the 29 datasets)\n",
             "The trained LLaVA stand-in (standins/llava_standin.py) on the scored split of the learnable MileBench "
             "(milebench/learnable.py), run by the unchanged runner and scored by MileBench's scorer. `MC mean`: the "
             "22 multiple-choice datasets (accuracy); `open mean`: the 7 others (ROUGE-L F, substring, needle). "
             "Task groups as the papers aggregate them. `KL` (nats) and `top-1 %`: label-free fidelity against "
             "the full cache (fidelity=true). Budget b keeps a share b of the prompt, half of it the most "
             "recent tokens.\n"]
    for model, block in df.groupby("model", sort=True):
        summary = wide(block).reset_index()
        summary.columns = ["method", *[f"{b:g}" for b in summary.columns[1:]]]
        summary["method"] = [method_display(m) for m in summary["method"]]
        lines = ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in summary.itertuples(index=False)]
        parts.append(f"## {model}: mean score by budget\n\n" + "\n".join(lines) + "\n")
        full = block.drop(columns=["model", "run", *catalog.NAMES]).copy()
        full["method"] = [method_display(m) for m in full["method"]]
        cols = list(full.columns)
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in full.itertuples(index=False):
            cells = []
            for c, v in zip(cols, row):
                if c == "budget":
                    cells.append(f"{v:g}")
                elif c == "KL":
                    cells.append("–" if math.isnan(v) else f"{v:.4f}")
                else:
                    cells.append(cell(v) if c != "top-1 %" else ("–" if math.isnan(v) else f"{v:.1f}"))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append(f"## {model}: every run\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def figure5_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The long frame scripts/plot_sweeps.py draws Figure 5 from."""
    rows = []
    for row in df.to_dict("records"):
        for name in catalog.NAMES:
            rows.append(dict(model=row["model"], method=row["method"], budget=float(row["budget"]), dataset=name,
                             score=row[name]))
    return pd.DataFrame(rows, columns=["model", "method", "budget", "dataset", "score"])


def plot_per_method(df: pd.DataFrame, path: Path) -> None:
    """One panel per method: its mean score against budget, `random` and the full cache beside."""
    from plot_sweeps import _pyplot

    plt = _pyplot()
    methods = [m for m in wide(df).index if m != "full"]
    cols = min(5, max(1, len(methods)))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.3 * rows), squeeze=False, sharey=True)
    full = df[df.method == "full"]["mean"]
    rand = df[df.method == "random"].sort_values("budget")
    for ax, method in zip(axes.flat, methods):
        block = df[df.method == method].sort_values("budget")
        if not full.empty:
            ax.axhline(full.iloc[0], color="k", ls="--", lw=1)
        if method != "random" and not rand.empty:
            ax.plot(rand.budget, rand["mean"], color="0.6", lw=1, marker=".", label="random")
        ax.plot(block.budget, block["mean"], marker="o", label=method_display(method))
        ax.set_xscale("log")
        ax.set_xticks(BUDGETS, [f"{b:g}" for b in BUDGETS])
        ax.minorticks_off()
        ax.set_title(method_display(method) + (" (own budget)" if has_own_budget(method) else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.supxlabel("budget (kept share of the prompt, log scale)", fontsize=8)
    fig.supylabel("mean score, 29 datasets", fontsize=8)
    fig.suptitle("Learnable MileBench: score against budget per method (grey: random, dashed: full cache)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Path, model: str | None = None) -> dict[str, Path]:
    from plot_sweeps import plot_figure5

    df = study_frame(results, model)
    if df.empty:
        raise SystemExit(f"error: no run with all 29 datasets scored under {results}")
    written = {}
    for name, block in df.groupby("model"):
        folder = results / str(name)
        write_atomic(folder / "study_table.md", markdown(block))
        write_atomic(folder / "study_table.csv", block.round(6).to_csv(index=False))
        with atomic_path(folder / "study_budget.png") as png:
            plot_figure5(figure5_frame(block), png)
        with atomic_path(folder / "study_budget_per_method.png") as png:
            plot_per_method(block, png)
        written.update({f"{name}/{f}": folder / f for f in
                        ("study_table.md", "study_table.csv", "study_budget.png", "study_budget_per_method.png")})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--model", help="only this model config name (default: every model found)")
    args = ap.parse_args(argv)
    written = write_report(args.results, args.model)
    for key in written:
        if key.endswith("study_table.md"):
            print(written[key].read_text(encoding="utf-8").split("## ")[1].split("\n", 1)[1].split("\n\n")[0])
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
