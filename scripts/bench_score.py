"""How long scoring a full MileBench run takes: all 29 datasets at their real sizes (6,440
predictions), on one CPU core.

    .venv/bin/python scripts/bench_score.py [--out DIR] [--seed 0] [--repeat 1]

Gold data and predictions are generated (JSON only; scoring never opens images). The answers
mix the shapes real models produce: bare letters, "(B) option", prose naming the option,
empty answers, and open-ended answers from a few words to about 380 words (512 tokens), so
the ROUGE-L sets cost what they cost on real runs. Target: <= 20 s.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from milebench import catalog  # noqa: E402
from milebench.files import PRED_FILE  # noqa: E402
from milebench.score import score_run  # noqa: E402

WORDS = ("the a man woman car red blue left right moves picks up object table near far small large "
         "door opens closes turns walks towards cup plate white black green person camera image shows "
         "there is are two three four changed difference between scene view block cube sphere").split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def gold_sample(rng: random.Random, info: catalog.DatasetInfo, i: int) -> dict:
    inst: dict = {"context": "{image#1}{image#2}Question?", "images_path": ["1.jpg", "2.jpg"],
                  "combined_1_images": [f"{i}.jpg"]}
    if info.name == "GPR1200":
        inst["choice_list"] = [f"image{k}" for k in range(1, rng.randint(5, 12) + 1)]
        response = rng.choice(inst["choice_list"])
    elif info.scoring == "choice":
        inst["choice_list"] = [sentence(rng, 1, 6) for _ in range(4)]
        response = rng.choice(inst["choice_list"])
    elif info.scoring == "needle":
        response = str(rng.randint(1_000_000, 9_999_999))
    elif info.scoring == "substring":
        response = sentence(rng, 1, 3)
    else:
        response = sentence(rng, 6, 30) + ". " + sentence(rng, 3, 12)
    level = rng.choice(("Few", "Medium", "Many"))
    return {"sample_id": i, "task_instruction_id": 0, "image_quantity_level": level,
            "task_instance": inst, "response": response}


def prediction(rng: random.Random, info: catalog.DatasetInfo, sample: dict) -> str:
    gold = sample["response"]
    choices = sample["task_instance"].get("choice_list")
    r = rng.random()
    if choices is not None:
        letters = "ABCDEFGHIJKL"
        k = rng.randrange(len(choices))
        if r < 0.05:
            return ""
        if r < 0.35:
            return letters[k]
        if r < 0.6:
            return f"({letters[k]}) {choices[k]}"
        if r < 0.85:
            return f"The answer is {choices[k]}."
        return sentence(rng, 5, 60)
    if info.scoring == "needle":
        return f"The special magic number is {gold if r < 0.3 else rng.randint(0, 10**7)}. " + sentence(rng, 0, 40)
    if info.scoring == "substring":
        return (gold + " " if r < 0.4 else "") + sentence(rng, 2, 30)
    if r < 0.7:
        return sentence(rng, 3, 40)
    return ". ".join(sentence(rng, 10, 60) for _ in range(rng.randint(2, 7)))  # long, up to ~380 words


def generate(root: Path, seed: int) -> tuple[Path, Path, int]:
    rng = random.Random(seed)
    data, run = root / "data", root / "run"
    n = 0
    for info in catalog.DATASETS:
        samples = [gold_sample(rng, info, i) for i in range(info.num_samples)]
        doc = {"meta_data": {"dataset": info.name, "split": "test", "num_sample": len(samples),
                             "task_instruction": ["Answer."], "question_type": info.question_type},
               "data": samples}
        (data / info.name).mkdir(parents=True)
        (data / info.name / f"{info.name}.json").write_text(json.dumps(doc))
        preds = [{"sample_id": s["sample_id"], "image": [], "question": "q", "gt_response": s["response"],
                  "gen_model_id": "bench", "pred_response": prediction(rng, info, s), "gen_kwargs": {}}
                 for s in samples]
        (run / info.name).mkdir(parents=True)
        (run / info.name / PRED_FILE).write_text(json.dumps(preds))
        n += len(preds)
    return data, run, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="keep the generated data and run here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="time the scoring this many times")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data, run, n = generate(root, args.seed)
        print(f"generated {n} predictions over {len(catalog.DATASETS)} datasets in {root}")
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            results = score_run(run, data)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"scored {len(results)} datasets, {n} predictions: {wall:.2f} s wall, {cpu:.2f} s CPU "
                  f"on one core (target <= 20 s)")
        first = list(results.values())[:4]
        print("scores x100: " + ", ".join(f"{r.dataset} {100 * r.value:.1f}" for r in first) + ", ...")


if __name__ == "__main__":
    main()
