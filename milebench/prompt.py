"""Turn a sample into exactly the prompt MileBench builds: choices appended, placeholders
replaced by markers, the context truncated to the model's token budget from the front, the
adjacent-marker newline rule, then the chat template.

The truncation is reproduced step for step (fragment by fragment, from the question
backwards, counting a fixed number of tokens per image and re-decoding every kept fragment)
because which images a model sees decides its score: a "cleaner" truncation would give
different numbers than the published ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from milebench import catalog
from milebench.data import COMBINED_DIR, IMAGES_DIR, DataError, DatasetFile, Sample

MARKER = "<ImageHere>"


@dataclass
class BuiltPrompt:
    text: str  # fed to the processor: template applied, markers replaced by the image token
    question: str  # truncated text with <ImageHere>, before the template (saved in pred.json)
    images: list[str] = field(default_factory=list)  # kept image paths, in the order fed


def choice_block(sample: Sample) -> str:
    """The choice list MileBench appends to a multiple-choice context ('' for open-ended)."""
    if sample.choices is None:
        return ""
    lettered = catalog.BY_NAME[sample.dataset].lettered_choices if sample.dataset in catalog.BY_NAME else True
    lines = [(f"{chr(65 + i)}. " if lettered else "") + opt for i, opt in enumerate(sample.choices)]
    return "\nChoice list: \n" + "\n".join(lines) + "\nYour answer is: "


def replace_placeholders(text: str, n_images: int, combine_image: bool) -> str:
    """`{image#k}` / `{table#k}` for k = 1..n_images only; other braces stay as written."""
    for k in range(1, n_images + 1):
        repl = f"<Image {k}> " if combine_image else MARKER
        text = text.replace(f"{{image#{k}}}", repl).replace(f"{{table#{k}}}", repl)
    return text


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def truncate(
    text: str,
    images: list[str],
    *,
    instruction: str,
    tokenizer: Any,
    max_context_len: int,
    tokens_per_image: int,
    take_images: bool = True,
) -> tuple[str, list[str]]:
    """Keep the question and as many preceding fragments and images as fit in
    `max_context_len - len(instruction tokens)`; return (rejoined text, kept images).

    Fragments are walked from the last one (the question) backwards. When even the question
    does not fit, only its last `budget` tokens are kept (Python slicing, so a budget of 0
    keeps it whole, as MileBench does). Images are taken from the end of `images`."""
    budget = max_context_len - len(_token_ids(tokenizer, instruction))
    remaining = list(images)
    kept_chunks: list[list[int]] = []
    kept_images: list[str] = []
    used = 0
    starts_with_image = False
    for fragment in reversed(text.split(MARKER)):
        ids = _token_ids(tokenizer, fragment)
        if used + len(ids) > budget:
            if not kept_chunks:
                kept_chunks.insert(0, ids[-budget:])
            break
        starts_with_image = False
        kept_chunks.insert(0, ids)
        used += len(ids)
        if take_images:
            if used + tokens_per_image > budget:
                break
            if remaining:
                starts_with_image = True
                kept_images.insert(0, remaining.pop())
                used += tokens_per_image
    rejoined = MARKER.join(tokenizer.decode(chunk) for chunk in kept_chunks)
    if starts_with_image:
        rejoined = MARKER + rejoined
    return rejoined, kept_images


def build_prompt(
    sample: Sample,
    *,
    tokenizer: Any,
    image_token: str,
    template: str,
    max_context_len: int,
    tokens_per_image: int,
    combine_image: bool = False,
    dataset_root: Path | None = None,
) -> BuiltPrompt:
    """The model-ready prompt of one sample. Image paths are relative to the dataset's
    `images/` (or `combined_1_images/`) folder unless `dataset_root` is given."""
    if max_context_len <= 0 or tokens_per_image < 0:
        raise ValueError(f"max_context_len must be > 0 and tokens_per_image >= 0, got "
                         f"{max_context_len} and {tokens_per_image}")
    if "{prompt}" not in template:
        raise ValueError(f"chat template must contain a {{prompt}} field: {template!r}")
    text = sample.context + choice_block(sample)
    text = replace_placeholders(text, len(sample.images), combine_image)
    if combine_image:
        if len(sample.combined_images) != 1:
            raise DataError(f"dataset {sample.dataset}, sample {sample.sample_id}, task_instance: field "
                            f"'combined_1_images' must hold exactly one image for the combined-image mode, "
                            f"got {len(sample.combined_images)}")
        rejoined, _ = truncate(text, [], instruction=sample.instruction, tokenizer=tokenizer,
                               max_context_len=max_context_len, tokens_per_image=tokens_per_image,
                               take_images=False)
        question = MARKER + "\n" + sample.instruction + "\n" + rejoined
        kept, folder = list(sample.combined_images), COMBINED_DIR
    else:
        rejoined, kept = truncate(text, sample.images, instruction=sample.instruction, tokenizer=tokenizer,
                                  max_context_len=max_context_len, tokens_per_image=tokens_per_image)
        question = sample.instruction + "\n" + rejoined
        folder = IMAGES_DIR
    model_text = question.replace(MARKER + MARKER, MARKER + "\n" + MARKER + "\n").replace(MARKER, image_token)
    if dataset_root is not None:
        kept = [str(Path(dataset_root) / folder / p) for p in kept]
    return BuiltPrompt(text=template.format(prompt=model_text), question=question, images=kept)


def prepare_sample(adapter: Any, sample: Sample, dataset: DatasetFile, max_context_len: int,
                   combine_image: bool = False) -> tuple[Any, list]:
    """MileBench's prompt for `sample` (truncated, markers turned into the model's image token,
    no chat template yet) and its kept images, opened. The chat template is applied by
    `adapter.format_prompt` at encoding, since a processor's jinja template may hold braces
    that str.format would eat. An unreadable image is a DataError naming the sample."""
    from PIL import Image

    built = build_prompt(
        sample, tokenizer=adapter.processor.tokenizer, image_token=adapter.image_token, template="{prompt}",
        max_context_len=max_context_len, tokens_per_image=int(adapter.tokens_per_image),
        combine_image=combine_image, dataset_root=dataset.root)
    images = []
    for p in built.images:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"dataset {sample.dataset}, sample {sample.sample_id}: image {p} cannot be read: {e}")
    return built, images
