"""The paper's Table 2 for any method: decoding latency and KV-cache memory at budgets
100 / 60 / 30 / 20 / 10% of the prompt, as ratios to the full cache beside the paper's.

    python scripts/bench_efficiency.py                                  # CPU: 2 layers of 7B shape
    python scripts/bench_efficiency.py --device cuda                    # GPU: all 32 layers, fp16
    python scripts/bench_efficiency.py --method snapkv --images 3 --batch 4 --out results/efficiency

Model: LLaVA-1.5-7B's language model shape (hidden 4096, 32 heads of 128, MLP 11008, vocab
32064) with random weights; weights do not change cost. Its vision tower is a token stand-in:
decoding never runs it, and image positions carry the image token's embedding, so the
prompt's modality mask (what CSP splits on) is that of the real model.
Sample: ALFRED-like, a long dialogue prompt that is mostly image tokens: a text preamble, then
per image a short step caption and 576 image tokens, then the question. The default 5 images
+ about 300 text tokens (L ~ 3,200) is what the paper's full-cache figure (1.571 GiB at 512
KiB per fp16 token of the 7B) implies; on CPU the defaults are shorter so that a run takes
minutes.

Per budget: one prefill with the method pruning every layer, then `--warmup` decode steps;
then `--steps` timed rounds in which every budget's decoder takes one step (device
synchronized around each), median ms/token per budget. Memory is the bytes the cache holds
after pruning (`Decoder.kv_bytes`: every stored entry, so CSP's concat mode pays for its
duplicates); on CUDA also `max_memory_allocated` during the warm-up steps, minus what was
allocated before that budget's prefill (its cache plus the decode step's activations). "target" is what the budget keeps, (selected + recent) / L; "kept" is the
stored entries per layer and head over L; "distinct" counts each different key row once
(lower than "kept" when a token is stored twice). The memory target: KV ratio within 2% of
"target".
Writes <out>/efficiency_<method>_<device>.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from csp.engine import registry  # noqa: E402
from csp.engine.decode import Decoder  # noqa: E402
from csp.engine.method import ConfigError, FullCache  # noqa: E402
from csp.models.adapters import DTYPES  # noqa: E402
from milebench.files import atomic_path, write_atomic  # noqa: E402

BUDGETS = (1.0, 0.6, 0.3, 0.2, 0.1)
# CSP paper, Table 2 (LLaVA-1.5-7B, RTX 4090, ALFRED): ratios to the full cache.
PAPER_LATENCY = {1.0: 1.0, 0.6: 0.937, 0.3: 0.808, 0.2: 0.758, 0.1: 0.626}
PAPER_MEMORY = {1.0: 1.0, 0.6: 0.768, 0.3: 0.333, 0.2: 0.303, 0.1: 0.132}
PAPER_MS = {1.0: 26.023, 0.6: 24.377, 0.3: 21.027, 0.2: 19.736, 0.1: 16.287}
MEMORY_TOLERANCE = 0.02  # target: KV memory ratio within 2% of the kept fraction

# Language-model shapes; `tiny` is for tests.
SHAPES: dict[str, dict[str, int]] = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32064, layers=32, image_token_id=32000, tokens_per_image=576),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                 vocab_size=1024, layers=2, image_token_id=1023, tokens_per_image=16),
}
SHAPE_NAMES = {"7b": "LLaVA-1.5-7B", "tiny": "tiny test"}
TEXT_ID_LOW = 3  # text ids lie between the special tokens (0..2) and the image token (the last id)


@dataclass
class Row:
    method: str
    budget: float
    prompt_length: int
    target_fraction: float  # what the method's budget keeps: (selected + recent) / L, 1 for the full cache
    kept_fraction: float  # stored entries per layer and head / L (duplicates counted)
    distinct_fraction: float  # different key rows per layer and head / L, first sample
    kv_bytes: int
    ms_per_token: float
    cuda_peak_decode_bytes: int | None = None  # max_memory_allocated while decoding, minus weights
    kv_ratio: float = float("nan")
    latency_ratio: float = float("nan")

    @property
    def memory_target_met(self) -> bool:
        return abs(self.kv_ratio - self.target_fraction) <= MEMORY_TOLERANCE * self.target_fraction


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} but no CUDA device is available")
    return torch.device(name)


def build_method(name: str, budget: float, recent_share: float):
    """The method from configs/method/<name>.yaml at `budget`, `recent_share` of it recent;
    budget 1.0 is the full cache whatever the method."""
    if budget >= 1.0:
        return FullCache()
    method = registry.build_method(name, budget, round(budget * recent_share, 12))
    return method.for_dataset({"cross_ratio": 0.5, "bias": 1.0})


def build_model(shape: str, layers: int, device: torch.device, dtype: torch.dtype, attn: str):
    """A random-weight LLaVA with the language model of `shape` and a token vision tower."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from csp.models.adapters import ModelAdapter

    s = SHAPES[shape]
    text = LlamaConfig(hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                       num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
                       num_hidden_layers=layers, vocab_size=s["vocab_size"], max_position_embeddings=8192,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=s["image_token_id"])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation=attn)
    return ModelAdapter.from_model(model.eval())


def alfred_like_ids(shape: str, images: int, text_tokens: int, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, L) ids: preamble, per image a caption and its image tokens, then the question.

    A fifth of the text is the preamble, a fifth the question, the rest the captions."""
    s = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)

    def text(n: int) -> torch.Tensor:
        return torch.randint(TEXT_ID_LOW, s["image_token_id"], (max(n, 1),), generator=g)

    preamble, question = text_tokens // 5, text_tokens // 5
    caption = max((text_tokens - preamble - question) // max(images, 1), 1)
    parts = [text(preamble)]
    for _ in range(images):
        parts += [text(caption), torch.full((s["tokens_per_image"],), s["image_token_id"])]
    parts.append(text(question))
    return torch.cat(parts).expand(batch, -1).clone()


def distinct_fraction(cache, length: int) -> float:
    """Mean over layers and heads of the number of different key rows (first sample) / L."""
    counts = []
    for layer in cache.layers:
        keys = layer.keys[0]  # (Hkv, N, D)
        counts += [torch.unique(keys[h], dim=0).shape[0] for h in range(keys.shape[0])]
    return statistics.fmean(counts) / length


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(adapter, ids: torch.Tensor, method_name: str, budgets: list[float], args,
            device: torch.device) -> list[Row]:
    """Prefill once per budget and keep every decoder; then time their steps round-robin, so
    that a background load drifting over the run hits every budget alike."""
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}
    decoders, rows, tokens = [], [], []
    for budget in tqdm(budgets, desc=f"{method_name}: prefill + warm-up", unit="budget"):
        method = build_method(method_name, budget, args.recent_share)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        dec = Decoder(adapter, inputs, method)
        length = int(dec.layout.prompt_lengths[0])
        target = 1.0 if isinstance(method, FullCache) else min(method.split_budget(length).total / length, 1.0)
        kept = float(dec.layout.kept.float().mean()) / length
        distinct = distinct_fraction(dec.cache, length) if args.distinct else float("nan")
        kv_bytes = dec.kv_bytes
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        token = dec.logits.argmax(-1)
        with dec:
            for _ in range(args.warmup):
                token = dec.step(token).argmax(-1)
        # this decoder's own footprint while decoding: its cache and the step's activations
        peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
        decoders.append(dec)
        tokens.append(token)
        rows.append(Row(method="full" if budget >= 1.0 else method_name, budget=budget, prompt_length=length,
                        target_fraction=target, kept_fraction=kept, distinct_fraction=distinct,
                        kv_bytes=kv_bytes, ms_per_token=float("nan"), cuda_peak_decode_bytes=peak))
    times: list[list[float]] = [[] for _ in decoders]
    for _ in tqdm(range(args.steps), desc="timed decode steps", unit="round"):
        for i, dec in enumerate(decoders):
            with dec:  # per-layer mask hooks (ragged methods) only around this decoder's step
                sync(device)
                t = time.perf_counter()
                tokens[i] = dec.step(tokens[i]).argmax(-1)
                sync(device)
            times[i].append(time.perf_counter() - t)
    for row, t in zip(rows, times):
        row.ms_per_token = statistics.median(t) * 1e3
    return rows


def with_ratios(rows: list[Row]) -> list[Row]:
    full = next((r for r in rows if r.budget >= 1.0), None)
    if full is None:
        raise SystemExit("error: --budgets must include 1.0 (the full cache every ratio is taken to)")
    for r in rows:
        r.kv_ratio = r.kv_bytes / full.kv_bytes
        r.latency_ratio = r.ms_per_token / full.ms_per_token
    return rows


def _paper(table: dict[float, float], budget: float) -> str:
    value = next((v for b, v in table.items() if abs(b - budget) < 1e-9), None)
    return "–" if value is None else f"{value:.3f}"


def markdown(rows: list[Row], setup: dict[str, Any]) -> str:
    cuda = any(r.cuda_peak_decode_bytes is not None for r in rows)
    head = ["method", "budget", "L", "target", "kept", "distinct", "KV cache (MiB)", "KV ratio", "paper memory ratio",
            "ms/token", "latency ratio", "paper latency ratio", "paper ms/token"]
    if cuda:
        head.append("CUDA peak while decoding (MiB)")
    lines = [
        f"## Table 2: {setup['method']} on {setup['device_name']}",
        "",
        f"{setup['layers']} decoder layers of the {SHAPE_NAMES[setup['shape']]} shape, {setup['dtype']}, batch "
        f"{setup['batch']}, ALFRED-like prompt of {setup['prompt_length']} tokens ({setup['images']} images, "
        f"{setup['visual_share']:.0%} image tokens), median of {setup['steps']} decode steps after "
        f"{setup['warmup']} warm-up steps; torch {setup['torch']}, {setup['threads']} CPU threads.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r.method, f"{r.budget:.0%}", str(r.prompt_length), f"{r.target_fraction:.3f}", f"{r.kept_fraction:.3f}",
                 f"{r.distinct_fraction:.3f}", f"{r.kv_bytes / 2**20:.1f}", f"{r.kv_ratio:.3f}",
                 _paper(PAPER_MEMORY, r.budget), f"{r.ms_per_token:.2f}", f"{r.latency_ratio:.3f}",
                 _paper(PAPER_LATENCY, r.budget), _paper(PAPER_MS, r.budget)]
        if cuda:
            cells.append("–" if r.cuda_peak_decode_bytes is None else f"{r.cuda_peak_decode_bytes / 2**20:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    met = all(r.memory_target_met for r in rows)
    lines += ["", f"KV memory ratio within {MEMORY_TOLERANCE:.0%} of the budget's target fraction at every budget: "
              f"{'yes' if met else 'NO'}"]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.budget:.0%}" for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, ours, paper, name in (
        (axes[0], [r.latency_ratio for r in rows], [PAPER_LATENCY.get(r.budget) for r in rows], "decode latency"),
        (axes[1], [r.kv_ratio for r in rows], [PAPER_MEMORY.get(r.budget) for r in rows], "KV-cache memory"),
    ):
        ax.bar([i - 0.2 for i in x], ours, width=0.4, label="ours")
        ax.bar([i + 0.2 for i in x], [float("nan") if p is None else p for p in paper], width=0.4, label="paper")
        ax.set_xticks(list(x), labels)
        ax.set_xlabel("KV budget (share of the prompt)")
        ax.set_ylabel("ratio to full cache")
        ax.set_title(name)
        ax.set_ylim(0, 1.15)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="csp", help="a configs/method/<name>.yaml (the 100%% row is the full cache)")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS), help="kept fractions; must hold 1")
    p.add_argument("--recent-share", type=float, default=0.5,
                   help="share of each budget spent on the recent window (0.5 = the reference's 0.1 + 0.1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                   help="auto = float16 on CUDA (as the paper), float32 on CPU")
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers (default: all 32 on CUDA, 2 on CPU; ratios barely depend on it)")
    p.add_argument("--images", type=int, default=None, help="images in the prompt (default 5 on CUDA, 2 on CPU)")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens (default 300 on CUDA, 150 on CPU)")
    p.add_argument("--batch", type=int, default=1, help="copies of the sample decoded together")
    p.add_argument("--warmup", type=int, default=None, help="decode steps before timing (default 100 CUDA, 3 CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps (default 100 CUDA, 10 CPU)")
    p.add_argument("--attn", default="sdpa", choices=("eager", "sdpa", "flash_attention_2"))
    p.add_argument("--no-distinct", dest="distinct", action="store_false", help="skip counting distinct entries")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "efficiency")
    args = p.parse_args(argv)
    try:
        args.budgets = sorted({float(b) for b in args.budgets.split(",")}, reverse=True)
    except ValueError:
        p.error(f"--budgets {args.budgets!r}: expected comma-separated numbers")
    if any(not 0 < b <= 1 for b in args.budgets) or 1.0 not in args.budgets:
        p.error(f"--budgets {args.budgets}: fractions in (0, 1], 1 included (the full cache)")
    if not 0 <= args.recent_share <= 1:
        p.error(f"--recent-share {args.recent_share} must lie in [0, 1]")
    for name in ("layers", "images", "text_tokens", "warmup", "steps", "batch"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("warmup", "images") else 1):
            p.error(f"--{name.replace('_', '-')} {value} is out of range")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    defaults = dict(layers=SHAPES[args.shape]["layers"] if gpu else min(2, SHAPES[args.shape]["layers"]),
                    images=5 if gpu else 2, text_tokens=300 if gpu else 150, warmup=100 if gpu else 3,
                    steps=100 if gpu else 10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    dtype_name = args.dtype if args.dtype != "auto" else ("float16" if gpu else "float32")
    try:  # a bad method configuration fails before the model is built
        for b in args.budgets:
            build_method(args.method, b, args.recent_share)
    except ConfigError as e:
        raise SystemExit(f"error: --method {args.method}: {e}") from None

    adapter = build_model(args.shape, args.layers, device, DTYPES[dtype_name], args.attn)
    ids = alfred_like_ids(args.shape, args.images, args.text_tokens, args.batch)
    rows = with_ratios(measure(adapter, ids, args.method, args.budgets, args, device))

    device_name = torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()})"
    setup = dict(method=args.method, device=device.type, device_name=device_name, shape=args.shape,
                 layers=args.layers, dtype=dtype_name, batch=args.batch, images=args.images,
                 text_tokens=args.text_tokens, prompt_length=int(ids.shape[1]),
                 visual_share=float((ids[0] == SHAPES[args.shape]["image_token_id"]).float().mean()),
                 warmup=args.warmup, steps=args.steps, recent_share=args.recent_share, attn=args.attn,
                 torch=torch.__version__, threads=torch.get_num_threads())
    table = markdown(rows, setup)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"efficiency_{args.method}_{device.type}"
    write_atomic(stem.with_suffix(".md"), table)
    record = {"setup": setup, "rows": [dict(asdict(r), memory_target_met=r.memory_target_met) for r in rows],
              "paper": {"latency_ratio": PAPER_LATENCY, "memory_ratio": PAPER_MEMORY, "ms_per_token": PAPER_MS}}
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2, default=str) + "\n")
    with atomic_path(stem.with_suffix(".png")) as tmp_png:
        plot(rows, tmp_png, f"{args.method}, {setup['layers']} layers, L = {setup['prompt_length']}, {device_name}")
    print(f"wrote {stem}.md, .json, .png")
    return rows


if __name__ == "__main__":
    main()
