"""A tiny LLaVA trained on the proxy task set, so that offline scores mean something.

The random tiny LLaVA (`csp.models.tiny`) answers nothing, so every method scores zero on it. This
model has the same classes, tokenizer, processor and loading path (`from_pretrained`), but
its weights are trained for about two minutes on the TRAIN split of `milebench.proxy`, with
every prompt encoded by the runner's own code (`prepare_sample`, the chat template, the
processor) and the loss on the answer tokens only. It then answers the held-out proxy
samples through the unchanged runner, methods and scorer, so pruning methods separate.

    python -m standins.proxy_llava train [--seed 0] [--steps 650] [--out models/proxy-llava]
    python -m standins.proxy_llava ensure [--seed 0]        # train only if models/ lacks it (the runner's path)

What makes two minutes of CPU enough: a curriculum (each task's shortest examples first,
widening to all), tasks drawn by weight, the output layer tied to the input embedding, and
LLaVA's Llama-2 turn without its 119-token system prompt (the checkpoint carries that
template; the model config selects it with `chat_template: processor`).

Deterministic for a seed and a thread count (`--threads`, 2 by default): the same command
gives the same weights. `--time-limit` stops early and then depends on the machine's speed.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from csp.models.adapters import ModelAdapter
from csp.models.tiny import LLAVA_JINJA_CONTENT, build_llava
from milebench.prompt import prepare_sample
from standins import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT / "models"
RECIPE_FILE = "proxy_recipe.json"
RECIPE_VERSION = 1
MAX_CONTEXT_LEN = 1024  # configs/model/proxy-llava.yaml; no proxy prompt is truncated


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; stored beside them."""

    seed: int = 0
    steps: int = 650
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    threads: int = 2
    data_seed: int = 0
    train_samples: int = 300  # per proxy dataset
    curriculum_start: float = 0.1  # share of each task's (shortest) examples drawn from at step 0
    curriculum_ramp: float = 1.0  # share of the steps after which every example is drawn from
    tie_embeddings: bool = True
    # how often each task is drawn, relative to the others: the text-heavy tasks and the
    # two-picture comparison take longer to learn than a lone coloured shape
    task_weights: tuple[tuple[str, float], ...] = (
        ("ProxyVisualNeedle", 1.0), ("ProxyCrossModal", 1.5), ("ProxyTemporal", 0.75),
        ("ProxyMultiTurn", 1.5), ("ProxyTextNeedle", 0.75), ("ProxyImageDiff", 1.5))
    recipe_version: int = RECIPE_VERSION


# LLaVA's Llama-2 turn without the 119-token system prompt: the prompt the runner builds,
# a quarter shorter, which is a quarter more training in the same minutes.
PROXY_JINJA = (
    "{% for message in messages %}"
    "[INST] "
    + LLAVA_JINJA_CONTENT +
    " [/INST]"
    "{% endfor %}"
)
CHAT_TEMPLATE = "processor"


def build_untrained(seed: int, tie_embeddings: bool = True) -> tuple[LlavaForConditionalGeneration, object]:
    """The tiny LLaVA's config, tokenizer and processor (csp.models.tiny), with weights drawn
    for training: the usual small initialisation instead of the wide one that keeps a
    random model's logits apart, and (by default) the output layer tied to the input
    embedding, so that copying a token from the prompt is one circuit, not two."""
    model, processor = build_llava(seed)
    processor.chat_template = PROXY_JINJA
    config = model.config
    config.text_config.initializer_range = 0.02
    config.vision_config.initializer_range = 0.02
    config.text_config.tie_word_embeddings = tie_embeddings
    config.tie_word_embeddings = tie_embeddings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = LlavaForConditionalGeneration(config)
    fresh.generation_config = model.generation_config
    return fresh, processor


# ---------------------------------------------------------------- encoding --------------

@dataclass
class Example:
    dataset: str
    input_ids: torch.Tensor  # (L,) prompt then answer then EOS
    pixel_values: torch.Tensor  # (n_images, 3, H, W)
    answer_start: int  # first answer position in input_ids

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def encode_example(adapter: ModelAdapter, sample, dataset, max_context_len: int = MAX_CONTEXT_LEN) -> Example:
    """A sample encoded exactly as the runner encodes it, plus ' <response></s>'."""
    built, images = prepare_sample(adapter, sample, dataset, max_context_len)
    enc = adapter.encode([adapter.format_prompt(built.text)], [images])
    prompt = enc["input_ids"][0]
    tokenizer = adapter.processor.tokenizer
    answer = tokenizer(" " + sample.response, add_special_tokens=False).input_ids + [adapter.eos_token_ids[0]]
    ids = torch.cat([prompt, torch.tensor(answer, dtype=prompt.dtype)])
    return Example(sample.dataset, ids, enc["pixel_values"], int(prompt.shape[0]))


def load_examples(adapter: ModelAdapter, data_dir: Path) -> list[Example]:
    from milebench import catalog
    from milebench.data import load_dataset

    examples = []
    for name in catalog.PROXY_NAMES:
        dataset = load_dataset(data_dir, name)
        examples += [encode_example(adapter, s, dataset) for s in dataset.samples]
    return examples


def curriculum_batch(by_task: dict[str, list[Example]], step: int, recipe: Recipe,
                     rng: random.Random) -> list[Example]:
    """A batch of examples, each of a task drawn by `task_weights`, from that task's
    shortest examples first, widening to all of them: a lookup is found far sooner among a
    few pictures than among sixteen, and then carries over to long prompts."""
    ramp = max(1.0, recipe.curriculum_ramp * recipe.steps)
    share = recipe.curriculum_start + (1 - recipe.curriculum_start) * min(1.0, step / ramp)
    weights = dict(recipe.task_weights)
    names = sorted(by_task)
    cumulative, total = [], 0.0
    for name in names:
        total += weights.get(name, 1.0)
        cumulative.append(total)
    batch = []
    for _ in range(recipe.batch_size):
        x = rng.random() * total
        task = by_task[names[next(i for i, c in enumerate(cumulative) if x < c)]]
        batch.append(task[rng.randrange(max(1, int(share * len(task))))])
    return batch


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding: positions start at 0 for every sample, as in the runner's prefill."""
    width = max(e.length for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : e.length] = e.input_ids
        mask[i, : e.length] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([e.pixel_values for e in batch])}


def answer_loss(model: LlavaForConditionalGeneration, batch: list[Example], pad_id: int) -> torch.Tensor:
    """Cross-entropy of the answer tokens (and the EOS) given everything before them; the
    LM head runs only where a loss is taken."""
    inputs = collate(batch, pad_id)
    hidden = model.model(**inputs).last_hidden_state
    rows, cols, targets = [], [], []
    for i, e in enumerate(batch):
        for p in range(e.answer_start, e.length):
            rows.append(i)
            cols.append(p - 1)
            targets.append(int(e.input_ids[p]))
    logits = model.lm_head(hidden[rows, cols])
    return F.cross_entropy(logits.float(), torch.tensor(targets))


# ---------------------------------------------------------------- training --------------

def train(recipe: Recipe, data_dir: Path, log_every: int = 25, time_limit: float | None = None):
    """Train a fresh proxy model; returns (model, processor, stats)."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model, processor = build_untrained(recipe.seed, recipe.tie_embeddings)
    adapter = ModelAdapter.from_model(model, processor, chat_template=CHAT_TEMPLATE)
    t0 = time.perf_counter()
    examples = load_examples(adapter, Path(data_dir) / "train")
    t_enc = time.perf_counter() - t0
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    pad_id = adapter.pad_token_id
    tasks: dict[str, list[Example]] = {}
    for e in examples:
        tasks.setdefault(e.dataset, []).append(e)
    by_task = {name: sorted(group, key=lambda e: e.length) for name, group in tasks.items()}
    step, losses = 0, []
    t1 = time.perf_counter()
    while step < recipe.steps:
        batch = curriculum_batch(by_task, step, recipe, rng)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = answer_loss(model, batch, pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if log_every and step % log_every == 0:
            recent = losses[-log_every:]
            print(f"step {step}/{recipe.steps} loss {sum(recent) / len(recent):.3f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            print(f"time limit {time_limit:.0f} s reached at step {step}", flush=True)
            break
    model.eval()
    stats = {"steps_done": step, "encode_s": round(t_enc, 1), "train_s": round(time.perf_counter() - t1, 1),
             "final_loss": round(sum(losses[-log_every:]) / max(1, len(losses[-log_every:])), 4),
             "examples": len(examples)}
    return model, processor, stats


# ---------------------------------------------------------------- the checkpoint --------

def default_folder(seed: int = 0, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else DEFAULT_ROOT
    return root / ("proxy-llava" if seed == 0 else f"proxy-llava-seed{seed}")


def is_current(folder: Path, recipe: Recipe) -> bool:
    return checkpoint.is_current(folder, recipe, RECIPE_FILE)


def build_proxy_model(out: Path, recipe: Recipe, data_dir: Path | None = None, quiet: bool = False,
                      time_limit: float | None = None) -> Path:
    """Train and save atomically (build beside `out`, then rename), like csp.models.tiny."""
    from milebench.proxy import DEFAULT_DIR, DEFAULT_EVAL, MARKER_FILE, ensure_proxy

    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DIR
    marker = data_dir / MARKER_FILE
    if marker.is_file():  # a generated copy: train on it only if it holds this recipe's training split
        made = json.loads(marker.read_text(encoding="utf-8"))
        if (made.get("train"), made.get("seed")) != (recipe.train_samples, recipe.data_seed):
            if data_dir.resolve() != DEFAULT_DIR.resolve():
                raise ValueError(f"{marker}: made with train={made.get('train')} seed={made.get('seed')}, but the "
                                 f"recipe needs train={recipe.train_samples} seed={recipe.data_seed}")
            ensure_proxy(data_dir, train=recipe.train_samples, eval=made.get("eval", DEFAULT_EVAL),
                         seed=recipe.data_seed)
    else:
        ensure_proxy(data_dir, train=recipe.train_samples, seed=recipe.data_seed)
    return checkpoint.save_trained(out, recipe, RECIPE_FILE, lambda: train(
        recipe, data_dir, log_every=0 if quiet else 25, time_limit=time_limit))


def ensure_proxy_model(seed: int = 0, root: Path | None = None, **overrides) -> Path:
    """The trained proxy checkpoint under models/, trained on first use (a few minutes)."""
    recipe = Recipe(seed=seed, **overrides)
    folder = default_folder(seed, root)
    if is_current(folder, recipe):
        return folder
    return build_proxy_model(folder, recipe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the proxy LLaVA on the proxy task set.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and save a checkpoint")
    defaults = Recipe()
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--steps", type=int, default=defaults.steps)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--threads", type=int, default=defaults.threads)
    t.add_argument("--train-samples", type=int, default=defaults.train_samples, help="per proxy dataset")
    t.add_argument("--data-dir", type=Path, default=None, help="proxy data (default data/milebench-proxy)")
    t.add_argument("--out", type=Path, default=None, help="default models/proxy-llava[-seedN]")
    t.add_argument("--time-limit", type=float, default=None, help="seconds; stops early (not deterministic)")
    e = sub.add_parser("ensure", help="train only when models/ lacks a current checkpoint (the runner's path)")
    e.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.command == "ensure":
        print(f"proxy-llava (seed {args.seed}): {ensure_proxy_model(args.seed)}")
        return
    recipe = Recipe(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    threads=args.threads, train_samples=args.train_samples)
    out = args.out if args.out is not None else default_folder(args.seed)
    wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    build_proxy_model(out, recipe, args.data_dir, time_limit=args.time_limit)
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)
    print(f"trained proxy-llava (seed {args.seed}) in {time.perf_counter() - wall:.1f} s wall, "
          f"{cpu_s:.1f} s CPU -> {out}")


if __name__ == "__main__":
    main()
