"""Model adapters: one small object per model family that hides how a checkpoint is loaded,
prompted and tokenized, so the engine and the benchmark runner never branch on the family.

The adapter knows nothing about benchmarks or pruning. A tiny random checkpoint from
``csp.models.tiny`` and a real one (``llava-hf/llava-1.5-7b-hf``) go through the same code; only the
path differs.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    BatchFeature,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    ProcessorMixin,
)

from csp.models.authors_llava import AuthorsLlavaForConditionalGeneration, load_authors_llava
from csp.models.llava_encoding import ENCODINGS, expand_image_tokens, follow_sentencepiece, left_pad, llava_input_ids

# LLaVA's Llama-2 system prompt; the tiny model's jinja template (csp/models/tiny.py) is built
# from it too, so the two renderings cannot drift apart. No braces: it sits in a str.format template.
LLAVA_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)

# Vicuna v1's system line (LLaVA's and MobileVLM's `conv_vicuna_v1`)
VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
INTERNLM2_SYSTEM_PROMPT = "You are an AI assistant whose name is InternLM (书生·浦语)."

# Conversation templates keyed by name, as the authors' conversation code renders one user turn
# and an open assistant turn; each has exactly one ``{prompt}`` field. BOS is not part of a
# template: the tokenizer adds it, as Llama tokenizers do.
#   llava_llama_2   LLaVA-1.5 in the CSP authors' runs (Llama-2 style, LLaVA's system prompt)
#   vicuna_v1       MobileVLM-V2's `v1` (SeparatorStyle.TWO: system, " ", "USER: ...", " ", "ASSISTANT:")
#   internlm2_chat  the `internlm2-chat` template the CSP authors ran InternVL-Chat-1.0 with
#                   (SeparatorStyle.MPT: ChatML turns, no newline after <|im_end|>)
CHAT_TEMPLATES: dict[str, str] = {
    "llava_llama_2": "[INST] <<SYS>>\n" + LLAVA_SYSTEM_PROMPT + "\n<</SYS>>\n\n{prompt} [/INST]",
    "vicuna_v1": VICUNA_SYSTEM_PROMPT + " USER: {prompt} ASSISTANT:",
    "internlm2_chat": "<|im_start|>system\n" + INTERNLM2_SYSTEM_PROMPT + "<|im_end|><|im_start|>user\n{prompt}"
                      "<|im_end|><|im_start|>assistant\n",
}
# Stop words the authors' KeywordsStoppingCriteria watched for, beyond the EOS token: the
# template's separator. Vicuna's is EOS itself ("</s>"); internlm2-chat's "<|im_end|>" is several
# tokens of a Llama vocabulary, so decoding watches the text. As in their code, generation stops
# once the text holds it and the answer keeps what was generated.
STOP_STRINGS: dict[str, tuple[str, ...]] = {"internlm2_chat": ("<|im_end|>",)}
PROCESSOR_TEMPLATE = "processor"  # use the checkpoint's own jinja chat template

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# torch dtypes by config name; the runner (milebench/runner/settings.py) and the scripts take
# their valid names from here, plus "auto" where they resolve one by device.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """InternVLProcessor without the video processor.

    transformers' InternVLProcessor insists on a video processor, and every video processor
    needs torchvision, which has no CPU build on the package index this project installs
    from. Images are all we feed, so this subclass narrows ``__init__`` to the image
    processor and tokenizer; processing of images and text is InternVLProcessor's own. Saved
    files name the parent class, so a machine with torchvision loads them with AutoProcessor.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["processor_class"] = InternVLProcessor.__name__
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        if data.get("processor_class") == type(self).__name__:
            data["processor_class"] = InternVLProcessor.__name__
            text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            tokenizer_config.write_text(text, encoding="utf-8")
        return result


@dataclass(frozen=True)
class _Family:
    model_class: type[PreTrainedModel]
    default_template: str
    # transformers-native checkpoints load with model_class.from_pretrained; the LLaVA-recipe
    # checkpoints in their authors' layout through csp.models.authors_llava
    authors_layout: bool = False


FAMILIES: dict[str, _Family] = {
    "llava": _Family(LlavaForConditionalGeneration, "llava_llama_2"),
    "internvl": _Family(InternVLForConditionalGeneration, PROCESSOR_TEMPLATE),
    "mobilevlm": _Family(AuthorsLlavaForConditionalGeneration, "vicuna_v1", authors_layout=True),
    "internvl-chat": _Family(AuthorsLlavaForConditionalGeneration, "internlm2_chat", authors_layout=True),
}
FAMILY_BY_MODEL_TYPE = {"llava": "llava", "internvl": "internvl"}  # llava_authors: its config's source_family
DEFAULT_IMAGE_TOKENS = {"llava": "<image>", "internvl": "<IMG_CONTEXT>", "mobilevlm": "<image>", "internvl-chat": "<image>"}
# families whose prompts LLaVA's own encoding (text chunks between images tokenized apart) fits
LLAVA_RECIPE = ("llava", "mobilevlm", "internvl-chat")


@dataclass
class ModelAdapter:
    """What the engine and the runner need to know about one loaded model."""

    family: str
    model: PreTrainedModel
    processor: ProcessorMixin | None
    image_token: str  # placeholder the processor expands, e.g. "<image>"
    image_token_id: int  # id marking visual positions in the EXPANDED input_ids
    eos_token_ids: list[int]
    pad_token_id: int
    tokens_per_image: int  # image_token_id positions per image after expansion
    chat_template: str  # a key of CHAT_TEMPLATES, or "processor"
    # "processor": the checkpoint's processor tokenizes the whole prompt and expands images;
    # "llava": LLaVA's original encoding (csp/models/llava_encoding.py), LLaVA-recipe families only.
    encoding: str = "processor"
    # text that ends generation beyond the EOS ids (the template's separator, STOP_STRINGS)
    stop_strings: tuple[str, ...] = ()
    _images_kwargs: dict = field(default_factory=dict, repr=False)

    def attention_modules(self) -> list[torch.nn.Module]:
        """Decoder self-attention modules of the language model, in layer order."""
        return [layer.self_attn for layer in language_model(self.model).layers]

    def format_prompt(self, prompt: str) -> str:
        if self.chat_template == PROCESSOR_TEMPLATE:
            processor = self._require_processor("format_prompt")
            conversation = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
            return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return CHAT_TEMPLATES[self.chat_template].format(prompt=prompt)

    def encode(self, prompts: list[str], images: list[list[Image.Image]]) -> BatchFeature:
        """Tokenize already formatted prompts with their images into a LEFT-padded batch.

        Each prompt must hold exactly as many ``image_token`` placeholders as it has images;
        each becomes ``tokens_per_image`` visual positions. With ``encoding="llava"`` the ids
        are LLaVA's (text chunks between images tokenized separately), else the processor's.
        """
        processor = self._require_processor("encode")
        if len(prompts) != len(images):
            raise ValueError(f"encode: {len(prompts)} prompts but {len(images)} image lists")
        for i, (prompt, imgs) in enumerate(zip(prompts, images)):
            n_marks = prompt.count(self.image_token)
            if n_marks != len(imgs):
                raise ValueError(
                    f"encode: prompt {i} holds {n_marks} {self.image_token!r} placeholders but has "
                    f"{len(imgs)} images"
                )
        flat = [img.convert("RGB") for imgs in images for img in imgs]
        if self.encoding == "llava":
            return self._encode_llava(processor, prompts, flat)
        batch = processor(
            text=list(prompts),
            images=flat or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **(self._images_kwargs if flat else {}),
        )
        batch = batch.to(self.model.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        return batch

    def _encode_llava(self, processor: ProcessorMixin, prompts: list[str], flat: list[Image.Image]) -> BatchFeature:
        rows = [
            expand_image_tokens(
                llava_input_ids(p, processor.tokenizer, self.image_token, self.image_token_id),
                self.image_token_id,
                self.tokens_per_image,
            )
            for p in prompts
        ]
        input_ids, attention_mask = left_pad(rows, self.pad_token_id)
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if flat:
            pixels = processor.image_processor(flat, return_tensors="pt", **self._images_kwargs)["pixel_values"]
            data["pixel_values"] = pixels.to(self.model.dtype)
        return BatchFeature(data).to(self.model.device)

    def decode(self, ids) -> str:
        processor = self._require_processor("decode")
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _require_processor(self, what: str) -> ProcessorMixin:
        if self.processor is None:
            raise ValueError(f"{what}: this {self.family} adapter was built without a processor")
        return self.processor

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        processor: ProcessorMixin | None = None,
        *,
        chat_template: str | None = None,
        encoding: str | None = None,
    ) -> ModelAdapter:
        """Describe an already built model (e.g. random weights with 7B shapes, no processor).

        ``encoding="llava"`` gives the adapter its own copy of the processor whose tokenizer
        follows SentencePiece's dummy-prefix rule (see csp/models/llava_encoding.py), so prompt
        encoding and MileBench's truncation count tokens as LLaVA's tokenizer does."""
        config = model.config
        family = FAMILY_BY_MODEL_TYPE.get(config.model_type) or getattr(config, "source_family", None) or None
        if family is None:
            raise ValueError(
                f"unsupported model type {config.model_type!r}; supported families: {sorted(FAMILIES)}"
            )
        template = chat_template or FAMILIES[family].default_template
        check_template_name(template)
        encoding = encoding or ("llava" if FAMILIES[family].authors_layout else "processor")
        check_encoding(family, encoding)
        if encoding == "llava" and processor is not None:
            processor = copy.copy(processor)
            processor.tokenizer = follow_sentencepiece(processor.tokenizer)
        if template == PROCESSOR_TEMPLATE and (processor is None or not getattr(processor, "chat_template", None)):
            raise ValueError("chat_template='processor' needs a processor that carries a chat template")

        if processor is not None:
            image_token = processor.image_token
            image_token_id = int(processor.image_token_id)
        else:
            image_token = DEFAULT_IMAGE_TOKENS[family]
            image_token_id = int(config.image_token_id)
        if image_token_id != int(config.image_token_id):
            raise ValueError(
                f"processor image token {image_token!r} has id {image_token_id} but the model config "
                f"expects image_token_id {config.image_token_id}"
            )
        tokens_per_image = _tokens_per_image(family, config)
        eos, pad = _special_ids(model, processor)
        images_kwargs = {"crop_to_patches": False} if family == "internvl" else {}
        stop = STOP_STRINGS.get(template, ()) if template != PROCESSOR_TEMPLATE else ()
        return cls(
            family=family,
            model=model,
            processor=processor,
            image_token=image_token,
            image_token_id=image_token_id,
            eos_token_ids=eos,
            pad_token_id=pad,
            tokens_per_image=tokens_per_image,
            chat_template=template,
            encoding=encoding,
            stop_strings=stop,
            _images_kwargs=images_kwargs,
        )


def language_model(model: PreTrainedModel) -> torch.nn.Module:
    """The decoder stack (an object with ``.layers``) inside a vision-language model."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"cannot find the language model's decoder layers in {type(model).__name__}")
    return lm


def _tokens_per_image(family: str, config) -> int:
    if FAMILIES[family].authors_layout:
        return int(config.image_seq_length)  # set from the projector (LDPv2's pooled grid) at load
    vision = config.vision_config
    if family == "llava":
        image_size, patch = int(vision.image_size), int(vision.patch_size)
        n = (image_size // patch) ** 2
        # "full" keeps the CLS token, "default" drops it.
        return n + 1 if config.vision_feature_select_strategy == "full" else n
    size = vision.image_size if isinstance(vision.image_size, (list, tuple)) else (vision.image_size,) * 2
    patch = vision.patch_size if isinstance(vision.patch_size, (list, tuple)) else (vision.patch_size,) * 2
    n = (int(size[0]) // int(patch[0])) * (int(size[1]) // int(patch[1]))
    return int(n * config.downsample_ratio**2)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    return [int(x)]


def _special_ids(model: PreTrainedModel, processor: ProcessorMixin | None) -> tuple[list[int], int]:
    """EOS ids from the generation config and the tokenizer (union, in that order) and a pad id."""
    gen = getattr(model, "generation_config", None)
    text = model.config.get_text_config()
    tokenizer = getattr(processor, "tokenizer", None)
    eos: list[int] = []
    for source in (
        getattr(gen, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(text, "eos_token_id", None),
    ):
        for token in _as_list(source):
            if token not in eos:
                eos.append(token)
    if not eos:
        raise ValueError(f"{type(model).__name__}: no EOS token id in the generation config, tokenizer or config")
    pad = next(
        (
            int(p)
            for p in (
                getattr(tokenizer, "pad_token_id", None),
                getattr(gen, "pad_token_id", None),
                getattr(text, "pad_token_id", None),
            )
            if p is not None
        ),
        eos[0],
    )
    return eos, pad


def check_encoding(family: str, encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r} is unknown; expected one of {list(ENCODINGS)}")
    if encoding == "llava" and family not in LLAVA_RECIPE:
        raise ValueError(f"encoding='llava' is LLaVA's own prompt encoding; family {family!r} needs 'processor'")
    if encoding == "processor" and family in FAMILIES and FAMILIES[family].authors_layout:
        raise ValueError(f"family {family!r} is encoded as its authors' LLaVA code does: encoding must be 'llava'")


def check_template_name(name: str) -> None:
    if name != PROCESSOR_TEMPLATE and name not in CHAT_TEMPLATES:
        raise ValueError(
            f"unknown chat_template {name!r}; expected one of {sorted(CHAT_TEMPLATES)} or {PROCESSOR_TEMPLATE!r}"
        )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_load_args(family: str, dtype: str, device: str, attn_implementation: str) -> None:
    """Every check that needs no model: bad configuration fails before anything is loaded."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {sorted(FAMILIES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; expected one of {sorted(DTYPES)}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} is unknown; expected one of {list(ATTN_IMPLEMENTATIONS)}"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if attn_implementation == "flash_attention_2":
        if not device.startswith("cuda"):
            raise ValueError(f"attn_implementation 'flash_attention_2' needs a CUDA device, got device {device!r}")
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "attn_implementation 'flash_attention_2' needs the flash_attn package "
                "(install with WITH_FLASH_ATTN=1 bash scripts/setup.sh)"
            )
        if dtype == "float32":
            raise ValueError("attn_implementation 'flash_attention_2' needs dtype float16 or bfloat16, got float32")


def check_path(path: str) -> None:
    if not path:
        raise ValueError("model path is empty")
    local = Path(path).expanduser()
    if not local.exists():
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1 or not _HUB_ID.match(path)
        if looks_local:
            raise FileNotFoundError(f"model.path={path!r} does not exist and is not a hub id (owner/name)")
    elif not (local / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path!r} has no config.json: not a saved checkpoint")


def _load_processor(family: str, path: str) -> ProcessorMixin:
    if family == "internvl" and importlib.util.find_spec("torchvision") is None:
        return ImageOnlyInternVLProcessor.from_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def llava_image_processor_class():
    """The torchvision-backed class when available, else the PIL one (same behaviour)."""
    try:
        import torchvision  # noqa: F401
        from transformers import LlavaImageProcessor as cls
    except ImportError:
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil as cls
    return cls


def _ensure_square_padding(family: str, processor: ProcessorMixin, path: str) -> None:
    """LLaVA-1.5 pads every image to a square in the image processor's mean colour before
    resizing. The -hf checkpoints ship a plain CLIP image processor that centre-crops
    instead, so swap in transformers' LLaVA image processor, read from the same files, with
    ``do_pad=True``. Tiny checkpoints already carry it."""
    if family != "llava":
        return
    current = processor.image_processor
    if getattr(current, "do_pad", False) and hasattr(current, "pad_to_square"):
        return
    processor.image_processor = llava_image_processor_class().from_pretrained(path, do_pad=True)


def load_adapter(
    family: str,
    path: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    chat_template: str | None = None,
    encoding: str | None = None,
    vision_tower: str | None = None,
) -> ModelAdapter:
    """Load a checkpoint (local folder or hub id) of ``family`` with its processor.
    ``vision_tower``: for the authors'-layout families, the vision tower's folder or hub id
    instead of the one the checkpoint's config names."""
    path = str(path)
    check_load_args(family, dtype, device, attn_implementation)
    check_path(path)
    if chat_template is not None:
        check_template_name(chat_template)
    if encoding is not None:
        check_encoding(family, encoding)
    if FAMILIES[family].authors_layout:
        model, processor = load_authors_llava(family, path, DTYPES[dtype], vision_tower)
        model.set_attn_implementation(attn_implementation)
    else:
        try:
            processor = _load_processor(family, path)
            model = FAMILIES[family].model_class.from_pretrained(
                path, dtype=DTYPES[dtype], attn_implementation=attn_implementation
            )
        except OSError as err:
            raise OSError(f"cannot load model {path!r}: neither a saved local checkpoint nor a reachable hub id ({err})") from err
    _ensure_square_padding(family, processor, path)
    processor.tokenizer.padding_side = "left"
    model = model.to(device).eval()
    return ModelAdapter.from_model(model, processor, chat_template=chat_template, encoding=encoding)


__all__: Sequence[str] = [
    "CHAT_TEMPLATES",
    "ModelAdapter",
    "language_model",
    "load_adapter",
]
