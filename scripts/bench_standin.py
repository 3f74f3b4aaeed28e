"""The learnable MileBench's targets and findings, from the budget study's runs (two seeds).

    python scripts/bench_standin.py [--results results/study] [--no-run] [--skip-layers]

Runs what is missing first: the budget study of the default stand-in at budgets 0.1 and 0.2
(`STUDY_BUDGETS="0.1 0.2" bash scripts/study.sh`) and the same for a second training seed
(`STUDY_SEED=1`). Then prints, and writes to <results>/bench_standin.md and .json:
- target 1: full cache >= 80 on every task group's multiple-choice datasets (their mean), and
  the mean over the 29 datasets >= 3x the mean of answering at random (a random option for
  multiple choice, another sample's gold answer for the free-form sets: the answers' own
  distribution, averaged over 50 draws);
- target 2: at budget 0.1, `random` at least 20 points below the full cache (mean over the 29
  datasets), and the best attention-guided method within 10 points of it;
- target 3: the methods' ranking at 0.1 and at 0.2 is stable across the two training seeds
  (Spearman >= 0.8; Kendall beside it);
- target 4 (seed 0, in process, `standins.evaluate.OnlyLayers`): `random` at 0.1 pruning one
  decoder layer alone loses at most half of what pruning every layer loses;
- where each method stands per task group at 0.1 and 0.2, and whether the paper's claim (CSP
  above H2O, SnapKV, ReCo and the LOOK-M variants at a low budget) holds here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from milebench import catalog  # noqa: E402
from milebench.files import write_atomic  # noqa: E402
from milebench.tables import method_display  # noqa: E402
from study_report import DEFAULT_RESULTS, GROUPS, MC, study_frame  # noqa: E402

SEEDS = {0: "standin-llava", 1: "standin-llava-seed1"}
PAPER_RIVALS = ("h2o", "snapkv", "reco", "lookm-a", "lookm-w", "lookm-p", "lookm-tp-a", "lookm-tp-w", "lookm-tp-p")
# methods that choose by attention (the rest: random, StreamingLLM's positions, K-Norm's key norms)
ATTENTION_BLIND = ("random", "streamingllm", "knorm")
MC_TARGET, CHANCE_FACTOR, RANDOM_GAP, BEST_GAP, SPEARMAN, LAYER_SHARE = 80.0, 3.0, 20.0, 10.0, 0.8, 0.5
BUDGETS = (0.1, 0.2)


def ensure_runs(results: Path) -> None:
    """Run the budget study a seed still lacks (each run resumes what is already there)."""
    for seed, name in SEEDS.items():
        df = study_frame(results, name)
        if not df.empty and set(BUDGETS) <= set(df.budget.round(6)) and "full" in set(df.method):
            continue
        env = dict(os.environ, STUDY_SEED=str(seed), STUDY_RESULTS=str(results),
                   STUDY_BUDGETS=" ".join(f"{b:g}" for b in BUDGETS))
        print(f"running the budget study for seed {seed} at {BUDGETS} ...", flush=True)
        subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], env=env, check=True, cwd=ROOT)


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


def chance_scores(data_dir: Path, draws: int = 50, seed: int = 0) -> dict[str, float]:
    """Each dataset's expected MileBench score when answering at random: a uniformly drawn
    option for multiple choice, the gold answer of a uniformly drawn sample of the same
    dataset otherwise; scored by the scorer itself, averaged over `draws`."""
    from milebench.data import load_dataset
    from milebench.score import score_predictions

    rng = random.Random(seed)
    out = {}
    for name in catalog.NAMES:
        dataset = load_dataset(data_dir, name)
        total = 0.0
        for _ in range(draws):
            preds = [{"sample_id": s.sample_id,
                      "pred_response": rng.choice(s.choices) if s.choices else rng.choice(dataset.samples).response}
                     for s in dataset.samples]
            total += score_predictions(dataset, preds).value
        out[name] = 100 * total / draws
    return out


def layer_shares(model_dir: Path, data_dir: Path, budget: float = 0.1, limit: int | None = None) -> dict:
    """The loss (full minus pruned, mean score over the 29 datasets) of `random` at `budget`
    pruning each decoder layer alone, as a share of its loss pruning every layer."""
    from csp.engine.registry import build_method
    from standins.evaluate import OnlyLayers, dataset_scores, load_standin, mean

    adapter = load_standin(model_dir)
    method = build_method("random", budget=budget, recent_ratio=budget / 2)
    full = mean(dataset_scores(adapter, data_dir, None, limit=limit))
    every = mean(dataset_scores(adapter, data_dir, method, limit=limit))
    layers = adapter.model.config.text_config.num_hidden_layers
    alone = {layer: mean(dataset_scores(adapter, data_dir, OnlyLayers(method, (layer,)), limit=limit))
             for layer in range(layers)}
    loss = full - every
    shares = {layer: (full - v) / loss if loss > 0 else float("nan") for layer, v in alone.items()}
    return {"full": full, "every_layer": every, "one_layer": alone, "share": shares,
            "max_share": max(shares.values()), "limit": limit}


def analyse(results: Path, chance: dict[str, float], layers: dict | None) -> dict:
    frames = {seed: study_frame(results, name) for seed, name in SEEDS.items()}
    out: dict = {"seeds": {}, "chance": chance}
    chance_mean = sum(chance.values()) / len(chance)
    for seed, df in frames.items():
        if df.empty:
            continue
        full = df[df.method == "full"].iloc[0]
        mc_groups = {g: [d for d in MC if catalog.get(d).group == g] for g in GROUPS}
        full_mc = {g: sum(float(full[d]) for d in names) / len(names) for g, names in mc_groups.items() if names}
        entry = {"full_mc_by_group": full_mc, "full_mean": float(full["mean"]), "chance_mean": chance_mean,
                 "full_by_group": {g: float(full[g]) for g in GROUPS}}
        entry["target1_ok"] = (all(v >= MC_TARGET for v in full_mc.values())
                               and entry["full_mean"] >= CHANCE_FACTOR * chance_mean)
        for budget in BUDGETS:
            scores = at(df, budget)
            if scores.empty:
                continue
            entry[f"at_{budget}"] = {m: float(v) for m, v in scores.sort_values(ascending=False).items()}
            entry[f"groups_at_{budget}"] = {
                m: {g: float(df[(df.method == m) & (df.budget.round(6) == budget)][g].iloc[0]) for g in GROUPS}
                for m in scores.index}
            if "csp" in scores.index:
                rivals = {m: float(scores[m]) for m in PAPER_RIVALS if m in scores.index}
                better = [m for m, v in rivals.items() if v > scores["csp"]]
                entry[f"csp_at_{budget}"] = {"csp": float(scores["csp"]), "rivals": rivals, "beaten_by": better,
                                             "claim_holds": not better}
        s01 = at(df, 0.1)
        if "random" in s01.index:
            guided = s01.drop([m for m in ATTENTION_BLIND if m in s01.index])
            best = guided.idxmax()
            entry.update(best_at_01=best, random_gap=float(full["mean"] - s01["random"]),
                         best_gap=float(full["mean"] - s01[best]))
            entry["target2_ok"] = entry["random_gap"] >= RANDOM_GAP and entry["best_gap"] <= BEST_GAP
        out["seeds"][seed] = entry
    if all(not f.empty for f in frames.values()):
        for budget in BUDGETS:
            out[f"ranking_{budget}"] = rank_agreement(at(frames[0], budget), at(frames[1], budget))
        out["target3_ok"] = all(round(out[f"ranking_{b}"]["spearman"], 9) >= SPEARMAN for b in BUDGETS)
    if layers is not None:
        out["layers"] = layers
        out["target4_ok"] = layers["max_share"] <= LAYER_SHARE
    return out


def _f(v: float | None, nd: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else "MET" if flag else "MISSED"


def report(res: dict) -> str:
    lines = ["# Learnable MileBench: targets and findings", ""]
    for seed, e in res["seeds"].items():
        lines += [f"## seed {seed} ({SEEDS[int(seed)]})", ""]
        mc = ", ".join(f"{g} {_f(v)}" for g, v in e["full_mc_by_group"].items())
        lines.append(f"- target 1: {_ok(e['target1_ok'])}. Full cache on the multiple-choice datasets by group "
                     f"(>= {MC_TARGET:g}): {mc}. Mean over the 29 datasets {_f(e['full_mean'])} against "
                     f"{_f(e['chance_mean'])} answering at random ({_f(e['full_mean'] / e['chance_mean'], 2)}x, "
                     f">= {CHANCE_FACTOR:g}x wanted)")
        lines.append("- full cache by task group: " + ", ".join(f"{g} {_f(v)}" for g, v in e["full_by_group"].items()))
        if "random_gap" in e:
            lines.append(f"- target 2: {_ok(e['target2_ok'])}. At 0.1 `random` is {_f(e['random_gap'])} below the "
                         f"full cache (>= {RANDOM_GAP:g} wanted); the best attention-guided method, "
                         f"{method_display(e['best_at_01'])}, is {_f(e['best_gap'])} below (<= {BEST_GAP:g} wanted)")
        for budget in BUDGETS:
            if f"at_{budget}" not in e:
                continue
            ranking = ", ".join(f"{method_display(m)} {_f(v)}" for m, v in e[f"at_{budget}"].items())
            lines.append(f"- mean score at {budget:g}, best first: {ranking}")
            c = e.get(f"csp_at_{budget}")
            if c:
                verdict = ("holds: CSP is above every one of them" if c["claim_holds"] else
                           "does NOT hold: above CSP are " + ", ".join(method_display(m) for m in c["beaten_by"]))
                lines.append(f"  the paper's claim at {budget:g} (CSP {_f(c['csp'])} against H2O, SnapKV, ReCo, "
                             f"LOOK-M) {verdict}")
        for budget in BUDGETS:
            groups = e.get(f"groups_at_{budget}")
            if not groups:
                continue
            lines += ["", f"Per task group at {budget:g} (x 100):", "",
                      "| method | " + " | ".join(GROUPS) + " |", "|---" * (len(GROUPS) + 1) + "|"]
            order = sorted(groups, key=lambda m: -e[f"at_{budget}"][m])
            lines += [f"| {method_display(m)} | " + " | ".join(_f(groups[m][g]) for g in GROUPS) + " |" for m in order]
        lines.append("")
    for budget in BUDGETS:
        r = res.get(f"ranking_{budget}")
        if r:
            lines.append(f"- target 3 at {budget:g}: Spearman {_f(r['spearman'], 2)} (>= {SPEARMAN:g} wanted), "
                         f"Kendall {_f(r['kendall'], 2)}, over {r['n']} methods, seed 0 against seed 1")
    if "target3_ok" in res:
        lines.append(f"- target 3: {_ok(res['target3_ok'])}")
    if "layers" in res:
        lay = res["layers"]
        shares = ", ".join(f"layer {k}: {_f(100 * v, 0)}%" for k, v in lay["share"].items())
        lines.append(f"- target 4: {_ok(res['target4_ok'])}. `random` at 0.1, full {_f(lay['full'])}, every layer "
                     f"pruned {_f(lay['every_layer'])}; one layer alone loses this share of that: {shares} "
                     f"(<= {100 * LAYER_SHARE:g}% wanted; {lay['limit'] or 'all'} samples per dataset)")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from milebench.learnable import DEFAULT_DIR
    from standins.llava_standin import default_folder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--data", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--no-run", action="store_true", help="only read what is there")
    ap.add_argument("--skip-layers", action="store_true", help="skip target 4 (five in-process passes)")
    ap.add_argument("--layer-limit", type=int, default=None, help="samples per dataset for target 4")
    args = ap.parse_args(argv)
    if not args.no_run:
        ensure_runs(args.results)
    start = time.perf_counter()
    layers = None if args.skip_layers else layer_shares(default_folder(0), args.data, limit=args.layer_limit)
    res = analyse(args.results, chance_scores(args.data), layers)
    if not res["seeds"]:
        print(f"error: no study runs under {args.results}", file=sys.stderr)
        return 2
    text = report(res)
    print(text)
    write_atomic(args.results / "bench_standin.md", text)
    write_atomic(args.results / "bench_standin.json", json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.results / 'bench_standin.md'} and .json ({time.perf_counter() - start:.0f} s of analysis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
