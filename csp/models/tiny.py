"""Tiny random-weight vision-language checkpoints built offline.

No machine here reaches a model hub, yet the harness must exercise the exact loading path of
a real checkpoint. So we build a tokenizer, an image processor, a processor and a model of
the real classes with tiny shapes, ``save_pretrained`` them into a git-ignored folder and let
everything else load them back with ``from_pretrained``. The build is a pure function of the
seed: the same seed gives bit-identical files.

    python -m csp.models.tiny --family llava --out models/tiny-llava --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from csp.models.adapters import LLAVA_SYSTEM_PROMPT, ImageOnlyInternVLProcessor, llava_image_processor_class
from csp.models.tiny_authors import WRITERS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / "models"
FAMILIES = ("llava", "internvl", "mobilevlm", "internvl-chat")
# Bump when the recipe changes so stale folders under models/ are rebuilt, not reused.
RECIPE_VERSION = 3
RECIPE_FILE = "tiny_recipe.json"
VOCAB_SIZE = 1024

# A fixed English corpus for the tokenizer: everyday words, digits and punctuation, so that
# generated benchmark text tokenizes into a realistic mix of short and long pieces.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture shows a man riding a bicycle down a
busy street while people walk past the shops. In the second image, the same man is standing
next to a red car. What changed between the first and the last frame of the video?
Answer the question using a single word or phrase. Choose the best option from the list.
The table lists the name, the age and the city of each person. How many people live in Paris?
There are three cats on the sofa, two dogs in the garden and one bird in the cage.
Given the images of a comic strip, describe what happens next in the story.
The weather today is sunny with a light wind from the north; tomorrow it will rain.
Please read the document carefully and find the sentence that mentions the needle.
A woman is holding an umbrella, a child is playing with a ball, and an old man is reading.
Which of the following images is most similar to the query image? Your answer is: B.
The robot moves the block to the left, then picks up the green cup and places it on the tray.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 25 50 100 1000 2024; times: 10:30, 7:45 pm.
Questions and answers about slides, charts, maps, diagrams, photographs and screenshots.
Is the light on or off? Yes. No. Maybe. It is not clear from the images provided.
Count the objects, compare their colours, sizes and positions, and explain your reasoning.
Every morning the baker opens the small shop on the corner and sells fresh bread, cakes and coffee.
Students in the library were writing notes about history, science, music, art and mathematics.
The train leaves the station at eight o'clock and arrives in the mountains before lunch time.
She opened the window, looked at the river and saw boats carrying boxes of fruit and vegetables.
During the football match the crowd cheered loudly when the young player scored the final goal.
A screenshot of a web page shows a search box, a menu button and a list of recent messages.
The scientist measured the temperature of the water every hour and wrote the results in a table.
On the map, the blue line marks the road from the village to the lake, about five miles away.
Two friends are sitting at a wooden table, sharing a pizza and talking about their holiday plans.
The instructions say: first open the lid, then pour the liquid slowly, and finally close it.
In the kitchen there is a white fridge, a black oven, a sink with dirty dishes and a bowl of apples.
The chart compares the sales of three companies over four years; the yellow bar grows every year.
An airplane is flying above the clouds while the sun sets behind the hills in the distance.
The teacher asked the class to draw a circle, a square and a triangle, and to colour them.
Who is wearing a hat? What is the person on the right doing? Where was this photograph taken?
The story continues when the little girl finds a key under the stone and opens the old door.
Historians believe that the ancient city was built near the coast two thousand years ago.
"""

# A user turn's content in jinja: a string as it is, structured parts with each image as
# LLaVA's image token followed by a newline.
LLAVA_JINJA_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
# Jinja form of CHAT_TEMPLATES["llava_llama_2"] in csp/models/adapters.py (single user turn; images in
# structured content become the image token). BOS comes from the tokenizer, not the template.
LLAVA_LLAMA_2_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] != 'user' %}"
    "{{ raise_exception('llava_llama_2 renders user turns only') }}"
    "{% endif %}"
    "[INST] <<SYS>>\n" + LLAVA_SYSTEM_PROMPT + "\n<</SYS>>\n\n"
    + LLAVA_JINJA_CONTENT +
    " [/INST]"
    "{% endfor %}"
)
# A ChatML template in the style of InternVL's -hf checkpoints.
INTERNVL_JINJA = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_bpe(special_tokens: list[str]) -> Tokenizer:
    """Byte-level BPE on the built-in corpus; the trainer is deterministic for fixed input."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tok


def build_llava_tokenizer(image_token: bool = True) -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer: BOS prepended at encode time, ``<image>`` a special token (or, as
    in the authors' LLaVA-recipe checkpoints, no ``<image>`` at all)."""
    tok = _train_bpe(["<unk>", "<s>", "</s>", "<pad>", *(["<image>"] if image_token else [])])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        **({"model_specific_special_tokens": {"image_token": "<image>"}} if image_token else {}),
    )


def build_internvl_tokenizer() -> PreTrainedTokenizerFast:
    """A Qwen2-like tokenizer (no BOS, ChatML turn tokens) with InternVL's image tokens."""
    tok = _train_bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_specific_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )


def got_ocr2_image_processor_class():
    try:
        import torchvision  # noqa: F401
        from transformers import GotOcr2ImageProcessor as cls
    except ImportError:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil as cls
    return cls


def _internvl_processor_class():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return ImageOnlyInternVLProcessor
    return InternVLProcessor


def build_llava(seed: int, image_size: int = 56, text: dict | None = None,
                vision: dict | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """LLaVA-1.5 in miniature: 56 px images, 14 px patches, CLS dropped => 16 tokens/image.
    `image_size` and the `text` / `vision` config fields are the trained stand-in's knobs
    (standins/llava_standin.py); the defaults are the tiny random model's."""
    tokenizer = build_llava_tokenizer()
    patch = 14
    tokens_per_image = (image_size // patch) ** 2
    image_processor = llava_image_processor_class()(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_pad=True,  # LLaVA-1.5 pads to a square with the mean colour before resizing
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_LLAMA_2_JINJA,
        image_token="<image>",
    )
    text_config = LlamaConfig(**{
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # Wider than the usual 0.02 so random logits are well separated and greedy decoding
        # does not hinge on rounding differences between attention kernels.
        "initializer_range": 0.1,
        **(text or {}),
    })
    vision_config = CLIPVisionConfig(
        **{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
           "projection_dim": 32, **(vision or {})},
        image_size=image_size,
        patch_size=patch,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=tokens_per_image,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, processor


def build_internvl(seed: int) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    """InternVL in miniature: one 112 px tile, 14 px patches, pixel shuffle 0.5 => 16 tokens."""
    tokenizer = build_internvl_tokenizer()
    image_size, patch, downsample = 112, 14, 0.5
    tokens_per_image = int((image_size // patch) ** 2 * downsample**2)
    image_processor = got_ocr2_image_processor_class()(
        size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        crop_to_patches=False,
        min_patches=1,
        max_patches=1,
    )
    processor = _internvl_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=INTERNVL_JINJA,
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    vision_config = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[image_size, image_size],
        patch_size=[patch, patch],
    )
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_image,
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, processor


BUILDERS = {"llava": build_llava, "internvl": build_internvl}


def _recipe(family: str, seed: int) -> dict:
    return {"family": family, "seed": seed, "recipe_version": RECIPE_VERSION}


def _is_current(folder: Path, family: str, seed: int) -> bool:
    marker = folder / RECIPE_FILE
    try:
        return json.loads(marker.read_text()) == _recipe(family, seed)
    except (OSError, ValueError):
        return False


def build_tiny_model(family: str, out: Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``out`` atomically: build beside it, then rename.

    Concurrent builders (parallel test workers) race on the final rename; the loser drops its
    copy and uses the winner's, which is bit-identical anyway.
    """
    if family not in BUILDERS and family not in WRITERS:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        if family in WRITERS:  # the authors' own layout, not save_pretrained's
            WRITERS[family](tmp, seed)
        else:
            model, processor = BUILDERS[family](seed)
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(_recipe(family, seed), sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out.exists() and not _is_current(out, family, seed):
            # A folder from an older recipe or another seed: move it aside, then install ours.
            stale = Path(tempfile.mkdtemp(prefix=f".{out.name}.stale-", dir=out.parent))
            try:
                os.rename(out, stale / "old")
            except OSError:
                pass  # someone else moved it already
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not _is_current(out, family, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_folder(family: str, root: Path | None = None, seed: int = 0) -> Path:
    root = Path(root) if root is not None else DEFAULT_ROOT
    return root / (f"tiny-{family}" if seed == 0 else f"tiny-{family}-seed{seed}")


def ensure_tiny_model(family: str = "llava", root: Path | None = None, seed: int = 0) -> Path:
    """Return the tiny checkpoint folder under ``root`` (default <repo>/models), building it once."""
    folder = default_folder(family, root, seed)
    if _is_current(folder, family, seed):
        return folder
    return build_tiny_model(family, folder, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-weight VLM checkpoint.")
    parser.add_argument("--family", choices=FAMILIES, default="llava")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default models/tiny-<family>)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else default_folder(args.family, None, args.seed)
    start = time.perf_counter()
    build_tiny_model(args.family, out, args.seed)
    print(f"built tiny {args.family} (seed {args.seed}) in {time.perf_counter() - start:.2f} s -> {out}")


if __name__ == "__main__":
    main()
