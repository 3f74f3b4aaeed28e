"""MobileVLM-V2 and InternVL-Chat-1.0 from their authors' layout, against independent truths:
the authors' module definitions re-derived here by hand (LDPv2: feature MLP, 2-D average pool,
depthwise 3x3 convolution added back; an InternViT layer: fused qkv, RMS norms over the whole
width, layer scales), the authors' state-dict names written out literally, the token counts
per image of the real shapes, and the conversation templates' rendered text."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, InternVLVisionConfig

from csp.engine.decode import greedy_generate
from csp.models.adapters import CHAT_TEMPLATES, ModelAdapter, _tokens_per_image, load_adapter
from csp.models.authors_llava import (
    build_config,
    rename_clip_tower,
    rename_language_and_projector,
    resize_position_embedding,
)
from csp.models.ldp import LDPv2Projector
from csp.models.tiny import ensure_tiny_model


# ---------------------------------------------------------------- LDPv2 ------------------
def ldpv2_by_hand(x: torch.Tensor, w: dict[str, torch.Tensor], grid: int) -> torch.Tensor:
    """MobileVLM's LDPNetV2Projector as its authors define it: FeatureIRLayer (Linear, GELU,
    Linear), TokenDownLayer (AdaptiveAvgPool2d to grid x grid over the row-major patch map),
    PosInjectLayer (depthwise Conv2d 3x3, stride 1, padding 1, with bias, added to its input)."""
    b, n, _ = x.shape
    side = math.isqrt(n)
    h = F.linear(F.gelu(F.linear(x, w["mlp.mlp.0.weight"], w["mlp.mlp.0.bias"])), w["mlp.mlp.2.weight"], w["mlp.mlp.2.bias"])
    c = h.shape[-1]
    m = h.permute(0, 2, 1).reshape(b, c, side, side)
    k = side // grid  # an exact pool here: each output cell averages a k x k block
    m = m.reshape(b, c, grid, k, grid, k).mean(dim=(3, 5))
    padded = F.pad(m, (1, 1, 1, 1))
    conv = torch.zeros_like(m)
    for dy in range(3):
        for dx in range(3):
            conv += padded[:, :, dy:dy + grid, dx:dx + grid] * w["peg.peg.0.weight"][:, 0, dy, dx][None, :, None, None]
    conv += w["peg.peg.0.bias"][None, :, None, None]
    return (conv + m).flatten(2).transpose(1, 2)


def test_ldpv2_is_the_authors_projector_and_gives_144_tokens_for_576_patches() -> None:
    torch.manual_seed(0)
    vision, text = 16, 8
    authors = {"mlp.mlp.0.weight": torch.randn(text, vision), "mlp.mlp.0.bias": torch.randn(text),
               "mlp.mlp.2.weight": torch.randn(text, text), "mlp.mlp.2.bias": torch.randn(text),
               "peg.peg.0.weight": torch.randn(text, 1, 3, 3), "peg.peg.0.bias": torch.randn(text)}
    ours = LDPv2Projector(vision, text, grid=12)
    renamed = {rename_language_and_projector("model.mm_projector." + k).removeprefix("model.multi_modal_projector."): v
               for k, v in authors.items()}
    ours.load_state_dict(renamed, strict=True)
    x = torch.randn(2, 576, vision)  # CLIP ViT-L/14 at 336 px: 24 x 24 patches
    out = ours(x)
    assert out.shape == (2, 144, text)
    assert torch.allclose(out, ldpv2_by_hand(x, authors, 12), atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        ours(torch.randn(1, 575, vision))


def test_authors_key_names_map_to_ours() -> None:
    expected = {
        "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
        "model.layers.3.self_attn.q_proj.weight": "model.language_model.layers.3.self_attn.q_proj.weight",
        "model.norm.weight": "model.language_model.norm.weight",
        "lm_head.weight": "lm_head.weight",
        "model.mm_projector.0.weight": "model.multi_modal_projector.linear_1.weight",
        "model.mm_projector.2.bias": "model.multi_modal_projector.linear_2.bias",
        "model.mm_projector.mlp.mlp.0.bias": "model.multi_modal_projector.linear_1.bias",
        "model.mm_projector.mlp.mlp.2.weight": "model.multi_modal_projector.linear_2.weight",
        "model.mm_projector.peg.peg.0.weight": "model.multi_modal_projector.peg.weight",
    }
    assert {k: rename_language_and_projector(k) for k in expected} == expected
    assert rename_clip_tower("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") \
        == "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert rename_language_and_projector("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight") is None


# ---------------------------------------------------------------- real shapes -----------
def test_tokens_per_image_of_the_real_shapes() -> None:
    clip = CLIPVisionConfig(hidden_size=1024, image_size=336, patch_size=14, num_hidden_layers=1,
                            num_attention_heads=16, intermediate_size=64)
    mobilevlm = build_config("mobilevlm", {"mm_projector_type": "ldpnetv2", "mm_vision_select_layer": -2,
                                           "hidden_size": 2560, "num_hidden_layers": 1, "num_attention_heads": 32,
                                           "vocab_size": 32000}, clip, 32000)
    assert _tokens_per_image("mobilevlm", mobilevlm) == 144
    internvit = InternVLVisionConfig(hidden_size=3200, image_size=336, patch_size=14, num_hidden_layers=1,
                                     num_attention_heads=25, intermediate_size=64)
    chat = build_config("internvl-chat", {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -1,
                                          "hidden_size": 4096, "num_hidden_layers": 1, "num_attention_heads": 32,
                                          "vocab_size": 32000}, internvit, 32000)
    assert _tokens_per_image("internvl-chat", chat) == 576
    assert (mobilevlm.vision_feature_layer, mobilevlm.vision_feature_select_strategy) == (-2, "default")


# ---------------------------------------------------------------- the twins' files ------
def test_mobilevlm_twin_is_in_the_authors_layout() -> None:
    folder = ensure_tiny_model("mobilevlm")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "mobilevlm" and raw["mm_projector_type"] == "ldpnetv2"
    keys = set(load_file(str(folder / "model.safetensors")))
    assert {k for k in keys if k.startswith("model.mm_projector.")} == {
        "model.mm_projector.mlp.mlp.0.weight", "model.mm_projector.mlp.mlp.0.bias",
        "model.mm_projector.mlp.mlp.2.weight", "model.mm_projector.mlp.mlp.2.bias",
        "model.mm_projector.peg.peg.0.weight", "model.mm_projector.peg.peg.0.bias"}
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" in keys
    assert all(k.startswith(("model.", "lm_head.")) for k in keys)


INTERNVIT_LAYER_KEYS = {"attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
                        "attn.proj.bias", "ls1", "ls2", "norm1.weight", "norm2.weight", "mlp.fc1.weight",
                        "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}


def test_internvl_chat_twin_keeps_internvit_in_its_own_folder_under_its_own_names() -> None:
    folder = ensure_tiny_model("internvl-chat")
    tower = load_file(str(folder / "vision_tower" / "model.safetensors"))
    assert {k.split(".", 3)[3] for k in tower if k.startswith("encoder.layers.0.")} == INTERNVIT_LAYER_KEYS
    assert {k for k in tower if k.startswith("embeddings.")} == {
        "embeddings.class_embedding", "embeddings.position_embedding", "embeddings.patch_embedding.weight",
        "embeddings.patch_embedding.bias"}
    assert tower["embeddings.position_embedding"].shape[1] == 1 + 2 * 2  # trained at 28 px
    main = set(load_file(str(folder / "model.safetensors")))
    assert {k for k in main if k.startswith("model.mm_projector.")} == {
        "model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
        "model.mm_projector.2.bias"}
    assert not any("vision_tower" in k for k in main)


def internvit_by_hand(pixels: torch.Tensor, w: dict[str, torch.Tensor], heads: int, layers: int,
                      eps: float = 1e-6) -> torch.Tensor:
    """InternViT-6B's forward as its authors write it, on its own state dict: patch conv, class
    token, the position embedding bicubically resized to the patch grid, then per layer
    x + ls1 * proj(attn(norm1 x)) and x + ls2 * fc2(gelu(fc1(norm2 x))), RMS norms with weights,
    q and k RMS-normed over the whole width before the split into heads."""
    def rms(x, weight):
        return weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))

    x = F.conv2d(pixels, w["embeddings.patch_embedding.weight"], w["embeddings.patch_embedding.bias"], stride=14)
    b, c, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = w["embeddings.position_embedding"]
    side = int(round((pos.shape[1] - 1) ** 0.5))
    patch_pos = F.interpolate(pos[:, 1:].reshape(1, side, side, c).permute(0, 3, 1, 2).float(), size=(gh, gw),
                              mode="bicubic", align_corners=False).reshape(1, c, -1).permute(0, 2, 1)
    x = torch.cat([w["embeddings.class_embedding"].expand(b, 1, c), x], dim=1)
    x = x + torch.cat([pos[:, :1], patch_pos], dim=1)
    n = x.shape[1]
    for i in range(layers):
        p = f"encoder.layers.{i}."
        h = rms(x, w[p + "norm1.weight"])
        q, k, v = F.linear(h, w[p + "attn.qkv.weight"]).chunk(3, dim=-1)
        q, k = rms(q, w[p + "attn.q_norm.weight"]), rms(k, w[p + "attn.k_norm.weight"])
        q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) * (c // heads) ** -0.5, dim=-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(b, n, c), w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + a * w[p + "ls1"]
        h = rms(x, w[p + "norm2.weight"])
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), w[p + "mlp.fc2.weight"],
                     w[p + "mlp.fc2.bias"])
        x = x + h * w[p + "ls2"]
    return x


def test_internvit_loaded_from_its_own_names_computes_the_authors_forward(tiny_internvl_chat) -> None:
    folder = ensure_tiny_model("internvl-chat")
    weights = load_file(str(folder / "vision_tower" / "model.safetensors"))
    cfg = json.loads((folder / "vision_tower" / "config.json").read_text())
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 56, 56)  # run at 56 px: the 2 x 2 position grid resized to 4 x 4
    with torch.no_grad():
        ours = tiny_internvl_chat.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    truth = internvit_by_hand(pixels, weights, cfg["num_attention_heads"], cfg["num_hidden_layers"])
    assert ours.shape == (2, 1 + 16, 32)
    assert torch.allclose(ours, truth, atol=1e-4)


def test_position_embedding_resize_is_bicubic_and_keeps_the_class_position() -> None:
    pos = torch.arange(1 + 4 * 1, dtype=torch.float32).reshape(1, 5, 1).repeat(1, 1, 2)
    out = resize_position_embedding(pos, 4)
    assert out.shape == (1, 17, 2) and torch.equal(out[:, 0], pos[:, 0])
    assert resize_position_embedding(pos, 2) is pos


def test_image_features_are_the_second_to_last_layers_patches_through_ldpv2(tiny_mobilevlm) -> None:
    """MobileVLM's CLIPVisionTower.feature_select: hidden_states[-2], the CLS row dropped."""
    model = tiny_mobilevlm.model.model
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states
        truth = model.multi_modal_projector(hidden[-2][:, 1:])
        ours = model.get_image_features(pixel_values=pixels).pooler_output[0]
    assert ours.shape == (16, 64) and torch.allclose(ours, truth[0], atol=1e-6)
    assert not torch.allclose(ours, model.multi_modal_projector(hidden[-1][:, 1:])[0], atol=1e-3)


# ---------------------------------------------------------------- loading errors --------
def test_a_checkpoint_missing_or_adding_a_weight_is_refused(tmp_path) -> None:
    import shutil

    src = ensure_tiny_model("mobilevlm")
    for change, message in (("drop", "missing"), ("add", "no counterpart")):
        folder = tmp_path / change
        shutil.copytree(src, folder)
        state = load_file(str(folder / "model.safetensors"))
        if change == "drop":
            del state["model.mm_projector.peg.peg.0.bias"]
        else:
            state["model.mm_projector.extra.weight"] = torch.zeros(1)
        save_file(state, str(folder / "model.safetensors"))
        with pytest.raises(KeyError, match=message):
            load_adapter("mobilevlm", str(folder))


def test_internvit_comes_from_its_own_folder_even_when_the_checkpoint_holds_one(tmp_path) -> None:
    """The authors' loader replaces the tower from mm_vision_tower: tower weights saved inside the
    chat checkpoint are skipped, and `vision_tower` names the folder instead of the config."""
    import shutil

    src = ensure_tiny_model("internvl-chat")
    folder, elsewhere = tmp_path / "ckpt", tmp_path / "InternViT-tiny"
    shutil.copytree(src, folder)
    shutil.move(str(folder / "vision_tower"), str(elsewhere))
    state = load_file(str(folder / "model.safetensors"))
    state["model.vision_tower.vision_tower.embeddings.class_embedding"] = torch.full((1, 1, 32), 7.0)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(OSError, match="cannot load vision tower 'vision_tower'"):
        load_adapter("internvl-chat", str(folder))
    adapter = load_adapter("internvl-chat", str(folder), vision_tower=str(elsewhere))
    tower = load_file(str(elsewhere / "model.safetensors"))
    assert torch.equal(adapter.model.model.vision_tower.embeddings.cls_token, tower["embeddings.class_embedding"])


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.pop("mm_projector_type"), "config.json: field 'mm_projector_type' is missing"),
    (lambda raw: raw.update(mm_use_im_start_end=True), "mm_use_im_start_end is true"),
    (lambda raw: raw.update(mm_projector_type="ldpnet"), "mm_projector_type 'ldpnet' is not one of"),
])
def test_a_config_this_loader_does_not_reproduce_names_the_field(tmp_path, edit, message) -> None:
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(ensure_tiny_model("mobilevlm"), folder)
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message):
        load_adapter("mobilevlm", str(folder))


# ---------------------------------------------------------------- templates, stop words --
def test_templates_render_as_the_authors_conversations(tiny_mobilevlm, tiny_internvl_chat) -> None:
    assert tiny_mobilevlm.format_prompt("<image>\nWhat is it?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT:")
    assert tiny_internvl_chat.format_prompt("<image>\nWhat is it?") == (
        "<|im_start|>system\nYou are an AI assistant whose name is InternLM (书生·浦语).<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\n")
    assert set(CHAT_TEMPLATES) == {"llava_llama_2", "vicuna_v1", "internlm2_chat"}
    assert tiny_internvl_chat.stop_strings == ("<|im_end|>",) and tiny_mobilevlm.stop_strings == ()


def test_generation_stops_once_the_text_holds_a_stop_string(tiny_internvl_chat) -> None:
    import dataclasses

    adapter: ModelAdapter = tiny_internvl_chat
    image = [Image.new("RGB", (40, 30), (200, 30, 30))]
    inputs = adapter.encode([adapter.format_prompt(f"{adapter.image_token}\nDescribe it.")], [image])
    free = greedy_generate(dataclasses.replace(adapter, stop_strings=()), inputs, None, max_new_tokens=8,
                           min_new_tokens=8)
    text3 = adapter.decode(free.tokens[0][:3])
    assert text3 and text3 not in adapter.decode(free.tokens[0][:2])
    stopped = greedy_generate(dataclasses.replace(adapter, stop_strings=(text3,)), inputs, None,
                              max_new_tokens=8, min_new_tokens=1)
    assert stopped.tokens[0] == free.tokens[0][:3]  # the completing token kept, nothing after it


@pytest.mark.parametrize("family, size", [("mobilevlm", 112), ("internvl-chat", 56)])
def test_images_are_padded_to_a_square_before_resizing(family, size) -> None:
    adapter = load_adapter(family, str(ensure_tiny_model(family)))
    wide = Image.new("RGB", (80, 40), (255, 0, 0))
    pixels = adapter.processor.image_processor(wide, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, size, size)
    # padded above and below in the mean colour, not cropped: the top row is not red
    mean = torch.tensor(adapter.processor.image_processor.image_mean)
    std = torch.tensor(adapter.processor.image_processor.image_std)
    top = pixels[:, 0, size // 2] * std + mean
    assert abs(float(top[0]) - float(mean[0])) < 0.05 and float(pixels[0, size // 2, size // 2] * std[0] + mean[0]) > 0.95
