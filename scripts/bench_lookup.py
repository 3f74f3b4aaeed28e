"""Which hop of the lookup by label a short training learns: the stand-in's recipe on a few
datasets only, then, held out, how often the labels name their pictures' colours (first hop)
and how often whole answers are right (both hops), beside the same on training samples.

    python scripts/bench_lookup.py [--datasets ObjectExistence,WebQA] [--steps 400] [--seed 0]
                                   [--samples 60] [--lr 3e-3] [--train-samples 400]
    python scripts/bench_lookup.py --picker [--samples 60]   # the picker alone, every dataset

A full build takes 11 to 13 minutes and mixes 29 datasets; this asks one question in about
four (two datasets, 400 steps): is a skill learnt at all, and if not, which hop is missing.
Held out: the scored split (`--samples` per dataset, the scored sizes: 7 to 12 pictures) and
a second copy's training split (unseen samples of the training sizes: 2 to 8 pictures),
both also by the sample's number of pictures ([right, samples] per count): whether the
answer is found among few labels only, or among as many as training shows. Beside them, the
line to beat: an option picker that sees only which colours the pictures show
(`shown_colours_picker`; the options alone give 0.25); with `--picker`, that picker alone
on every dataset with colour-pair options, scored split, no training.
Prints one JSON line; deterministic for a seed and the machine's thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from csp.models.adapters import ModelAdapter  # noqa: E402
from milebench import catalog  # noqa: E402
from milebench.data import IMAGES_DIR, load_dataset  # noqa: E402
from milebench.learnable import ANSWER_LINK, COLOURS, LABELLED, TRAIN_DIR, generate  # noqa: E402
from standins.diagnose import answer_hits, caption_accuracy, position_shares, whole_share  # noqa: E402
from standins.llava_standin import CHAT_TEMPLATE, Recipe, patch_classes, train  # noqa: E402

PALETTE = ("ground", "grey", *COLOURS)  # patch_classes' classes


def by_pictures(hits: list[tuple[torch.Tensor, torch.Tensor]], data_dir: Path, name: str) -> dict[int, list[int]]:
    """Whole answers right and samples (`answer_hits` of `name` in `data_dir`), per number of
    pictures in the sample."""
    samples = load_dataset(data_dir, name).samples
    out: dict[int, list[int]] = {}
    for sample, hit in zip(samples, hits, strict=True):
        row = out.setdefault(len(sample.images), [0, 0])
        row[0] += int(hit[1].all())
        row[1] += 1
    return dict(sorted(out.items()))


def shown_colours_picker(data_dir: Path, name: str) -> float | None:
    """The mean score of picking at random among the options whose colours all appear in the
    sample's pictures (read from the pixels): what an answer gets without the lookup asked.
    None where the options are not colour pairs (free-form sets, GPR1200)."""
    dataset = load_dataset(data_dir, name)
    link = ANSWER_LINK["pair"]
    if any(s.choices is None or link not in s.choices[0] for s in dataset.samples):
        return None
    total = 0.0
    for sample in dataset.samples:
        pictures = []
        for p in sample.images:
            with Image.open(dataset.root / IMAGES_DIR / p) as im:
                pictures.append(im.convert("RGB"))
        shown = {PALETTE[int(c)] for c in patch_classes(pictures).flatten().unique()}
        fits = [o for o in sample.choices if set(o.split(link)) <= shown]
        total += (sample.response in fits) / max(1, len(fits))
    return round(total / len(dataset.samples), 3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="ObjectExistence,WebQA")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=60, help="held-out samples per dataset")
    ap.add_argument("--train-samples", type=int, default=Recipe.train_samples, help="training samples per dataset")
    ap.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate (cosine decay to 0)")
    ap.add_argument("--picker", action="store_true", help="only the shown-colours picker, every dataset, no training")
    args = ap.parse_args(argv)
    if args.picker:
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(Path(tmp) / "data", samples=args.samples, train=1, seed=Recipe.data_seed)
            scores = {name: shown_colours_picker(data, name) for name in catalog.NAMES}
        print(json.dumps({"samples": args.samples, "shown_colours_picker":
                          {name: score for name, score in scores.items() if score is not None}}), flush=True)
        return
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
        out: dict = {"steps": args.steps, "seed": args.seed, "lr": args.lr, "train_samples": args.train_samples,
                     "train_s": round(time.perf_counter() - start, 1), "final_loss": stats["final_loss"]}
        for name in names:
            hits, short = answer_hits(adapter, data, name), answer_hits(adapter, unseen, name)
            labels, count = caption_accuracy(adapter, data, name)
            out[name] = {"labels_read_their_pictures": round(labels, 3), "labels": count,
                         "first_token": round(position_shares(hits)[0], 3), "whole": round(whole_share(hits), 3),
                         "whole_unseen_short": round(whole_share(short), 3),
                         "whole_by_pictures": by_pictures(hits, data, name),
                         "whole_unseen_short_by_pictures": by_pictures(short, unseen, name),
                         "shown_colours_picker": shown_colours_picker(data, name),
                         "shown_colours_picker_unseen_short": shown_colours_picker(unseen, name),
                         "whole_trained_on": round(whole_share(answer_hits(adapter, data / TRAIN_DIR, name,
                                                                          limit=args.samples)), 3)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
