"""Runner throughput: samples/s of `milebench.run` on the tiny model with the catalog's batch
size (`batch_size=auto`, 24 on most datasets) against one sample per batch, on the same samples.

    .venv/bin/python scripts/bench_runner.py [--datasets WebQA,TQA,DocVQA] [--samples 24]
        [--max-new-tokens 32] [--method full] [--repeats 3]

The model is loaded once and handed to both runs, so the figures are the runner's loop:
prompt building, image loading, encoding, generation, durable appends and scoring. Data is a
generated copy with --samples per dataset under data/bench-runner-<n>.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from milebench.runner.models import adapter_from_config  # noqa: E402
from milebench.files import PRED_FILE  # noqa: E402
from milebench.runner.loop import run  # noqa: E402
from milebench.synthetic import ensure_synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="WebQA,TQA,DocVQA", help="comma-separated; batch size 24 in the catalog")
    ap.add_argument("--samples", type=int, default=24, help="samples per dataset in the generated copy")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--method", default="full")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch size; medians are reported")
    args = ap.parse_args()

    data_dir = ensure_synthetic(ROOT / "data" / f"bench-runner-{args.samples}", samples=args.samples)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        base = compose("config", overrides=[f"method={args.method}", f"datasets=[{args.datasets}]",
                                            f"data_dir={data_dir}", f"max_new_tokens={args.max_new_tokens}"])
    adapter = adapter_from_config(base.model, "float32", "cpu", str(base.attn_implementation))

    def loaded(*_a, **_k):
        return adapter

    # warm-up: one tiny run so that lazy initialisation is not billed to the first measurement
    with tempfile.TemporaryDirectory() as out:
        warm = base.copy()
        warm.output_dir, warm.limit, warm.max_new_tokens = out, 1, 2
        run(warm, method_name=args.method, load_adapter=loaded)

    walls: dict = {"auto": [], 1: []}
    results = {}
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
        for bs in ("auto", 1):
            with tempfile.TemporaryDirectory() as out:
                cfg = base.copy()
                cfg.output_dir, cfg.batch_size = out, bs
                t0 = time.perf_counter()
                run_dir = run(cfg, method_name=args.method, load_adapter=loaded)
                walls[bs].append(time.perf_counter() - t0)
                preds = {d: json.loads((run_dir / d / PRED_FILE).read_text()) for d in args.datasets.split(",")}
            n = sum(len(p) for p in preds.values())
            results[bs] = (n, statistics.median(walls[bs]), preds)
    for bs, (n, wall, _) in results.items():
        print(f"batch_size={bs!s:>4}: {n} samples in {wall:6.1f} s (median of {args.repeats}) = "
              f"{n / wall:6.2f} samples/s", flush=True)
    (n_a, w_a, p_a), (n_1, w_1, p_1) = results["auto"], results[1]
    same = sum(a["pred_response"] == b["pred_response"] for d in p_a for a, b in zip(p_a[d], p_1[d]))
    print(f"speed-up auto vs 1: {(n_a / w_a) / (n_1 / w_1):.2f}x (target >= 2x); "
          f"identical predictions: {same}/{n_a}; max_new_tokens={args.max_new_tokens}, method={args.method}")


if __name__ == "__main__":
    main()
