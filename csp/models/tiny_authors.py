"""Tiny random-weight twins of MobileVLM-V2 and InternVL-Chat-1.0, written in their authors' layout.

The real checkpoints cannot be downloaded here, so the twins are what exercises the loader of
`csp.models.authors_llava` end to end: a flat Llama `config.json` with LLaVA's `mm_*` fields,
weights under the authors' module names, a Llama-like tokenizer without `<image>` (the loader
adds it), and the vision tower where the authors' code looks for it (`mm_vision_tower`, here a
folder inside the checkpoint):
  - MobileVLM-V2: CLIP weights inside the checkpoint (`model.vision_tower.vision_tower.*`), the
    tower folder holding CLIP's config and image processor; LDPv2 pools 8 x 8 patches to 4 x 4,
    16 tokens per image (the real: 24 x 24 to 12 x 12, 144).
  - InternVL-Chat-1.0: InternViT weights in the tower's own folder under InternViT's names
    (fused qkv, ls1/ls2, norm1/norm2), trained at 28 px and run at 56 px, so the position
    embedding is resized as the real 224 px tower is for 336 px; MLP projector, 16 tokens
    per image (the real: 576).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, InternVLVisionConfig, LlamaConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from csp.models.authors_llava import (
    INTERNVIT_LAYER,
    INTERNVIT_QKV,
    PROJECTOR_KEYS,
    AuthorsLlavaConfig,
    AuthorsLlavaForConditionalGeneration,
)

TOWER = "vision_tower"  # mm_vision_tower, relative: looked up inside the checkpoint folder


def _text_config(tokenizer, hidden: int = 64, layers: int = 4) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1)


def _flat_config(text: LlamaConfig, architecture: str, model_type: str, **mm) -> dict:
    """config.json as the authors' code saves it: the Llama fields at the top level, plus mm_*."""
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
            "eos_token_id", "pad_token_id", "tie_word_embeddings", "initializer_range")
    out = {"architectures": [architecture], "model_type": model_type}
    out.update({k: getattr(text, k) for k in keep})
    out.update(mm)
    return out


def _ours_to_authors(state: dict[str, torch.Tensor], projector: str) -> dict[str, torch.Tensor]:
    """Our names back to the authors' (decoder, LM head, projector, a CLIP tower inside): the
    loader's key tables read backwards."""
    proj = {ours: theirs for theirs, ours in PROJECTOR_KEYS[projector].items()}
    out = {}
    for key, value in state.items():
        if key.startswith("model.language_model."):
            out["model." + key[len("model.language_model."):]] = value
        elif key.startswith("model.multi_modal_projector."):
            rest = key[len("model.multi_modal_projector."):]
            prefix = next(p for p in proj if rest.startswith(p))
            out[proj[prefix] + rest[len(prefix):]] = value
        elif key.startswith("model.vision_tower."):
            if projector == "mlp2x_gelu":
                continue  # an InternViT tower is written to its own folder
            out["model.vision_tower.vision_tower.vision_model." + key[len("model.vision_tower."):]] = value
        else:
            out[key] = value
    return {k: v.contiguous() for k, v in out.items()}


def _internvit_to_authors(tower: torch.nn.Module, native_grid: int) -> dict[str, torch.Tensor]:
    """transformers' InternVLVisionModel weights under InternViT's own names, the position
    embedding at the tower's native grid (its run grid is larger)."""
    from torch.nn import functional as F

    theirs = {ours: name for name, ours in INTERNVIT_LAYER.items()}
    out = {}
    for key, value in tower.state_dict().items():
        if key == "embeddings.cls_token":
            out["embeddings.class_embedding"] = value
        elif key == "embeddings.position_embeddings":
            cls, patches = value[:, :1], value[:, 1:]
            side, dim = int(round(patches.shape[1] ** 0.5)), value.shape[-1]
            small = F.interpolate(patches.reshape(1, side, side, dim).permute(0, 3, 1, 2), size=(native_grid,) * 2,
                                  mode="bilinear", align_corners=False)
            out["embeddings.position_embedding"] = torch.cat(
                [cls, small.reshape(1, dim, -1).permute(0, 2, 1)], dim=1)
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["embeddings.patch_embedding." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("encoder.layer."):
            _, _, n, rest = key.split(".", 3)
            if any(rest.startswith(f"attention.{part}.") for part in INTERNVIT_QKV):
                continue  # fused below
            if rest in theirs:  # the layer scales, parameters of the layer itself
                out[f"encoder.layers.{n}.{theirs[rest]}"] = value
            else:
                module, _, param = rest.rpartition(".")
                out[f"encoder.layers.{n}.{theirs[module]}.{param}"] = value
    state = tower.state_dict()
    for n in range(len(tower.encoder.layer)):
        parts = [state[f"encoder.layer.{n}.attention.{p}.weight"] for p in INTERNVIT_QKV]
        out[f"encoder.layers.{n}.attn.qkv.weight"] = torch.cat(parts, dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def _build(config: AuthorsLlavaConfig, seed: int) -> AuthorsLlavaForConditionalGeneration:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AuthorsLlavaForConditionalGeneration(config).eval()


def write_tiny_mobilevlm(out: Path, seed: int) -> None:
    from csp.models.adapters import llava_image_processor_class
    from csp.models.tiny import build_llava_tokenizer

    tokenizer = build_llava_tokenizer(image_token=False)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=112, patch_size=14, projection_dim=32)
    text = _text_config(tokenizer)
    config = AuthorsLlavaConfig(vision_config=vision, text_config=text, image_token_index=len(tokenizer),
                                image_seq_length=16, vision_feature_layer=-2, projector_type="ldpnetv2",
                                projector_grid=4, source_family="mobilevlm")
    model = _build(config, seed)
    save_file(_ours_to_authors(model.state_dict(), "ldpnetv2"), str(out / "model.safetensors"))
    flat = _flat_config(text, "MobileLlamaForCausalLM", "mobilevlm", mm_hidden_size=vision.hidden_size,
                        mm_projector_type="ldpnetv2", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                        mm_vision_tower=TOWER, vision_tower_type="clip", image_aspect_ratio="pad",
                        mm_use_im_start_end=False, mm_use_im_patch_token=False, ldp_grid=4)
    (out / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out)
    vision.save_pretrained(out / TOWER)
    llava_image_processor_class()(
        size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}, do_center_crop=True,
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), do_pad=False,
    ).save_pretrained(out / TOWER)


def write_tiny_internvl_chat(out: Path, seed: int) -> None:
    from csp.models.tiny import build_llava_tokenizer

    tokenizer = build_llava_tokenizer(image_token=False)
    run_size, native_size, patch = 56, 28, 14
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                  image_size=run_size, patch_size=patch, use_qk_norm=True, norm_type="rms_norm",
                                  attention_bias=False, use_mean_pooling=True, layer_scale_init_value=0.1,
                                  initializer_range=0.1)
    text = _text_config(tokenizer)
    config = AuthorsLlavaConfig(vision_config=vision, text_config=text, image_token_index=len(tokenizer),
                                image_seq_length=16, vision_feature_layer=-1, projector_type="mlp2x_gelu",
                                source_family="internvl-chat")
    model = _build(config, seed)
    tower = model.model.vision_tower
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        # transformers starts these at zero and at one constant: random values, so that a swapped
        # or misplaced one changes the output
        tower.embeddings.cls_token.normal_(std=0.5)
        tower.embeddings.position_embeddings.normal_(std=0.5)
        for layer in tower.encoder.layer:
            layer.lambda_1.uniform_(0.05, 1.0)
            layer.lambda_2.uniform_(0.05, 1.0)
    save_file(_ours_to_authors(model.state_dict(), "mlp2x_gelu"), str(out / "model.safetensors"))
    flat = _flat_config(text, "LlavaLlamaForCausalLM", "llava", mm_hidden_size=vision.hidden_size,
                        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-1, mm_vision_select_feature="patch",
                        mm_vision_tower=TOWER, image_aspect_ratio="pad", mm_use_im_start_end=False,
                        mm_use_im_patch_token=False, image_size=run_size)
    (out / "config.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out)
    tower = out / TOWER
    tower.mkdir()
    save_file(_internvit_to_authors(model.model.vision_tower, native_size // patch), str(tower / "model.safetensors"))
    tower_config = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 32,
                    "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                    "image_size": native_size, "patch_size": patch, "num_channels": 3, "qkv_bias": False,
                    "qk_normalization": True, "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                    "initializer_factor": 0.1, "use_flash_attn": False}
    (tower / "config.json").write_text(json.dumps(tower_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


WRITERS = {"mobilevlm": write_tiny_mobilevlm, "internvl-chat": write_tiny_internvl_chat}
