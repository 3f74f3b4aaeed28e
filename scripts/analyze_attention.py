"""Intra- vs cross-modality attention, per layer (the paper's Figures 1, 6 and 7).

    python scripts/analyze_attention.py                                   # tiny LLaVA, generated data
    python scripts/analyze_attention.py --model llava-1.5-7b --model-path /models/llava-1.5-7b-hf \
        --datasets T-2,S-4 --data-dir data/MileBench --limit 20 --device cuda --dtype float16

For each sample, the prompt (built exactly as the benchmark run builds it) goes through one
prefill in which `csp.analysis.attention_stats.AttentionRecorder` reads every layer's causal softmax
attention weights and splits them into intra-modality pairs (text->text, image->image) and
cross-modality pairs (text->image, image->text). Per layer we estimate both densities with a
Gaussian KDE on the log10 of the weights and take the Jensen-Shannon divergence between them
(natural log, in [0, ln 2 = 0.693]).
Writes <out>/js.csv (per dataset and pooled, per layer), <out>/kde.csv (pooled densities on
a grid, per layer), <out>/attention.md and <out>/attention.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from csp.analysis.attention_stats import AttentionRecorder, kde_js, to_log10  # noqa: E402
from milebench.files import atomic_path, write_atomic  # noqa: E402

MODEL_CONFIGS = ROOT / "configs" / "model"
POOLED = "all"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llava", help="a configs/model/<name>.yaml")
    p.add_argument("--model-path", help="override the model config's path (a local checkpoint)")
    p.add_argument("--datasets", default="T-2,S-4", help="names and task groups, comma-separated, or all")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "milebench-synthetic",
                   help="MileBench data (the default generated copy is made when absent)")
    p.add_argument("--limit", type=int, default=3, help="samples per dataset (the first ones)")
    p.add_argument("--max-per-layer", type=int, default=20000, help="weights kept per layer, kind and sample")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--attn", default="sdpa", choices=("eager", "sdpa", "flash_attention_2"))
    p.add_argument("--grid", type=int, default=256, help="points of the KDE grid")
    p.add_argument("--out", type=Path, help="default: results/attention/<model>")
    args = p.parse_args(argv)
    if args.limit < 1 or args.max_per_layer < 2 or args.grid < 16:
        p.error("--limit must be >= 1, --max-per-layer >= 2 and --grid >= 16")
    path = MODEL_CONFIGS / f"{args.model}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in MODEL_CONFIGS.glob("*.yaml")))
        p.error(f"--model {args.model}: no {path}; known models: {known}")
    args.model_cfg = OmegaConf.load(path)
    if args.model_path:
        args.model_cfg.path = args.model_path
        args.model_cfg.tiny = None
    from milebench.runner.settings import select_datasets

    try:
        args.dataset_names = select_datasets(args.datasets)
    except ValueError as e:
        p.error(f"--datasets: {e}")
    args.out = args.out or ROOT / "results" / "attention" / args.model
    return args


def load_data(args) -> list:
    from milebench.data import load_dataset
    from milebench.synthetic import DEFAULT_DIR, ensure_synthetic

    if not args.data_dir.is_dir():
        if args.data_dir.resolve() != DEFAULT_DIR.resolve():
            raise SystemExit(f"error: --data-dir {args.data_dir} does not exist")
        ensure_synthetic(DEFAULT_DIR)
    return [load_dataset(args.data_dir, name) for name in args.dataset_names]


def record_dataset(adapter, dataset, args) -> AttentionRecorder:
    """One prefill per sample with the recorder as the 'method'; nothing is decoded."""
    from csp.engine.decode import prefill
    from milebench.prompt import prepare_sample

    recorder = AttentionRecorder(max_per_layer=args.max_per_layer)
    for sample in tqdm(dataset.samples[: args.limit], desc=dataset.name, unit="sample", leave=False):
        built, images = prepare_sample(adapter, sample, dataset, int(args.model_cfg.max_context_len))
        inputs = adapter.encode([adapter.format_prompt(built.text)], [images])
        with torch.inference_mode():
            prefill(adapter, inputs, recorder)
    return recorder


def layer_rows(scope: str, collected: dict[int, dict[str, np.ndarray]], grid_points: int):
    """(js rows, kde rows) of one scope (a dataset or the pooled set)."""
    js_rows, kde_rows = [], []
    for layer, kinds in collected.items():
        intra, cross = to_log10(kinds["intra"]), to_log10(kinds["cross"])
        if intra.size == 0 or cross.size == 0:
            continue
        js, grid, p_intra, p_cross = kde_js(intra, cross, points=grid_points)
        js_rows.append(dict(scope=scope, layer=layer, js=js, n_intra=intra.size, n_cross=cross.size,
                            median_log10_intra=float(np.median(intra)), median_log10_cross=float(np.median(cross))))
        kde_rows += [dict(scope=scope, layer=layer, log10_weight=x, intra=a, cross=b)
                     for x, a, b in zip(grid, p_intra, p_cross)]
    return js_rows, kde_rows


def plot(js: pd.DataFrame, kde: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = kde[kde.scope == POOLED]
    layers = sorted(pooled.layer.unique())
    shown = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4 * (len(shown) + 1), 3.5))
    for ax, layer in zip(axes, shown):
        d = pooled[pooled.layer == layer]
        ax.plot(d.log10_weight, d.intra, label="intra-modality")
        ax.plot(d.log10_weight, d.cross, label="cross-modality")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("log10 attention weight")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for scope, d in js.groupby("scope", sort=False):
        ax.plot(d.layer, d.js, marker="o", lw=2.5 if scope == POOLED else 1, label=scope)
    ax.set_xlabel("layer")
    ax.set_ylabel("JS divergence (nats)")
    ax.set_ylim(0, np.log(2) * 1.05)
    ax.set_title("intra vs cross, per layer")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def js_markdown(js: pd.DataFrame) -> str:
    """Layers as rows, the pooled set then each dataset as columns."""
    table = js.pivot(index="layer", columns="scope", values="js")
    scopes = [POOLED] + [c for c in js.scope.unique() if c != POOLED]
    lines = ["| layer | " + " | ".join(scopes) + " |", "|" + "---|" * (len(scopes) + 1)]
    for layer, row in table.iterrows():
        cells = ["–" if pd.isna(row.get(s)) else f"{row[s]:.3f}" for s in scopes]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    datasets = load_data(args)  # bad data fails before the model loads
    from milebench.runner.models import adapter_from_config

    adapter = adapter_from_config(args.model_cfg, args.dtype, args.device, args.attn)
    js_rows, kde_rows = [], []
    pooled: dict[int, dict[str, list[np.ndarray]]] = {}
    for dataset in tqdm(datasets, desc="datasets", unit="dataset"):
        collected = record_dataset(adapter, dataset, args).collected()
        if not collected:
            tqdm.write(f"{dataset.name}: no sample has both text and images; skipped")
            continue
        rows, _ = layer_rows(dataset.name, collected, args.grid)
        js_rows += rows
        for layer, kinds in collected.items():
            for kind, values in kinds.items():
                pooled.setdefault(layer, {}).setdefault(kind, []).append(values)
    if not pooled:
        raise SystemExit("error: no sample with both text and images in the chosen datasets")
    rows, kde_rows = layer_rows(POOLED, {l: {k: np.concatenate(v) for k, v in kinds.items()}
                                         for l, kinds in pooled.items()}, args.grid)
    js = pd.DataFrame(rows + js_rows)
    kde = pd.DataFrame(kde_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "js.csv", js.to_csv(index=False))
    write_atomic(args.out / "kde.csv", kde.to_csv(index=False))
    md = (f"## Intra- vs cross-modality attention: JS divergence per layer ({args.model}, "
          f"{args.limit} sample(s) per dataset; nats, max ln 2 = 0.693)\n\n" + js_markdown(js))
    write_atomic(args.out / "attention.md", md)
    with atomic_path(args.out / "attention.png") as png:
        plot(js, kde, png, f"{args.model}: {', '.join(d.name for d in datasets)}")
    print(md)
    print(f"wrote {args.out}/js.csv, kde.csv, attention.md, attention.png")
    return js


if __name__ == "__main__":
    main()
