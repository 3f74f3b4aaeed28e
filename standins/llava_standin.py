"""A small LLaVA trained on the learnable MileBench, so that offline scores mean something.

The random tiny LLaVA (`csp.models.tiny`) answers nothing, so every method scores alike on it.
This model has the same classes, tokenizer and loading path (`from_pretrained`), LLaVA-1.5's
shape in small (168 px pictures, 144 tokens each, CLS dropped; a 4-layer Llama decoder), and
weights trained for about thirteen minutes of two CPU cores on the TRAIN split of
`milebench.learnable`, every prompt encoded by the runner's own code (`prepare_sample`,
LLaVA's `llava_llama_2` turn with its system prompt, the processor) and the loss on the answer
tokens only. It then answers the scored split of all 29 datasets through the unchanged
runner, methods and scorer, so pruning methods separate.

    python -m standins.llava_standin train [--seed 0] [--steps N] [--out models/standin-llava]
    python -m standins.llava_standin ensure [--seed 0]      # train only if models/ lacks it (the runner's path)

What makes minutes of CPU go far: the vision tower pretrained on the pictures and frozen
(`pretrain_vision`, as LLaVA's tower comes pretrained), a caption loss that names each
labelled picture's colour at its label (`caption_targets`, as LLaVA learns from captions
before it answers questions; it helps the lookups by label or name a little, see the README), a
curriculum (each dataset's shortest examples first, widening to all), datasets drawn by
weight (`DRAW_WEIGHTS`), one example at a time (no padding), and the output layer tied to the
input embedding. Deterministic for a seed and a thread count (`--threads`, 2 by default): the
same command gives the same weights. `--time-limit` stops early and then depends on the
machine's speed.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlavaForConditionalGeneration

from csp.models.adapters import ModelAdapter
from csp.models.tiny import build_llava
from milebench import catalog
from milebench.learnable import (BACKGROUND, COLOURS, DEFAULT_DIR, DEFAULT_SAMPLES, GENERATOR_VERSION, GREY_SHADES,
                                IMAGE_SIZE, LABELLED, MARKER_FILE, TRAIN_DIR, ensure_learnable)
from milebench.prompt import prepare_sample
from standins import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT / "models"
RECIPE_FILE = "standin_recipe.json"
RECIPE_VERSION = 1
MAX_CONTEXT_LEN = 1800  # configs/model/standin-llava.yaml: the longest samples are truncated
CHAT_TEMPLATE = "llava_llama_2"  # LLaVA's turn, system prompt included, as the runner builds it
TEXT = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "initializer_range": 0.02}
VISION = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 2,
          "projection_dim": 48, "initializer_range": 0.02}


# How often each dataset is drawn, relative to the others (1 when unnamed): the skills that one
# dataset carries alone more often, and the lookups by label or name, the slowest to learn,
# twice as often as the events (learnt first, and the same in nine datasets).
DRAW_WEIGHTS: tuple[tuple[str, float], ...] = tuple(sorted({
    **{name: 2.0 for name in LABELLED},
    "TextNeedleInAHaystack": 4.0, "ImageNeedleInAHaystack": 3.0, "GPR1200": 3.0,
    "Spot-the-Diff": 1.5, "CLEVR-Change": 1.5, "IEdit": 1.5}.items()))


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; stored beside them."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 8
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    threads: int = 2
    data_seed: int = 0
    data_version: int = GENERATOR_VERSION  # the learnable data's generator: a new one retrains the model
    train_samples: int = 400  # per dataset
    curriculum_start: float = 0.1  # share of each dataset's (shortest) examples drawn from at step 0
    curriculum_ramp: float = 0.5  # share of the steps after which every example is drawn from
    tie_embeddings: bool = True
    vision_steps: int = 150  # pretraining of the vision tower (then frozen); 0 trains it with the rest
    vision_batch: int = 16
    vision_lr: float = 3e-3
    bf16: bool = False  # autocast the products to bfloat16 (faster only for wider models)
    caption_weight: float = 1.0  # the loss naming each labelled picture's colour (`caption_targets`); 0: none
    weights: tuple[tuple[str, float], ...] = DRAW_WEIGHTS
    datasets: tuple[str, ...] = catalog.NAMES
    recipe_version: int = RECIPE_VERSION


def build_untrained(seed: int, tie_embeddings: bool = True) -> tuple[LlavaForConditionalGeneration, object]:
    """The stand-in's config, tokenizer and processor (csp.models.tiny's LLaVA at 168 px, a
    wider MLP), with weights drawn for training: the usual small initialisation and (by
    default) the output layer tied to the input embedding, so that copying a token from the
    prompt is one circuit, not two."""
    model, processor = build_llava(seed, image_size=IMAGE_SIZE, text={**TEXT, "tie_word_embeddings": tie_embeddings},
                                   vision=VISION)
    config = model.config
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
    caption_positions: list[int] = field(default_factory=list)  # see `caption_targets`
    caption_targets: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def encode_example(adapter: ModelAdapter, sample, dataset, max_context_len: int = MAX_CONTEXT_LEN,
                   captions: bool = False) -> Example:
    """A sample encoded exactly as the runner encodes it, plus ' <response></s>'; with
    `captions`, the caption targets of its labelled pictures (`caption_targets`)."""
    built, images = prepare_sample(adapter, sample, dataset, max_context_len)
    enc = adapter.encode([adapter.format_prompt(built.text)], [images])
    prompt = enc["input_ids"][0]
    tokenizer = adapter.processor.tokenizer
    answer = tokenizer(" " + sample.response, add_special_tokens=False).input_ids + [adapter.eos_token_ids[0]]
    ids = torch.cat([prompt, torch.tensor(answer, dtype=prompt.dtype)])
    positions, targets = caption_targets(prompt.tolist(), images, adapter) if captions else ([], [])
    return Example(sample.dataset, ids, enc["pixel_values"], int(prompt.shape[0]), positions, targets)


def caption_targets(prompt_ids: list[int], pictures: Sequence[Image.Image], adapter: ModelAdapter
                    ) -> tuple[list[int], list[int]]:
    """Where a picture is followed by its label or name up to a full stop on the same line
    ("<image> image 3.", "<image> river.", GPR1200's "<image> image1."), the label's last token
    and the picture's colour word (its first token), read from the pixels. Meant for the
    datasets in `milebench.learnable.LABELLED`, where that text is each picture's label.

    LLaVA learns what pictures show from captions before it learns to answer questions about
    them; this is that stage in small: the binding of a picture to the label written after it
    gets a loss at every labelled picture, not only through the one answer per sample. (On
    ObjectExistence and WebQA alone, 400 steps, it raised the held-out first colour from 0.31
    to 0.41; the lookup is still far from learnt.) The scored prompts carry no colours: the
    answer is still read from the pictures. Pictures with no coloured shape (grey fillers) get
    no target."""
    tokenizer = adapter.processor.tokenizer
    image_id = adapter.image_token_id
    stop_id = tokenizer.convert_tokens_to_ids(".")
    ends = {image_id, stop_id, *tokenizer("\n", add_special_tokens=False).input_ids[-1:]}
    colour_ids = [tokenizer(" " + c, add_special_tokens=False).input_ids[0] for c in COLOURS]
    classes = patch_classes(pictures)
    positions, targets = [], []
    k = j = 0
    while j < len(prompt_ids):
        if prompt_ids[j] != image_id:
            j += 1
            continue
        while j < len(prompt_ids) and prompt_ids[j] == image_id:
            j += 1
        end = j
        while end < len(prompt_ids) and prompt_ids[end] not in ends:
            end += 1
        coloured = classes[k][classes[k] >= 2]
        if end < len(prompt_ids) and prompt_ids[end] == stop_id and end > j and len(coloured):
            positions.append(end - 1)
            targets.append(colour_ids[int(torch.mode(coloured).values) - 2])
        k += 1
    if k != len(pictures):
        raise ValueError(f"{k} runs of image tokens in the prompt for {len(pictures)} pictures")
    return positions, targets


@dataclass(frozen=True)
class Item:
    """A training sample, encoded only when drawn (pictures take megabytes once processed)."""

    sample: object
    dataset: object

    @property
    def size(self) -> tuple[int, int]:
        """How long its prompt is, without encoding it: pictures, then characters."""
        return len(self.sample.images), len(self.sample.context)


def load_items(data_dir: Path, names: tuple[str, ...] = catalog.NAMES) -> dict[str, list[Item]]:
    """Every dataset's training samples, shortest first."""
    from milebench.data import load_dataset

    items = {}
    for name in names:
        dataset = load_dataset(data_dir, name)
        items[name] = sorted((Item(s, dataset) for s in dataset.samples), key=lambda i: i.size)
    return items


def curriculum_batch(by_task: dict[str, list[Item]], step: int, recipe: Recipe,
                     rng: random.Random) -> list[Item]:
    """A batch of examples, each of a dataset drawn by `weights`, from that dataset's
    shortest examples first, widening to all of them: a lookup is found far sooner among a
    few pictures than among sixteen, and then carries over to long prompts."""
    ramp = max(1.0, recipe.curriculum_ramp * recipe.steps)
    share = recipe.curriculum_start + (1 - recipe.curriculum_start) * min(1.0, step / ramp)
    weights = dict(recipe.weights)
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


def train_step(model: LlavaForConditionalGeneration, batch: list[Example], caption_weight: float = 0.0,
               bf16: bool = False) -> tuple[float, float]:
    """Accumulate the gradient of one batch: the cross-entropy of the answer tokens (and the
    EOS) given everything before them, plus `caption_weight` times that of the caption
    targets (`caption_targets`), each a mean over the batch's tokens. One example at a time,
    so no position is spent on padding (prompts in a batch differ by up to three times in
    length); the LM head runs only where a loss is taken. `bf16`: matrix products in
    bfloat16 (autocast; the weights stay float32). Returns the two losses."""
    answers = sum(e.length - e.answer_start for e in batch)
    captions = max(1, sum(len(e.caption_positions) for e in batch))
    answer_total = caption_total = 0.0
    for e in batch:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model.model(input_ids=e.input_ids[None], pixel_values=e.pixel_values).last_hidden_state[0]
        at = list(range(e.answer_start - 1, e.length - 1)) + e.caption_positions
        logits = model.lm_head(hidden[at]).float()
        n = e.length - e.answer_start
        answer = F.cross_entropy(logits[:n], e.input_ids[e.answer_start:], reduction="sum") / answers
        loss = answer
        if e.caption_positions:
            caption = F.cross_entropy(logits[n:], torch.tensor(e.caption_targets), reduction="sum") / captions
            loss = loss + caption_weight * caption
            caption_total += caption.item()
        loss.backward()
        answer_total += answer.item()
    return answer_total, caption_total


# ---------------------------------------------------------------- the vision tower ------

def patch_classes(pictures: Sequence[Image.Image]) -> torch.Tensor:
    """N RGB pictures -> (N, patches) the class under each 14 px patch, by the majority of its
    pixels: 0 the grey ground, 1 a grey shape, 2.. the colours of COLOURS."""
    palette = torch.tensor([(BACKGROUND,) * 3, *[(g,) * 3 for g in GREY_SHADES], *COLOURS.values()],
                           dtype=torch.float32)
    cls = torch.tensor([0, *[1] * len(GREY_SHADES), *range(2, 2 + len(COLOURS))])
    flat = torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).float()  # N, H, W, 3
    nearest = cls[torch.cdist(flat.reshape(-1, 3), palette).argmin(-1)].reshape(flat.shape[:3])
    n, h, w = nearest.shape
    patches = nearest.reshape(n, h // 14, 14, w // 14, 14).permute(0, 1, 3, 2, 4).reshape(n, (h // 14) * (w // 14), -1)
    return torch.mode(patches, dim=-1).values


def pretrain_vision(model: LlavaForConditionalGeneration, processor, data_dir: Path, recipe: "Recipe",
                    rng: random.Random) -> dict:
    """LLaVA's vision tower comes pretrained and stays frozen; ours is pretrained here, in
    seconds, on the training split's pictures: the features the projector reads must tell,
    through a linear probe, what lies under each patch (ground, grey shape, or which colour).
    Then it is frozen, as LLaVA's is, and the answer loss trains the projector and decoder."""
    t0 = time.perf_counter()
    files = sorted({p.name: p for p in Path(data_dir).glob(f"*/images/**/*.png")}.values())
    if not files:
        raise FileNotFoundError(f"{data_dir}: no training pictures to pretrain the vision tower on")
    pictures = [Image.open(f).convert("RGB") for f in files]
    labels = patch_classes(pictures)
    pixels = processor.image_processor(pictures, return_tensors="pt")["pixel_values"]
    tower = model.model.vision_tower
    layer = model.config.vision_feature_layer
    probe = torch.nn.Linear(tower.config.hidden_size, int(labels.max()) + 1)
    opt = torch.optim.AdamW([*tower.parameters(), *probe.parameters()], lr=recipe.vision_lr, weight_decay=0.0)
    losses = []
    for step in range(recipe.vision_steps):
        idx = torch.tensor([rng.randrange(len(files)) for _ in range(recipe.vision_batch)])
        feats = tower(pixels[idx], output_hidden_states=True).hidden_states[layer][:, 1:]
        loss = F.cross_entropy(probe(feats).flatten(0, 1), labels[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        feats = tower(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
        accuracy = float((probe(feats).argmax(-1) == labels).float().mean())
    for p in tower.parameters():
        p.requires_grad_(False)
    return {"vision_pictures": len(files), "vision_probe_accuracy": round(accuracy, 4),
            "vision_final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "vision_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- training --------------

def train(recipe: Recipe, data_dir: Path, log_every: int = 25, time_limit: float | None = None):
    """Train a fresh stand-in; returns (model, processor, stats)."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model, processor = build_untrained(recipe.seed, recipe.tie_embeddings)
    adapter = ModelAdapter.from_model(model, processor, chat_template=CHAT_TEMPLATE)
    t0 = time.perf_counter()
    by_task = load_items(Path(data_dir) / TRAIN_DIR, recipe.datasets)
    t_enc = time.perf_counter() - t0
    model.train()
    vision = pretrain_vision(model, processor, Path(data_dir) / TRAIN_DIR, recipe, rng) if recipe.vision_steps else {}
    if log_every and vision:
        print(f"vision tower: {vision}", flush=True)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or "embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    step, losses, caption_losses = 0, [], []
    t1 = time.perf_counter()
    while step < recipe.steps:
        batch = [encode_example(adapter, i.sample, i.dataset, captions=i.dataset.name in LABELLED)
                 for i in curriculum_batch(by_task, step, recipe, rng)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss, caption_loss = train_step(model, batch, recipe.caption_weight, recipe.bf16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        caption_losses.append(caption_loss)
        step += 1
        if log_every and step % log_every == 0:
            recent = losses[-log_every:]
            print(f"step {step}/{recipe.steps} loss {sum(recent) / len(recent):.3f} caption loss "
                  f"{sum(caption_losses[-log_every:]) / len(recent):.3f} ({time.perf_counter() - t1:.0f} s)", flush=True)
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            print(f"time limit {time_limit:.0f} s reached at step {step}", flush=True)
            break
    model.eval()
    stats = {"steps_done": step, "load_s": round(t_enc, 1), "train_s": round(time.perf_counter() - t1, 1),
             "final_loss": round(sum(losses[-log_every:]) / max(1, len(losses[-log_every:])), 4),
             "final_caption_loss": round(sum(caption_losses[-log_every:]) / max(1, len(caption_losses[-log_every:])), 4),
             "examples": sum(len(v) for v in by_task.values()), **vision}
    return model, processor, stats


# ---------------------------------------------------------------- the checkpoint --------

def default_folder(seed: int = 0, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else DEFAULT_ROOT
    return root / ("standin-llava" if seed == 0 else f"standin-llava-seed{seed}")


def is_current(folder: Path, recipe: Recipe) -> bool:
    return checkpoint.is_current(folder, recipe, RECIPE_FILE)


def build_standin_model(out: Path, recipe: Recipe, data_dir: Path | None = None, quiet: bool = False,
                      time_limit: float | None = None) -> Path:
    """Train and save atomically (build beside `out`, then rename), like csp.models.tiny."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DIR
    if recipe.data_version != GENERATOR_VERSION:
        raise ValueError(f"the recipe asks for learnable data of generator version {recipe.data_version}, but this "
                         f"code's generator is version {GENERATOR_VERSION}")
    marker = data_dir / MARKER_FILE
    if marker.is_file():  # a generated copy: train on it only if this generator made it with this recipe's split
        made = json.loads(marker.read_text(encoding="utf-8"))
        wanted = (recipe.data_version, recipe.train_samples, recipe.data_seed)
        if (made.get("generator_version"), made.get("train"), made.get("seed")) != wanted:
            if data_dir.resolve() != DEFAULT_DIR.resolve():
                raise ValueError(f"{marker}: made by generator version {made.get('generator_version')} with "
                                 f"train={made.get('train')} seed={made.get('seed')}, but the recipe needs version "
                                 f"{recipe.data_version}, train={recipe.train_samples} seed={recipe.data_seed}")
            ensure_learnable(data_dir, samples=made.get("samples", DEFAULT_SAMPLES), train=recipe.train_samples,
                             seed=recipe.data_seed)
    else:
        ensure_learnable(data_dir, train=recipe.train_samples, seed=recipe.data_seed)
    return checkpoint.save_trained(out, recipe, RECIPE_FILE, lambda: train(
        recipe, data_dir, log_every=0 if quiet else 25, time_limit=time_limit))


def ensure_standin_model(seed: int = 0, root: Path | None = None, **overrides) -> Path:
    """The trained stand-in under models/, trained on first use (about thirteen minutes on two cores)."""
    recipe = Recipe(seed=seed, **overrides)
    folder = default_folder(seed, root)
    if is_current(folder, recipe):
        return folder
    return build_standin_model(folder, recipe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the stand-in LLaVA on the learnable MileBench.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and save a checkpoint")
    defaults = Recipe()
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--steps", type=int, default=defaults.steps)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--threads", type=int, default=defaults.threads)
    t.add_argument("--caption-weight", type=float, default=defaults.caption_weight,
                   help="weight of the loss naming each labelled picture's colour (0: none)")
    t.add_argument("--train-samples", type=int, default=defaults.train_samples, help="per dataset")
    t.add_argument("--data-dir", type=Path, default=None, help="learnable data (default data/milebench-learnable)")
    t.add_argument("--out", type=Path, default=None, help="default models/standin-llava[-seedN]")
    t.add_argument("--time-limit", type=float, default=None, help="seconds; stops early (not deterministic)")
    e = sub.add_parser("ensure", help="train only when models/ lacks a current checkpoint (the runner's path)")
    e.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.command == "ensure":
        print(f"standin-llava (seed {args.seed}): {ensure_standin_model(args.seed)}")
        return
    recipe = Recipe(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    threads=args.threads, train_samples=args.train_samples,
                    caption_weight=args.caption_weight)
    out = args.out if args.out is not None else default_folder(args.seed)
    wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    build_standin_model(out, recipe, args.data_dir, time_limit=args.time_limit)
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)
    print(f"trained standin-llava (seed {args.seed}) in {time.perf_counter() - wall:.1f} s wall, "
          f"{cpu_s:.1f} s CPU -> {out}")


if __name__ == "__main__":
    main()
