"""The proxy study's targets and findings, from the runs of scripts/proxy.sh (two seeds).

    python scripts/bench_proxy.py [--results results/proxy] [--no-run]

Runs what is missing first: the full sweep of the default model (`bash scripts/proxy.sh`)
and budgets 0.1 and 0.2 of a second training seed (`PROXY_SEED=1 PROXY_BUDGETS="0.1 0.2"`).
Then prints, and writes to <results>/bench_proxy.md and .json:
- target 1: full-cache accuracy >= 90 on every multiple-choice proxy task (held-out samples);
- target 2: at budget 0.1 the best method beats `random` by >= 15 points (mean over tasks);
- target 3: the methods' ranking at 0.1 is stable across the two training seeds (Spearman and
  Kendall rank correlations of their mean scores);
- CSP against H2O, SnapKV, ReCo and LOOK-M at 0.1 and 0.2: does the paper's claim (CSP best
  among them at low budget) hold on the proxy?
- do the label-free fidelity columns (KL, top-1 agreement) rank the methods as accuracy does?
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from milebench.files import write_atomic  # noqa: E402
from milebench.tables import method_display  # noqa: E402
from proxy_report import DEFAULT_RESULTS, MC, SHORT, proxy_frame  # noqa: E402

SEEDS = {0: "proxy-llava", 1: "proxy-llava-seed1"}
PAPER_RIVALS = ("h2o", "snapkv", "reco", "lookm-a", "lookm-w", "lookm-p", "lookm-tp-a", "lookm-tp-w", "lookm-tp-p")
MC_TARGET, GAP_TARGET = 90.0, 15.0


def ensure_runs(results: Path) -> None:
    """Run the sweeps a seed still lacks (each command resumes what is already there)."""
    for seed, budgets in ((0, None), (1, "0.1 0.2")):
        df = proxy_frame(results, SEEDS[seed])
        needed = {0.1, 0.2} if budgets else {0.05, 0.1, 0.2, 0.5, 1.0}
        if not df.empty and needed <= set(df.budget.round(6)) and "full" in set(df.method):
            continue
        env = dict(os.environ, PROXY_SEED=str(seed), PROXY_RESULTS=str(results))
        if budgets:
            env["PROXY_BUDGETS"] = budgets
        print(f"running the proxy sweep for seed {seed} ({budgets or 'all budgets'}) ...", flush=True)
        subprocess.run(["bash", str(ROOT / "scripts" / "proxy.sh")], env=env, check=True, cwd=ROOT)


def honours_budget(method: str) -> bool:
    """Methods with their own budget (the full cache, FastV's fixed share of image tokens)
    keep more than `budget` of the prompt; they are listed, never ranked against the rest."""
    from csp.engine.registry import method_info

    return method_info(method).budget_rule != "own"


def at(df: pd.DataFrame, budget: float, value: str = "mean") -> pd.Series:
    """method -> value at one budget, for the methods that keep `budget` of the prompt."""
    block = df[df.method.map(honours_budget) & (df.budget.round(6) == round(budget, 6))]
    return block.set_index("method")[value]


def rank_agreement(a: pd.Series, b: pd.Series) -> dict[str, float]:
    common = a.index.intersection(b.index)
    if len(common) < 3:
        return {"n": len(common), "spearman": float("nan"), "kendall": float("nan")}
    x, y = a[common].astype(float), b[common].astype(float)
    return {"n": len(common), "spearman": float(stats.spearmanr(x, y).statistic),
            "kendall": float(stats.kendalltau(x, y).statistic)}


def analyse(results: Path) -> dict:
    frames = {seed: proxy_frame(results, name) for seed, name in SEEDS.items()}
    out: dict = {"seeds": {}}
    for seed, df in frames.items():
        if df.empty:
            continue
        full = df[df.method == "full"].iloc[0]
        s01 = at(df, 0.1)
        entry = {
            "full_mc": {SHORT[d]: float(full[SHORT[d]]) for d in MC},
            "full_mean": float(full["mean"]),
            "at_0.1": {m: float(v) for m, v in s01.sort_values(ascending=False).items()},
        }
        entry["target1_ok"] = all(v >= MC_TARGET for v in entry["full_mc"].values())
        if "random" in s01.index:
            best = s01.drop("random").idxmax()
            entry["best_at_0.1"] = best
            entry["gap_best_minus_random"] = float(s01[best] - s01["random"])
            entry["target2_ok"] = entry["gap_best_minus_random"] >= GAP_TARGET
        for budget in (0.1, 0.2):
            scores = at(df, budget)
            if "csp" not in scores.index:
                continue
            rivals = {m: float(scores[m]) for m in PAPER_RIVALS if m in scores.index}
            better = [m for m, v in rivals.items() if v > scores["csp"]]
            entry[f"csp_at_{budget}"] = {"csp": float(scores["csp"]), "rivals": rivals, "beaten_by": better,
                                         "claim_holds": not better}
            fid = {}
            for col, sign in (("KL", -1.0), ("top-1 %", 1.0)):
                f = at(df, budget, col)
                if f.notna().sum() >= 3:
                    fid[col] = rank_agreement(sign * f.dropna(), scores)
            entry[f"fidelity_vs_accuracy_at_{budget}"] = fid
        out["seeds"][seed] = entry
    if all(not f.empty for f in frames.values()):
        out["ranking_0.1_seed0_vs_seed1"] = rank_agreement(at(frames[0], 0.1), at(frames[1], 0.1))
        out["ranking_0.2_seed0_vs_seed1"] = rank_agreement(at(frames[0], 0.2), at(frames[1], 0.2))
    return out


def _f(v: float, nd: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def report(res: dict) -> str:
    lines = ["# Proxy benchmark: targets and findings", ""]
    for seed, e in res["seeds"].items():
        lines += [f"## seed {seed} ({SEEDS[int(seed)]})", ""]
        mc = ", ".join(f"{k} {_f(v)}" for k, v in e["full_mc"].items())
        lines.append(f"- target 1, full cache >= {MC_TARGET:g} on every multiple-choice task: "
                     f"{'MET' if e['target1_ok'] else 'MISSED'} ({mc}; mean over all six {_f(e['full_mean'])})")
        if "gap_best_minus_random" in e:
            lines.append(f"- target 2, at budget 0.1 best - random >= {GAP_TARGET:g}: "
                         f"{'MET' if e['target2_ok'] else 'MISSED'} (best {method_display(e['best_at_0.1'])} "
                         f"{_f(e['at_0.1'][e['best_at_0.1']])}, random {_f(e['at_0.1']['random'])}, gap "
                         f"{_f(e['gap_best_minus_random'])})")
        ranking = ", ".join(f"{method_display(m)} {_f(v)}" for m, v in e["at_0.1"].items())
        lines.append(f"- mean score at 0.1, best first: {ranking}")
        for budget in (0.1, 0.2):
            c = e.get(f"csp_at_{budget}")
            if not c:
                continue
            rivals = ", ".join(f"{method_display(m)} {_f(v)}" for m, v in c["rivals"].items())
            verdict = ("holds: CSP is best among them" if c["claim_holds"] else
                       "does NOT hold: beaten by " + ", ".join(method_display(m) for m in c["beaten_by"]))
            lines.append(f"- budget {budget:g}: CSP {_f(c['csp'])} vs {rivals}; the paper's claim {verdict}")
            fid = e.get(f"fidelity_vs_accuracy_at_{budget}", {})
            if fid:
                parts = [f"{col}: Spearman {_f(r['spearman'], 2)}, Kendall {_f(r['kendall'], 2)} (n={r['n']})"
                         for col, r in fid.items()]
                lines.append(f"  fidelity ranks vs accuracy ranks at {budget:g} ({'; '.join(parts)})")
        lines.append("")
    for key in ("ranking_0.1_seed0_vs_seed1", "ranking_0.2_seed0_vs_seed1"):
        if key in res:
            r = res[key]
            lines.append(f"- target 3, {key.replace('_', ' ')}: Spearman {_f(r['spearman'], 2)}, "
                         f"Kendall {_f(r['kendall'], 2)} over {r['n']} methods")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--no-run", action="store_true", help="only read what is there")
    args = ap.parse_args(argv)
    if not args.no_run:
        ensure_runs(args.results)
    res = analyse(args.results)
    if not res["seeds"]:
        print(f"error: no proxy runs under {args.results}", file=sys.stderr)
        return 2
    text = report(res)
    print(text)
    write_atomic(args.results / "bench_proxy.md", text)
    write_atomic(args.results / "bench_proxy.json", json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.results / 'bench_proxy.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
