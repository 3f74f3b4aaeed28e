"""Why a stand-in answers as it does: which answer tokens it gets, and where it looks.

Free-running scores (`standins.evaluate`) say how often a whole answer is right; they cannot
tell a model that finds the pictures but confuses their colours from one that finds nothing.
Two measurements on the scored split that can:

- `token_accuracy`: teacher-forced, for each answer position the share of samples whose gold
  token there is the argmax given the gold tokens before it ("red and blue": the first colour
  comes from the prefill, the second from the cache a method leaves). Positions, not words:
  a colour the tokenizer splits in two (" white" is `Ġwhit e` for the stand-in) shifts the
  later positions of that sample;
- `evidence_attention`: per layer and head, how much of the last prompt position's attention
  falls on the patches of the pictures that hold the answer's colours (the evidence), on other
  shapes' patches, on the grey ground, and on text; beside the evidence's share of the prompt.
  A head that puts 0.6 of its attention on 3% of the tokens has learnt to find the evidence.
  Answers that name no colour (the text needle's number, GPR1200's `imageK`) have none;
- `caption_accuracy`: in the datasets whose pictures are labelled or named, how often the
  label's last token names its picture's colour, teacher-forced: the first of the lookup's two
  hops (the label reads its picture; the answer then finds the asked label);
- `whole_answers` with `shuffle`: the share of samples whose whole answer is the argmax,
  teacher-forced, as given and with each sample's pictures shuffled among themselves (labels,
  question and options unchanged). If the share hardly drops, the answer does not rest on
  which picture is where: the options or the text give it away, or the task only asks which
  colours appear. The first stand-in that scored well on the label sets did so from the
  options alone (the gold was the pair sharing its colours with two decoys).

    python -m standins.diagnose [--model models/standin-llava] [--data data/milebench-learnable]
                                [--datasets ObjectExistence,ActionLocalization] [--limit 6] [--attention]
                                [--captions] [--shuffled]
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from csp.models.adapters import ModelAdapter
from milebench import catalog
from milebench.data import IMAGES_DIR, load_dataset
from milebench.learnable import COLOURS, LABELLED
from standins.llava_standin import encode_example, patch_classes

KINDS = ("evidence", "other shapes", "ground", "text")


def teacher_forced(adapter: ModelAdapter, data_dir: Path | str, name: str, limit: int | None = None,
                   shuffle: random.Random | None = None, captions: bool = False):
    """Per scored sample, its encoded example (`encode_example`, with its caption targets when
    `captions`) and the model's logits over it, teacher-forced. With `shuffle`, each sample's
    pictures are shuffled among themselves first (text and options unchanged)."""
    dataset = load_dataset(Path(data_dir), name)
    for s in dataset.samples[:limit]:
        if shuffle is not None:
            s = dataclasses.replace(s, images=shuffle.sample(s.images, len(s.images)))
        e = encode_example(adapter, s, dataset, captions=captions)
        with torch.no_grad():  # closed before the yield: grad mode is global, the caller's own
            logits = adapter.model(input_ids=e.input_ids[None], pixel_values=e.pixel_values).logits[0]
        yield e, logits


def answer_hits(adapter: ModelAdapter, data_dir: Path | str, name: str, limit: int | None = None,
                shuffle: random.Random | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: the gold answer tokens (EOS included) and whether each is the model's
    argmax, teacher-forced. With `shuffle`, each sample's pictures are shuffled among
    themselves first (text and options unchanged)."""
    out = []
    for e, logits in teacher_forced(adapter, data_dir, name, limit, shuffle):
        gold = e.input_ids[e.answer_start:]
        out.append((gold, logits[e.answer_start - 1: e.length - 1].argmax(-1) == gold))
    return out


def caption_accuracy(adapter: ModelAdapter, data_dir: Path | str, name: str,
                     limit: int | None = None) -> tuple[float, int] | None:
    """The share of labelled pictures whose label's last token ("<image> view 3." -> " 3") has
    the picture's colour as its argmax, and how many there were; None for a dataset without
    labelled pictures (not in `LABELLED`). A lookup by label takes two hops: the label reads
    its picture, then the answer finds the asked label. This measures the first alone, so a
    lookup that fails can be told apart: labels that read their pictures and answers that
    still miss mean the second hop is what is not learnt."""
    if name not in LABELLED:
        return None
    right = total = 0
    for e, logits in teacher_forced(adapter, data_dir, name, limit, captions=True):
        guess = logits[e.caption_positions].argmax(-1)
        right += int((guess == torch.tensor(e.caption_targets, dtype=torch.long)).sum())
        total += len(e.caption_targets)
    return right / max(1, total), total


def position_shares(hits: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Position by position, the share of samples whose answer token there is right."""
    right: list[list[bool]] = []
    for _, ok in hits:
        for k, v in enumerate(ok.tolist()):
            if k == len(right):
                right.append([])
            right[k].append(v)
    return [sum(r) / len(r) for r in right]


def whole_share(hits: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The share of samples whose every answer token is right."""
    return sum(bool(ok.all()) for _, ok in hits) / len(hits)


def token_accuracy(adapter: ModelAdapter, data_dir: Path | str, name: str,
                   limit: int | None = None) -> tuple[list[str], list[float]]:
    """The gold answer tokens of the first sample and, position by position, the share of
    samples whose token there is the model's argmax (teacher-forced; EOS included)."""
    hits = answer_hits(adapter, data_dir, name, limit)
    return adapter.processor.tokenizer.convert_ids_to_tokens(hits[0][0].tolist()), position_shares(hits)


def whole_answers(adapter: ModelAdapter, data_dir: Path | str, name: str, limit: int | None = None,
                  shuffle: random.Random | None = None) -> float:
    """The share of samples whose every answer token (EOS included) is the argmax, teacher-
    forced; with `shuffle`, each sample's pictures are shuffled among themselves first."""
    return whole_share(answer_hits(adapter, data_dir, name, limit, shuffle))


def token_kinds(adapter: ModelAdapter, sample, dataset, input_ids: torch.Tensor) -> torch.Tensor:
    """For each prompt position: 0 evidence (a patch on the shape of a picture whose colour the
    answer names), 1 a patch on another shape, 2 a ground patch, 3 text. Pictures dropped by
    MileBench's truncation are the first ones, so the kept ones are the last."""
    classes = patch_classes([Image.open(dataset.root / IMAGES_DIR / p).convert("RGB") for p in sample.images])
    image_pos = (input_ids == adapter.image_token_id).nonzero().flatten()
    kept = image_pos.numel() // classes.shape[1]
    classes = classes[classes.shape[0] - kept:]
    answer = torch.tensor([2 + i for i, c in enumerate(COLOURS) if c in sample.response], dtype=torch.long)
    picture_has = torch.isin(classes, answer).any(-1, keepdim=True)  # its shape has an answer colour
    kinds = torch.full((input_ids.numel(),), 3)
    kinds[image_pos] = torch.where((classes > 0) & picture_has, 0, torch.where(classes > 0, 1, 2)).flatten()
    return kinds


def evidence_attention(eager: LlavaForConditionalGeneration, adapter: ModelAdapter, data_dir: Path | str,
                       name: str, limit: int | None = 6) -> tuple[np.ndarray, float]:
    """(layers, heads, KINDS) the last prompt position's attention mass on each kind of token,
    averaged over samples, and the evidence's share of the prompt's tokens. `eager`: the
    model loaded with eager attention, the only kind that returns its weights."""
    dataset = load_dataset(Path(data_dir), name)
    total, share, n = None, 0.0, 0
    for s in dataset.samples[:limit]:
        e = encode_example(adapter, s, dataset)
        prompt = e.input_ids[: e.answer_start]
        kinds = token_kinds(adapter, s, dataset, prompt)
        with torch.no_grad():
            out = eager(input_ids=prompt[None], pixel_values=e.pixel_values, output_attentions=True)
        last = torch.stack([a[0, :, -1, :] for a in out.attentions])  # layers, heads, keys
        mass = torch.stack([last[..., kinds == k].sum(-1) for k in range(len(KINDS))], -1).numpy()
        total = mass if total is None else total + mass
        share += float((kinds == 0).float().mean())
        n += 1
    return total / n, share / n


def main(argv: Sequence[str] | None = None) -> None:
    from milebench.learnable import DEFAULT_DIR
    from standins.evaluate import load_standin
    from standins.llava_standin import default_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_folder(0))
    ap.add_argument("--data", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--datasets", default=",".join(catalog.NAMES))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--attention", action="store_true", help="also the attention on the evidence, per layer and head")
    ap.add_argument("--captions", action="store_true",
                    help="also how often each labelled picture's label names its colour (the lookup's first hop)")
    ap.add_argument("--shuffled", action="store_true",
                    help="also whole answers right with each sample's pictures shuffled (does the answer rest on them?)")
    args = ap.parse_args(argv)
    adapter = load_standin(args.model)
    eager = (LlavaForConditionalGeneration.from_pretrained(str(args.model), attn_implementation="eager").eval()
             if args.attention else None)
    for name in args.datasets.split(","):
        hits = answer_hits(adapter, args.data, name, args.limit)
        tokens = adapter.processor.tokenizer.convert_ids_to_tokens(hits[0][0].tolist())
        print(f"{name:24s} " + " ".join(f"{t}:{a:.2f}" for t, a in zip(tokens, position_shares(hits))), flush=True)
        read = caption_accuracy(adapter, args.data, name, args.limit) if args.captions else None
        if read is not None:
            print(f"  labels naming their picture's colour: {read[0]:.2f} of {read[1]}", flush=True)
        if args.shuffled:
            shuffled = whole_answers(adapter, args.data, name, args.limit, random.Random(0))
            print(f"  whole answers right: {whole_share(hits):.2f}, with the pictures shuffled {shuffled:.2f}", flush=True)
        if args.attention:
            mass, share = evidence_attention(eager, adapter, args.data, name, args.limit or 6)
            print(f"  evidence is {share:.3f} of the prompt; attention of the last prompt position "
                  f"({' / '.join(KINDS)}):")
            for layer, heads in enumerate(mass):
                print(f"  layer {layer}: " + "  ".join(f"h{h} " + "/".join(f"{v:.2f}" for v in m)
                                                     for h, m in enumerate(heads)), flush=True)


if __name__ == "__main__":
    main()
