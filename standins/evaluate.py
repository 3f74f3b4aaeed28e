"""In-process scores of a stand-in, for checks that the runner's files would make slow.

The runner is the path of record (its files are what the tables read); these functions give
the same MileBench scores for a method on the learnable data without writing run folders, so
a benchmark or a test can ask many small questions: what does each dataset score with the
full cache, with `random` at 0.1, with a method pruning one layer only?

    python -m standins.evaluate [--model models/standin-llava] [--data data/milebench-learnable] [--limit 6]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csp.engine.decode import greedy_generate
from csp.engine.method import KVPruner, LayerKV, Selection
from csp.models.adapters import ModelAdapter, load_adapter
from milebench import catalog
from milebench.data import load_dataset
from milebench.prompt import prepare_sample
from milebench.score import score_predictions
from standins.llava_standin import CHAT_TEMPLATE, MAX_CONTEXT_LEN

MAX_NEW_TOKENS = 16  # configs/model/standin-llava.yaml


@dataclass
class OnlyLayers:
    """`inner` prunes the listed decoder layers; every other layer keeps its whole prompt.
    Which layers' caches carry the evidence: the loss of pruning one layer alone, against
    pruning them all. Only for methods that select layer by layer (not cross-layer ones)."""

    inner: KVPruner
    layers: tuple[int, ...]

    cross_layer = False
    prefill_masking = False

    def __post_init__(self) -> None:
        if getattr(self.inner, "cross_layer", False) or getattr(self.inner, "prefill_masking", False):
            raise ValueError(f"{self.inner.name}: a cross-layer or prefill-masking method cannot prune one layer alone")
        self.name = f"{self.inner.name}@layers{list(self.layers)}"

    def __call__(self, kv: LayerKV) -> Selection:
        return self.inner(kv) if kv.layer_idx in self.layers else Selection.everything(kv)


def load_standin(path: Path | str) -> ModelAdapter:
    return load_adapter("llava", str(path), dtype="float32", device="cpu", attn_implementation="sdpa",
                        chat_template=CHAT_TEMPLATE)


def answers(adapter: ModelAdapter, data_dir: Path | str, name: str, method=None, limit: int | None = None,
            max_context_len: int = MAX_CONTEXT_LEN) -> list[dict]:
    """Greedy answers, one prefill per sample, as the runner gives them on a CPU."""
    dataset = load_dataset(Path(data_dir), name)
    samples = dataset.samples[:limit]
    inputs = []
    for s in samples:
        built, images = prepare_sample(adapter, s, dataset, max_context_len)
        inputs.append(adapter.encode([adapter.format_prompt(built.text)], [images]))
    gen = greedy_generate(adapter, inputs, method, max_new_tokens=MAX_NEW_TOKENS)
    return [{"sample_id": s.sample_id, "pred_response": adapter.decode(t)} for s, t in zip(samples, gen.tokens)]


def dataset_scores(adapter: ModelAdapter, data_dir: Path | str, method=None,
                   datasets: Sequence[str] = catalog.NAMES, limit: int | None = None) -> dict[str, float]:
    """Each dataset's MileBench score (x 100) with `method` pruning (None: the full cache)."""
    return {name: 100 * score_predictions(load_dataset(Path(data_dir), name),
                                          answers(adapter, data_dir, name, method, limit)).value
            for name in datasets}


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def main(argv: Sequence[str] | None = None) -> None:
    from csp.engine.registry import build_method
    from milebench.learnable import DEFAULT_DIR
    from standins.llava_standin import default_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_folder(0))
    ap.add_argument("--data", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--methods", default="full,random,csp,snapkv", help="comma-separated, at --budget")
    ap.add_argument("--budget", type=float, default=0.1)
    args = ap.parse_args(argv)
    adapter = load_standin(args.model)
    for m in args.methods.split(","):
        start = time.perf_counter()
        method = None if m == "full" else build_method(m, budget=args.budget, recent_ratio=args.budget / 2)
        got = dataset_scores(adapter, args.data, method, limit=args.limit)
        groups = {g: sum(got[d.name] for d in catalog.in_group(g)) / len(catalog.in_group(g)) for g in catalog.GROUPS}
        print(f"{m:10s} mean {mean(got):5.1f} | " + " ".join(f"{g} {v:.0f}" for g, v in groups.items())
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        print("   " + " ".join(f"{k[:10]}={v:.0f}" for k, v in got.items()), flush=True)


if __name__ == "__main__":
    main()
