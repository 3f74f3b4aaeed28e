"""Build the score tables of every run under a results folder, from its files alone.

    python eval_score.py [--results results] [--data-dir DATA_DIR]

Writes `eval_score.md`, `table1.md`, `table3.md` and the same tables as CSV into the results
folder. With `--data-dir`, datasets whose pred.json has no (or an older) eval.json are scored
first with `milebench.score`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from milebench.files import CONFIG_FILE, ERRORS_FILE, EVAL_FILE, PRED_FILE
from milebench.score import ScoreError, score_dataset
from milebench.tables import build_tables, collect_run, find_runs


def ran_a_subset(run: Path) -> bool:
    """A run made with `limit`, or that skipped bad samples, predicted part of each dataset."""
    config = run / CONFIG_FILE
    limited = config.is_file() and OmegaConf.load(config).get("limit") is not None
    return limited or (run / ERRORS_FILE).is_file()


def score_stale(runs: Sequence[Path], data_dir: Path) -> int:
    """Score every dataset folder whose eval.json is missing or older than its pred.json."""
    n = 0
    for run in runs:
        subset = ran_a_subset(run)
        for pred in sorted(run.glob(f"*/{PRED_FILE}")):
            ev = pred.with_name(EVAL_FILE)
            if not ev.is_file() or ev.stat().st_mtime < pred.stat().st_mtime:
                score_dataset(pred.parent, data_dir, predicted_only=subset)
                n += 1
    return n


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="folder of <model>/<run>/<D>/")
    ap.add_argument("--data-dir", type=Path, help="score unscored predictions against this data first")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: results folder {args.results} does not exist", file=sys.stderr)
        return 2
    try:
        paths = find_runs(args.results)
        if args.data_dir is not None:
            n = score_stale(paths, args.data_dir)
            print(f"scored {n} dataset(s)")
        runs = [collect_run(p) for p in paths]
        written = build_tables(args.results, runs)
    except (ScoreError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(runs)} run(s): " + ", ".join(r.meta.label for r in runs))
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
