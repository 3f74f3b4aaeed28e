"""The proxy study's table and figures from the run files of `bash scripts/proxy.sh`.

    python scripts/proxy_report.py [--results results/proxy] [--model proxy-llava]

Reads every `<results>/<model>/<run>/<D>/eval.json` (and `fidelity.json`) of the proxy
datasets, exactly as eval_score.py does, and writes into `<results>/<model>/`:
- proxy_table.md / .csv: every method x budget, the mean over the six proxy tasks (x 100),
  the multiple-choice and free-form means, each task's score, and the label-free fidelity
  columns (mean KL(full || method) in nats, top-1 agreement %);
- proxy_budget.png: the paper's Figure 5 on the proxy (mean score against budget, a line per
  method, the full cache dashed), drawn by scripts/plot_sweeps.py;
- proxy_budget_per_method.png: one panel per method, with `random` and the full cache beside it.
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
from milebench.tables import collect_run, find_runs, has_own_budget, method_display, method_rank  # noqa: E402

DEFAULT_RESULTS = ROOT / "results" / "proxy"
MC = [d.name for d in catalog.PROXY_DATASETS if d.scoring == "choice"]
OPEN = [d.name for d in catalog.PROXY_DATASETS if d.scoring != "choice"]
SHORT = {name: name.removeprefix("Proxy") for name in catalog.PROXY_NAMES}
BUDGETS = (0.05, 0.1, 0.2, 0.5, 1.0)


def _is_sweep_variant(variant: str, budget: float | None, method: str) -> bool:
    """The sweep's own runs: the full cache, or only the override recent_ratio = budget / 2
    (scripts/proxy.sh always passes it; a run without it split its budget another way)."""
    if not variant:
        return method == "full"
    key, _, value = variant.partition("=")
    try:
        return key == "recent_ratio" and "," not in variant and budget is not None and math.isclose(
            float(value), budget / 2)
    except ValueError:
        return False


def proxy_frame(results: Path, model: str | None = None) -> pd.DataFrame:
    """One row per (model, method, budget) run that has every proxy dataset scored."""
    rows = []
    for path in find_runs(results):
        run = collect_run(path)
        m = run.meta
        if model is not None and m.model != model:
            continue
        if m.budget_tokens is not None or not _is_sweep_variant(m.variant, m.budget, m.method):
            continue
        if not all(d in run.scores for d in catalog.PROXY_NAMES):
            continue
        row = {"model": m.model, "method": m.method, "budget": 1.0 if m.method == "full" else m.budget,
               "run": m.run_name}
        row.update({SHORT[d]: run.scores[d] for d in catalog.PROXY_NAMES})
        row["mean"] = sum(run.scores[d] for d in catalog.PROXY_NAMES) / len(catalog.PROXY_NAMES)
        row["MC mean"] = sum(run.scores[d] for d in MC) / len(MC)
        row["open mean"] = sum(run.scores[d] for d in OPEN) / len(OPEN)
        fid = [run.fidelity[d] for d in catalog.PROXY_NAMES if d in run.fidelity]
        row["KL"] = sum(f["kl"] for f in fid) / len(fid) if fid else float("nan")
        row["top-1 %"] = 100 * sum(f["top1"] for f in fid) / len(fid) if fid else float("nan")
        rows.append(row)
    columns = ["model", "method", "budget", "run", "mean", "MC mean", "open mean", "KL", "top-1 %",
               *SHORT.values()]
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

    parts = ["# Proxy study: every method x budget (x 100; mean over the six proxy tasks)\n",
             "Trained proxy LLaVA (standins/proxy_llava.py) on the held-out proxy samples (milebench/proxy.py), run by "
             "the unchanged runner and scored by MileBench's scorer. `MC mean`: the four multiple-choice tasks "
             "(accuracy); `open mean`: the two free-form tasks (ROUGE-L F). `KL` (nats) and `top-1 %`: label-"
             "free fidelity against the full cache (fidelity=true). Budget b keeps a share b of the prompt, "
             "half of it the most recent tokens.\n"]
    for model, block in df.groupby("model", sort=True):
        summary = wide(block).reset_index()
        summary.columns = ["method", *[f"{b:g}" for b in summary.columns[1:]]]
        summary["method"] = [method_display(m) for m in summary["method"]]
        lines = ["| " + " | ".join(summary.columns) + " |", "|" + "---|" * len(summary.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in summary.itertuples(index=False)]
        parts.append(f"## {model}: mean score by budget\n\n" + "\n".join(lines) + "\n")
        full = block.drop(columns=["model", "run"]).copy()
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
    for row in df.itertuples(index=False):
        for name, short in SHORT.items():
            rows.append(dict(model=row.model, method=row.method, budget=float(row.budget), dataset=name,
                             score=getattr(row, short)))
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
    fig.supylabel("mean proxy score", fontsize=8)
    fig.suptitle("Proxy: score against budget per method (grey: random, dashed: full cache)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Path, model: str | None = None) -> dict[str, Path]:
    from plot_sweeps import plot_figure5

    df = proxy_frame(results, model)
    if df.empty:
        raise SystemExit(f"error: no proxy run with all six proxy datasets scored under {results}")
    written = {}
    for name, block in df.groupby("model"):
        folder = results / str(name)
        write_atomic(folder / "proxy_table.md", markdown(block))
        write_atomic(folder / "proxy_table.csv", block.round(6).to_csv(index=False))
        with atomic_path(folder / "proxy_budget.png") as png:
            plot_figure5(figure5_frame(block), png)
        with atomic_path(folder / "proxy_budget_per_method.png") as png:
            plot_per_method(block, png)
        written.update({f"{name}/{f}": folder / f for f in
                        ("proxy_table.md", "proxy_table.csv", "proxy_budget.png", "proxy_budget_per_method.png")})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--model", help="only this model config name (default: every model found)")
    args = ap.parse_args(argv)
    written = write_report(args.results, args.model)
    for key in written:
        if key.endswith("proxy_table.md"):
            print(written[key].read_text(encoding="utf-8").split("## ")[1].split("\n", 1)[1].split("\n\n")[0])
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
