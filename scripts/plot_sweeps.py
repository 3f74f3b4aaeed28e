"""The paper's ablation figures from the sweep runs' files under results/.

    bash scripts/sweep_cross_ratio.sh ...; bash scripts/sweep_nsoftmax.sh ...; bash scripts/sweep_budget.sh ...
    python scripts/plot_sweeps.py [--results results] [--out results/plots] [--model tiny-llava]

Figure 3: score against CSP's cross ratio, one panel per dataset (runs with a fixed
  `method.cross_ratio`; the best ratio per dataset is listed in the markdown).
Figure 4: n-softmax vs softmax scores, decomposed (cross/self) vs joint top-k: the four CSP
  runs of one budget that differ only in `score_fn` and `decompose`.
Figure 5: score against budget, one line per method (runs without extra overrides), the full
  cache as a dashed line.
Scores are eval.json's (x 100). Only datasets present in every run of a comparison enter its
means, and the markdown names them. Each figure is written as <name>.csv, <name>.md, <name>.png.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from milebench import catalog  # noqa: E402
from milebench.files import CONFIG_FILE, atomic_path, write_atomic  # noqa: E402
from milebench.tables import RunScores, collect_run, find_runs, has_own_budget, method_display, method_rank  # noqa: E402

# CSP's defaults, for runs whose config does not spell a setting out
CSP_DEFAULTS = {"cross_ratio": None, "score_fn": "nsoftmax", "decompose": True}
ABLATION_ORDER = [("nsoftmax", True), ("softmax", True), ("nsoftmax", False), ("softmax", False)]


@dataclass
class Run:
    scores: RunScores
    settings: dict[str, Any]  # the method's fields, from config.yaml and the run name's overrides

    @property
    def meta(self):
        return self.scores.meta


def method_settings(run: RunScores) -> dict[str, Any]:
    """Method fields of a run: the saved config's `method` block, then the run name's
    `key=value` overrides (which are all a run has when it lacks a config)."""
    settings: dict[str, Any] = {}
    path = run.path / CONFIG_FILE
    if path.is_file():
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML: {e}") from None
        method = cfg.get("method") if isinstance(cfg, dict) else None
        if isinstance(method, dict):
            settings.update({k: v for k, v in method.items() if not k.startswith("_")})
    for item in filter(None, run.meta.variant.split(",")):
        key, sep, value = item.partition("=")
        if sep:
            settings[key.removeprefix("method.")] = yaml.safe_load(value)
    return settings


def load_runs(results: Path, model: str | None) -> list[Run]:
    runs = [Run(r, method_settings(r)) for r in (collect_run(p) for p in find_runs(results))]
    return [r for r in runs if model is None or r.meta.model == model]


def common_datasets(runs: Sequence[Run]) -> list[str]:
    return [d for d in catalog.NAMES if all(d in r.scores.scores for r in runs)]


def _csp(run: Run, key: str) -> Any:
    return run.settings.get(key, CSP_DEFAULTS[key])


def _extra_overrides(run: Run, allowed: set[str]) -> bool:
    keys = {item.partition("=")[0].removeprefix("method.") for item in filter(None, run.meta.variant.split(","))}
    return bool(keys - allowed)


# ---------------------------------------------------------------- the three frames --------

def figure3_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """model, budget, dataset, cross_ratio, score: CSP runs with a fixed cross ratio."""
    rows = []
    for r in runs:
        ratio = _csp(r, "cross_ratio") if r.meta.method == "csp" else None
        if ratio is None or _extra_overrides(r, {"cross_ratio"}):
            continue
        for d, s in r.scores.scores.items():
            rows.append(dict(model=r.meta.model, budget=r.meta.budget_label, dataset=d, cross_ratio=float(ratio),
                             score=s))
    return pd.DataFrame(rows, columns=["model", "budget", "dataset", "cross_ratio", "score"])


def figure4_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """model, budget, score_fn, decompose, dataset, score over the datasets all four share."""
    picked: dict[tuple, Run] = {}
    for r in runs:
        if r.meta.method != "csp" or _extra_overrides(r, {"score_fn", "decompose"}):
            continue
        picked[(r.meta.model, r.meta.budget_label, _csp(r, "score_fn"), bool(_csp(r, "decompose")))] = r
    rows = []
    for model, budget in sorted({k[:2] for k in picked}):
        group = [picked[k] for k in picked if k[:2] == (model, budget)]
        if len(group) < 2:
            continue
        shared = common_datasets(group)
        for r in group:
            for d in shared:
                rows.append(dict(model=model, budget=budget, score_fn=_csp(r, "score_fn"),
                                 decompose=bool(_csp(r, "decompose")), dataset=d, score=r.scores.scores[d]))
    return pd.DataFrame(rows, columns=["model", "budget", "score_fn", "decompose", "dataset", "score"])


def figure5_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """model, method, budget, dataset, score: runs without overrides, budgets as fractions
    (the full cache at 1.0), over the datasets every such run of the model has."""
    plain = [r for r in runs if not r.meta.variant and r.meta.budget_tokens is None
             and (r.meta.method == "full" or r.meta.budget is not None)]
    rows = []
    for model in sorted({r.meta.model for r in plain}):
        group = [r for r in plain if r.meta.model == model]
        for r in group:
            for d in common_datasets(group):
                rows.append(dict(model=model, method=r.meta.method,
                                 budget=1.0 if r.meta.method == "full" else float(r.meta.budget),
                                 dataset=d, score=r.scores.scores[d]))
    return pd.DataFrame(rows, columns=["model", "method", "budget", "dataset", "score"])


# ---------------------------------------------------------------- markdown and plots -----

def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def figure3_markdown(df: pd.DataFrame) -> str:
    parts = ["# Figure 3: score against cross ratio (x 100)"]
    for (model, budget), block in df.groupby(["model", "budget"]):
        wide = block.pivot_table(index="dataset", columns="cross_ratio", values="score")
        wide = wide.reindex([d for d in catalog.NAMES if d in wide.index])
        best = wide.idxmax(axis=1)
        table = wide.reset_index()
        table.columns = ["dataset", *[f"{c:g}" for c in wide.columns]]
        table["best ratio"] = [f"{b:g}" for b in best]
        parts.append(f"## {model}, budget {budget}\n\n" + _md_table(table))
    return "\n\n".join(parts) + "\n"


def ablation_label(score_fn: str, decompose: bool) -> str:
    return f"{'n-softmax' if score_fn == 'nsoftmax' else 'softmax'}, {'cross/self' if decompose else 'joint'} top-k"


def figure4_markdown(df: pd.DataFrame) -> str:
    parts = ["# Figure 4: n-softmax vs softmax, decomposed vs joint top-k (x 100)"]
    for (model, budget), block in df.groupby(["model", "budget"]):
        block = block.assign(variant=[ablation_label(s, d) for s, d in zip(block.score_fn, block.decompose)])
        wide = block.pivot_table(index="dataset", columns="variant", values="score")
        order = [ablation_label(*k) for k in ABLATION_ORDER if ablation_label(*k) in wide.columns]
        wide = wide.reindex([d for d in catalog.NAMES if d in wide.index])[order]
        wide.loc["mean"] = wide.mean()
        parts.append(f"## {model}, budget {budget}\n\n" + _md_table(wide.reset_index()))
    return "\n\n".join(parts) + "\n"


def figure5_markdown(df: pd.DataFrame) -> str:
    parts = ["# Figure 5: mean score against budget, per method (x 100)"]
    for model, block in df.groupby("model"):
        means = block.groupby(["method", "budget"]).score.mean().unstack("budget")
        means = means.reindex(sorted(means.index, key=lambda m: (method_rank(m), m)))
        table = means.reset_index()
        table.columns = ["method", *[f"{b:g}" for b in means.columns]]
        table["method"] = [method_display(m) for m in table["method"]]
        datasets = sorted(block.dataset.unique(), key=catalog.NAMES.index)
        parts.append(f"## {model} (mean over {len(datasets)} dataset(s): {', '.join(datasets)})\n\n"
                     + _md_table(table))
    return "\n\n".join(parts) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_figure3(df: pd.DataFrame, path: Path) -> None:
    plt = _pyplot()
    datasets = [d for d in catalog.NAMES if d in set(df.dataset)]
    cols = min(4, len(datasets))
    rows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, d in zip(axes.flat, datasets):
        for (model, budget), block in df[df.dataset == d].groupby(["model", "budget"]):
            block = block.sort_values("cross_ratio")
            ax.plot(block.cross_ratio, block.score, marker="o", label=f"{model}, {budget}")
        ax.set_title(d, fontsize=9)
        ax.set_xlabel("cross ratio", fontsize=8)
        ax.set_ylabel("score", fontsize=8)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Figure 3: score against cross ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figure4(df: pd.DataFrame, path: Path) -> None:
    plt = _pyplot()
    groups = list(df.groupby(["model", "budget"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.8), squeeze=False)
    for ax, ((model, budget), block) in zip(axes.flat, groups):
        datasets = [d for d in catalog.NAMES if d in set(block.dataset)] + ["mean"]
        variants = [k for k in ABLATION_ORDER if ((block.score_fn == k[0]) & (block.decompose == k[1])).any()]
        width = 0.8 / len(variants)
        for i, (fn, dec) in enumerate(variants):
            sel = block[(block.score_fn == fn) & (block.decompose == dec)].set_index("dataset").score
            values = [sel.get(d, float("nan")) for d in datasets[:-1]] + [sel.mean()]
            ax.bar([x + (i - (len(variants) - 1) / 2) * width for x in range(len(datasets))], values, width,
                   label=ablation_label(fn, dec))
        ax.set_xticks(range(len(datasets)), datasets, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("score")
        ax.set_title(f"{model}, budget {budget}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 4: n-softmax vs softmax, cross/self vs joint top-k")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figure5(df: pd.DataFrame, path: Path) -> None:
    """A line per method; with many methods, colours from a 20-colour map and three line
    styles, so no two share a look, and the legend beside the axes. A method with its own
    budget (FastV) is dotted and says so: its points do not keep `budget` of the prompt."""
    plt = _pyplot()
    models = sorted(df.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models) + 2.2, 3.8), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for ax, model in zip(axes.flat, models):
        means = df[df.model == model].groupby(["method", "budget"]).score.mean()
        methods = sorted(means.index.get_level_values("method").unique(), key=lambda m: (method_rank(m), m))
        for i, method in enumerate(methods):
            series = means.loc[method].sort_index()
            if method == "full":
                ax.axhline(series.iloc[0], color="k", ls="--", lw=1, label=method_display("full"))
            elif has_own_budget(method):
                ax.plot(series.index, series.values, color="grey", ls=":", marker="x",
                        label=f"{method_display(method)} (own budget)")
            else:
                ax.plot(series.index, series.values, color=colours[i % len(colours)], ls=("-", "--", "-.")[i % 3],
                        marker="os^"[i % 3], ms=4, label=method_display(method))
        ax.set_xlabel("budget (kept share of the prompt)")
        ax.set_ylabel("mean score")
        ax.set_title(model, fontsize=9)
    handles, labels = axes.flat[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("Figure 5: score against budget")
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURES = {
    "figure3_cross_ratio": (figure3_frame, figure3_markdown, plot_figure3),
    "figure4_ablation": (figure4_frame, figure4_markdown, plot_figure4),
    "figure5_budget": (figure5_frame, figure5_markdown, plot_figure5),
}


def main(argv: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="folder of <model>/<run>/<D>/")
    ap.add_argument("--out", type=Path, help="default: <results>/plots")
    ap.add_argument("--model", help="only the runs of this model config name")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        raise SystemExit(f"error: results folder {args.results} does not exist")
    out = args.out or args.results / "plots"
    runs = load_runs(args.results, args.model)
    frames = {}
    for name, (frame_fn, md_fn, plot_fn) in FIGURES.items():
        df = frame_fn(runs)
        if df.empty:
            print(f"{name}: no runs for it under {args.results}; skipped")
            continue
        out.mkdir(parents=True, exist_ok=True)
        md = md_fn(df)
        write_atomic(out / f"{name}.csv", df.to_csv(index=False))
        write_atomic(out / f"{name}.md", md)
        with atomic_path(out / f"{name}.png") as png:
            plot_fn(df, png)
        print(md)
        print(f"wrote {out / name}.csv, .md, .png")
        frames[name] = df
    return frames


if __name__ == "__main__":
    main()
