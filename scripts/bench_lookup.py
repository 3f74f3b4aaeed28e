"""Which hop of the lookup by label a short training learns: the stand-in's recipe on a few
datasets only, then, held out, how often the labels name their pictures' colours (first hop)
and how often whole answers are right (both hops), beside the same on training samples.

    python scripts/bench_lookup.py [--datasets ObjectExistence,WebQA] [--steps 400] [--seed 0]
                                   [--samples 60] [--lr 3e-3] [--train-samples 400]

A full build takes thirteen minutes and mixes 29 datasets; this asks one question in about
four (two datasets, 400 steps): is a skill learnt at all, and if not, which hop is missing.
Held out: the scored split (`--samples` per dataset, the scored sizes: 7 to 12 pictures) and
a second copy's training split (unseen samples of the training sizes: 2 to 8 pictures).
Prints one JSON line; deterministic for a seed and the machine's thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from csp.models.adapters import ModelAdapter  # noqa: E402
from milebench.learnable import LABELLED, TRAIN_DIR, generate  # noqa: E402
from standins.diagnose import answer_hits, caption_accuracy, position_shares, whole_share  # noqa: E402
from standins.llava_standin import CHAT_TEMPLATE, Recipe, train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="ObjectExistence,WebQA")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=60, help="held-out samples per dataset")
    ap.add_argument("--train-samples", type=int, default=Recipe.train_samples, help="training samples per dataset")
    ap.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate (cosine decay to 0)")
    args = ap.parse_args(argv)
    names = tuple(args.datasets.split(","))
    unlabelled = [n for n in names if n not in LABELLED]
    if unlabelled:
        ap.error(f"not a labelled dataset: {', '.join(unlabelled)} (choose from {', '.join(LABELLED)})")
    recipe = Recipe(seed=args.seed, steps=args.steps, lr=args.lr, train_samples=args.train_samples, datasets=names)
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "data", samples=args.samples, train=recipe.train_samples, seed=recipe.data_seed)
        unseen = generate(Path(tmp) / "unseen", samples=1, train=args.samples, seed=recipe.data_seed + 1) / TRAIN_DIR
        start = time.perf_counter()
        model, processor, stats = train(recipe, data, log_every=100)
        adapter = ModelAdapter.from_model(model, processor, chat_template=CHAT_TEMPLATE)
        out: dict = {"steps": args.steps, "seed": args.seed, "lr": args.lr, "train_samples": args.train_samples, "train_s": round(time.perf_counter() - start, 1),
                     "final_loss": stats["final_loss"]}
        for name in names:
            hits = answer_hits(adapter, data, name)
            labels, count = caption_accuracy(adapter, data, name)
            out[name] = {"labels_read_their_pictures": round(labels, 3), "labels": count,
                         "first_token": round(position_shares(hits)[0], 3), "whole": round(whole_share(hits), 3),
                         "whole_unseen_short": round(whole_share(answer_hits(adapter, unseen, name)), 3),
                         "whole_trained_on": round(whole_share(answer_hits(adapter, data / TRAIN_DIR, name,
                                                                          limit=args.samples)), 3)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
