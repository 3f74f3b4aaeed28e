"""LLaVA-recipe checkpoints in their authors' own layout: MobileVLM-V2 and InternVL-Chat-1.0.

Both are LLaVA's architecture (vision tower, projector, Llama decoder; each image spliced into
the token sequence as its projected patch features) saved by their authors' code, not converted
to transformers' llava-hf form: `config.json` is a flat Llama config plus LLaVA's `mm_*`
fields, and the weights carry the authors' module names. They load here into transformers'
own classes (LlamaModel, CLIPVisionModel or InternVLVisionModel, LLaVA's MLP projector) plus
our LDPv2 module, renaming keys by the map below; nothing runs remote code.

Key map, the authors' names -> ours:
    model.embed_tokens.* | model.layers.* | model.norm.*   -> model.language_model.<same>
    lm_head.weight                                         -> lm_head.weight
    model.mm_projector.0.* | .2.*              (mlp2x_gelu) -> model.multi_modal_projector.linear_1.* | linear_2.*
    model.mm_projector.mlp.mlp.0.* | .2.*      (ldpnetv2)   -> model.multi_modal_projector.linear_1.* | linear_2.*
    model.mm_projector.peg.peg.0.*             (ldpnetv2)   -> model.multi_modal_projector.peg.*
    model.vision_tower.vision_tower.vision_model.*  (CLIP weights inside the checkpoint, MobileVLM-V2)
                                                           -> model.vision_tower.*
  InternViT-6B weights come from its own folder (`mm_vision_tower`), keyed as its authors' model:
    embeddings.class_embedding       -> embeddings.cls_token
    embeddings.position_embedding    -> embeddings.position_embeddings (bicubic to the run's grid,
                                        as the authors' forward resizes it on every call)
    embeddings.patch_embedding.*     -> embeddings.patch_embeddings.projection.*
    encoder.layers.N.attn.qkv.*      -> encoder.layer.N.attention.q_proj.* | k_proj.* | v_proj.* (thirds)
    encoder.layers.N.attn.q_norm.* | k_norm.* -> encoder.layer.N.attention.q_norm.* | k_norm.*
    encoder.layers.N.attn.proj.*     -> encoder.layer.N.attention.projection_layer.*
    encoder.layers.N.ls1 | ls2       -> encoder.layer.N.lambda_1 | lambda_2
    encoder.layers.N.norm1 | norm2   -> encoder.layer.N.layernorm_before | layernorm_after
    encoder.layers.N.mlp.fc1 | fc2   -> encoder.layer.N.mlp.fc1 | fc2

`mm_vision_tower` names the vision tower as the authors' code does (a hub id or a path); a
relative path is looked up inside the checkpoint folder first (the tiny twins keep theirs
there), and `vision_tower` overrides it (InternVL-Chat-1.0 was trained with
`./pretrained/InternViT-6B-224px`, relative to its authors' working directory). As in the
authors' loader, an InternViT tower always comes from that folder: tower weights saved inside
the chat checkpoint (`model.vision_tower.vision_tower.*`) are replaced, so they are skipped.
The LDPv2 grid is 12 in the authors' code; a checkpoint may set `ldp_grid` (our addition,
for the tiny twin's small patch grid). InternViT runs at 336 px (448 when the tower's name says
so), as their image-processor code decides; `image_size` in config.json (ours) overrides.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from csp.models.ldp import LDPv2Projector

IMAGE_TOKEN = "<image>"
LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "attention_bias",
                "initializer_range")
PROJECTORS = ("mlp2x_gelu", "ldpnetv2")
# the InternViT image processor of the authors' LLaVA-recipe code: ImageNet statistics, 336 px
# (448 when the tower's name says so), resize then centre crop
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@strict
class AuthorsLlavaConfig(LlavaConfig):
    """LlavaConfig plus what the authors' checkpoints add: the projector kind, LDPv2's pooled
    grid and which family the checkpoint came from."""

    model_type = "llava_authors"
    projector_type: str = "mlp2x_gelu"
    projector_grid: int = 12
    source_family: str = ""


class AuthorsLlavaModel(LlavaModel):
    """transformers' LlavaModel with the checkpoint's projector: LLaVA's MLP or MobileVLM's LDPv2."""

    def __init__(self, config: AuthorsLlavaConfig):
        super().__init__(config)
        if config.projector_type == "ldpnetv2":
            self.multi_modal_projector = LDPv2Projector(
                config.vision_config.hidden_size, config.text_config.hidden_size, config.projector_grid)
            self.post_init()


class AuthorsLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = AuthorsLlavaConfig

    def __init__(self, config: AuthorsLlavaConfig):
        super().__init__(config)
        self.model = AuthorsLlavaModel(config)
        self.post_init()


# ---------------------------------------------------------------- the families ----------

@dataclass(frozen=True)
class Family:
    """What a family's authors' code fixes beyond config.json."""

    vision: str  # "clip" (weights inside the checkpoint) or "internvit" (weights in the tower's folder)


FAMILIES = {"mobilevlm": Family("clip"), "internvl-chat": Family("internvit")}
# the projector's key prefixes per mm_projector_type, the authors' -> ours (under model.multi_modal_projector.)
PROJECTOR_KEYS = {
    "mlp2x_gelu": {"model.mm_projector.0.": "linear_1.", "model.mm_projector.2.": "linear_2."},
    "ldpnetv2": {"model.mm_projector.mlp.mlp.0.": "linear_1.", "model.mm_projector.mlp.mlp.2.": "linear_2.",
                 "model.mm_projector.peg.peg.0.": "peg."},
}


def rename_language_and_projector(key: str) -> str | None:
    """An authors' key of the decoder, LM head or projector in our names (None: not one of them)."""
    if key == "lm_head.weight":
        return key
    m = re.fullmatch(r"model\.(embed_tokens|layers|norm)\.(.+)", key)
    if m:
        return f"model.language_model.{m.group(1)}.{m.group(2)}"
    for table in PROJECTOR_KEYS.values():
        for old, new in table.items():
            if key.startswith(old):
                return "model.multi_modal_projector." + new + key[len(old):]
    return None


def rename_clip_tower(key: str) -> str | None:
    prefix = "model.vision_tower.vision_tower.vision_model."
    return "model.vision_tower." + key[len(prefix):] if key.startswith(prefix) else None


# InternViT's per-layer names (encoder.layers.N.<theirs>) -> InternVLVisionModel's (encoder.layer.N.<ours>);
# the fused attn.qkv is split apart
INTERNVIT_LAYER = {"attn.q_norm": "attention.q_norm", "attn.k_norm": "attention.k_norm",
                   "attn.proj": "attention.projection_layer", "norm1": "layernorm_before",
                   "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                   "ls1": "lambda_1", "ls2": "lambda_2"}
INTERNVIT_QKV = ("q_proj", "k_proj", "v_proj")


def convert_internvit(state: Mapping[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """InternViT-6B's own state dict (its authors' names) as transformers' InternVLVisionModel's,
    under `model.vision_tower.`; the position embedding resized to `grid` x `grid` patches."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "embeddings.class_embedding":
            out["embeddings.cls_token"] = value
        elif key == "embeddings.position_embedding":
            out["embeddings.position_embeddings"] = resize_position_embedding(value, grid)
        elif key.startswith("embeddings.patch_embedding."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            layer, rest = m.groups()
            base = f"encoder.layer.{layer}."
            if rest.startswith("attn.qkv."):
                for part, chunk in zip(INTERNVIT_QKV, value.chunk(3, dim=0)):
                    out[f"{base}attention.{part}.{rest.rsplit('.', 1)[1]}"] = chunk.clone()
            elif rest in INTERNVIT_LAYER:  # the layer scales, parameters of the layer itself
                out[base + INTERNVIT_LAYER[rest]] = value
            else:
                module, _, param = rest.rpartition(".")
                if module not in INTERNVIT_LAYER:
                    raise KeyError(f"InternViT key {key!r} has no counterpart")
                out[f"{base}{INTERNVIT_LAYER[module]}.{param}"] = value
        else:
            raise KeyError(f"InternViT key {key!r} has no counterpart")
    return {"model.vision_tower." + k: v for k, v in out.items()}


def resize_position_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + s*s, C) -> (1, 1 + grid*grid, C): the class position kept, the patch positions
    resized bicubically as a 2-D map (InternViT's own rule, align_corners False, in float)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    if side == grid:
        return pos
    dim = patches.shape[-1]
    grid_map = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid_map = F.interpolate(grid_map, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid_map.reshape(1, dim, grid * grid).permute(0, 2, 1).to(pos.dtype)], dim=1)


# ---------------------------------------------------------------- loading ---------------

def resolve_folder(path: str, what: str = "checkpoint") -> Path:
    """A local folder as it is; a hub id downloaded (or found in the cache) with huggingface_hub."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path))
    except Exception as err:  # offline, unknown id, no access: one clear message
        raise OSError(f"cannot load {what} {path!r}: neither a local folder nor a reachable hub id ({err})") from err


def vision_folder(checkpoint: Path, name: str) -> Path:
    inside = checkpoint / name
    return inside if inside.is_dir() else resolve_folder(name, "vision tower")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: safetensors files, else PyTorch .bin shards."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    for key in ("mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_vision_select_layer"):
        if key not in raw:
            raise ValueError(f"{path}: field {key!r} is missing; not a LLaVA-recipe checkpoint in its authors' layout")
    if raw.get("mm_use_im_start_end"):
        raise ValueError(f"{path}: mm_use_im_start_end is true; images wrapped in <im_start>/<im_end> tokens are "
                         "not reproduced here (neither Table 3 checkpoint uses them)")
    if raw["mm_projector_type"] not in PROJECTORS:
        raise ValueError(f"{path}: mm_projector_type {raw['mm_projector_type']!r} is not one of {PROJECTORS}")
    return raw


def text_config(raw: dict) -> LlamaConfig:
    """The decoder's config: config.json's top-level Llama fields."""
    return LlamaConfig(**{k: raw[k] for k in LLAMA_FIELDS if k in raw})


def build_config(family: str, raw: dict, vision: CLIPVisionConfig | InternVLVisionConfig,
                 image_token_id: int) -> AuthorsLlavaConfig:
    text = text_config(raw)
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ValueError(f"mm_vision_select_feature {feature!r} is not 'patch' or 'cls_patch'")
    grid = int(raw.get("ldp_grid", 12))
    side = _side(vision)
    tokens = grid * grid if raw["mm_projector_type"] == "ldpnetv2" else side * side + (feature == "cls_patch")
    return AuthorsLlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=tokens,
        vision_feature_layer=int(raw["mm_vision_select_layer"]),
        vision_feature_select_strategy="default" if feature == "patch" else "full",
        projector_hidden_act="gelu", projector_type=raw["mm_projector_type"], projector_grid=grid,
        source_family=family)


def _square(value) -> int:
    """CLIP's configs give sizes as one int, InternVL's as (height, width) pairs: square here."""
    return int(value if isinstance(value, int) else value[0])


def _side(vision) -> int:
    return _square(vision.image_size) // _square(vision.patch_size)


def internvit_config(folder: Path, image_size: int) -> InternVLVisionConfig:
    """InternViT's own config.json (InternVisionConfig) as transformers' InternVLVisionConfig at the
    run's image size."""
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return InternVLVisionConfig(
        hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        image_size=image_size, patch_size=raw["patch_size"], num_channels=raw.get("num_channels", 3),
        hidden_act=raw.get("hidden_act", "gelu"), layer_norm_eps=raw.get("layer_norm_eps", 1e-6),
        use_qk_norm=bool(raw.get("qk_normalization", False)), attention_bias=bool(raw.get("qkv_bias", False)),
        norm_type="rms_norm" if raw.get("norm_type", "rms_norm") == "rms_norm" else "layer_norm",
        layer_scale_init_value=raw.get("initializer_factor", 0.1), use_mean_pooling=True)  # no final norm


def image_processor_for(family: str, raw: dict, tower: Path, image_size: int):
    """As the authors' code makes it: MobileVLM reads the CLIP tower's own processor config,
    InternViT's LLaVA-recipe code builds one with ImageNet statistics; `image_aspect_ratio: pad`
    pads every picture to a square in the mean colour first (LLaVA's expand2square)."""
    from csp.models.adapters import llava_image_processor_class

    cls = llava_image_processor_class()
    pad = raw.get("image_aspect_ratio") == "pad"
    if family == "mobilevlm":
        return cls.from_pretrained(str(tower), do_pad=pad)
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
               do_center_crop=True, do_resize=True, do_normalize=True, image_mean=list(IMAGENET_MEAN),
               image_std=list(IMAGENET_STD), do_pad=pad)


def with_image_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """LLaVA's code marks an image with an id outside the vocabulary; transformers' LLaVA needs a
    token, so `<image>` is added as one (as llava-hf did), when the tokenizer lacks it."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def load_authors_llava(family: str, path: str, dtype: torch.dtype = torch.float32, vision_tower: str | None = None
                       ) -> tuple[AuthorsLlavaForConditionalGeneration, LlavaProcessor]:
    """Model and processor of a MobileVLM-V2 or InternVL-Chat-1.0 checkpoint folder (or hub id);
    `vision_tower` (a folder or hub id) instead of the checkpoint's `mm_vision_tower`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown authors' LLaVA family {family!r}; expected one of {sorted(FAMILIES)}")
    folder = resolve_folder(path)
    raw = read_config(folder)
    tower_name = str(vision_tower or raw["mm_vision_tower"])
    tower = vision_folder(folder, tower_name)
    internvit = FAMILIES[family].vision == "internvit"
    # the decoder's config given, so that the tokenizer's loader does not read config.json's
    # model_type (mobilevlm, llava), which transformers does not know
    tokenizer = with_image_token(AutoTokenizer.from_pretrained(str(folder), config=text_config(raw)))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    state = {}
    unmapped = []
    for key, value in read_weights(folder).items():
        if internvit and key.startswith("model.vision_tower.vision_tower."):
            continue  # replaced by the tower's own folder, as the authors' loader replaces it
        new = rename_language_and_projector(key) or rename_clip_tower(key)
        if new is None:
            unmapped.append(key)
        else:
            state[new] = value
    if not internvit:
        vision = CLIPVisionConfig.from_pretrained(str(tower))
        image_size = int(vision.image_size)
    else:
        image_size = int(raw.get("image_size") or (448 if "448" in tower_name else 336))
        vision = internvit_config(tower, image_size)
        state.update(convert_internvit(read_weights(tower), image_size // _square(vision.patch_size)))
    if unmapped:
        raise KeyError(f"{folder}: {len(unmapped)} weights have no counterpart, e.g. {unmapped[:3]}")
    config = build_config(family, raw, vision, image_token_id)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a 7B decoder in float32 first would double the memory
    try:
        model = AuthorsLlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    load_exactly(model, state, folder)
    if image_token_id >= model.get_input_embeddings().num_embeddings:
        extend_input_embeddings(model, image_token_id + 1)
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=image_processor_for(family, raw, tower, image_size), tokenizer=tokenizer,
        patch_size=_square(vision.patch_size),
        vision_feature_select_strategy=config.vision_feature_select_strategy, image_token=IMAGE_TOKEN)
    return model.eval(), processor


def extend_input_embeddings(model: AuthorsLlavaForConditionalGeneration, rows: int) -> None:
    """Room for `<image>` in the input embeddings only, the new rows zero: an image position's
    embedding is replaced by its features before the decoder sees it, so the row only has to
    exist, and the LM head keeps the checkpoint's vocabulary, so `<image>` is never generated."""
    old = model.get_input_embeddings()
    new = torch.nn.Embedding(rows, old.embedding_dim, padding_idx=old.padding_idx, dtype=old.weight.dtype,
                             device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[: old.num_embeddings] = old.weight
    model.set_input_embeddings(new)


def load_exactly(model: torch.nn.Module, state: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Every parameter from the checkpoint, nothing left over: a missing or unexpected key is an
    error naming them, never a silently random weight."""
    own = model.state_dict()  # parameters and persistent buffers only
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise KeyError(f"{folder}: the checkpoint does not fit the model: missing {missing[:5]} "
                       f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    shaped = [k for k in state if state[k].shape != own[k].shape]
    if shaped:
        k = shaped[0]
        raise ValueError(f"{folder}: {k} has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(dict(state), strict=False)

