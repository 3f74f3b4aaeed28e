"""Tiny checkpoints and model adapters: loaded through from_pretrained exactly like real ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

from csp.models.adapters import CHAT_TEMPLATES, ModelAdapter, load_adapter
from milebench.runner.models import adapter_from_config, check_model_config
from csp.models.tiny import BUILDERS, RECIPE_FILE, build_tiny_model, ensure_tiny_model

REPO = Path(__file__).resolve().parent.parent
SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def model_config(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())


def solid(w: int, h: int, rgb=(200, 30, 10)) -> Image.Image:
    return Image.new("RGB", (w, h), rgb)


# -- chat template ----------------------------------------------------------------------------


def test_llava_template_is_the_milebench_string(tiny_llava: ModelAdapter):
    expected = "[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\nWhat is {this}? [/INST]"
    assert CHAT_TEMPLATES["llava_llama_2"].format(prompt="What is {this}?") == expected
    assert tiny_llava.chat_template == "llava_llama_2"
    assert tiny_llava.format_prompt("What is {this}?") == expected


def test_processor_jinja_template_renders_the_same_string(tiny_llava: ModelAdapter):
    prompt = "<image>\nWhich colour?"
    rendered = tiny_llava.processor.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == CHAT_TEMPLATES["llava_llama_2"].format(prompt=prompt)


def test_internvl_uses_its_processor_template(tiny_internvl: ModelAdapter):
    assert tiny_internvl.chat_template == "processor"
    assert tiny_internvl.format_prompt("Hi <IMG_CONTEXT>") == (
        "<|im_start|>user\nHi <IMG_CONTEXT><|im_end|>\n<|im_start|>assistant\n"
    )


# -- building and loading ----------------------------------------------------------------------


def test_same_seed_gives_identical_files_other_seed_other_weights(tmp_path: Path):
    a = build_tiny_model("llava", tmp_path / "a", seed=0)
    b = build_tiny_model("llava", tmp_path / "b", seed=0)
    c = build_tiny_model("llava", tmp_path / "c", seed=1)
    names = sorted(p.name for p in a.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names and "processor_config.json" in names
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # Another seed: same tokenizer, different weights.
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    key = next(k for k in wa if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(wa[key], wc[key])
    # No temporary build folders are left beside the result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_round_trip_through_from_pretrained(tmp_path: Path, family: str):
    folder = build_tiny_model(family, tmp_path / family, seed=3)
    built, processor = BUILDERS[family](3)
    adapter = load_adapter(family, str(folder))
    loaded = adapter.model.state_dict()
    reference = built.state_dict()
    assert set(loaded) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(loaded[name], tensor), name
    text = "The quick brown fox jumps over the lazy dog."
    assert adapter.processor.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert type(adapter.model) is type(built)


def test_ensure_is_idempotent_and_rebuilds_a_stale_folder(tmp_path: Path):
    first = ensure_tiny_model("llava", root=tmp_path, seed=0)
    assert first == tmp_path / "tiny-llava"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("llava", root=tmp_path, seed=0) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    # A folder from an older recipe is replaced, not reused.
    (first / RECIPE_FILE).write_text(json.dumps({"family": "llava", "seed": 0, "recipe_version": -1}))
    again = ensure_tiny_model("llava", root=tmp_path, seed=0)
    assert json.loads((again / RECIPE_FILE).read_text())["recipe_version"] != -1
    assert ensure_tiny_model("llava", root=tmp_path, seed=2) == tmp_path / "tiny-llava-seed2"


def test_tokenizer_adds_bos_and_decode_skips_special_tokens(tiny_llava: ModelAdapter):
    tok = tiny_llava.processor.tokenizer
    ids = tok("hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1
    assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids("<image>")) == "<image>"
    assert tiny_llava.eos_token_ids == [tok.eos_token_id] == [2]
    assert tiny_llava.pad_token_id == tok.pad_token_id == 3
    assert tiny_llava.decode(ids + [2, 3, 4]) == "hello world"
    assert tiny_llava.decode(torch.tensor([3, 3] + ids)) == "hello world"


# -- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_internvl"])
def test_expanded_batch_is_left_padded_with_image_tokens_per_image(request, which: str):
    adapter: ModelAdapter = request.getfixturevalue(which)
    assert adapter.tokens_per_image == 16
    t = adapter.image_token
    prompts = [adapter.format_prompt(f"{t}\nfirst {t}\nsecond, which differs?"), adapter.format_prompt("No image.")]
    batch = adapter.encode(prompts, [[solid(80, 40), solid(30, 60)], []])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    per_row = (ids == adapter.image_token_id).sum(dim=1).tolist()
    assert per_row == [2 * 16, 0]
    assert batch["pixel_values"].shape[0] == 2 and batch["pixel_values"].dtype == torch.float32
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] == ids.shape[1] > lengths[1]
    # Left padding: the short row starts with pad tokens masked out and ends with real ones.
    pad = ids.shape[1] - lengths[1]
    assert mask[1, :pad].eq(0).all() and mask[1, pad:].eq(1).all()
    assert ids[1, :pad].eq(adapter.pad_token_id).all()
    # Each image's visual tokens are one contiguous run.
    visual = (ids[0] == adapter.image_token_id).nonzero().flatten().tolist()
    runs = [visual[i : i + 16] for i in (0, 16)]
    assert all(r == list(range(r[0], r[0] + 16)) for r in runs)


def test_encode_rejects_mismatched_placeholders(tiny_llava: ModelAdapter):
    with pytest.raises(ValueError, match="prompt 0 holds 1 '<image>' placeholders but has 2 images"):
        tiny_llava.encode(["<image> two?"], [[solid(8, 8), solid(8, 8)]])


def test_llava_images_are_padded_to_a_square_with_the_mean_colour(tiny_llava: ModelAdapter):
    ip = tiny_llava.processor.image_processor
    mean, std = ip.image_mean, ip.image_std
    wide = solid(112, 56, (250, 0, 0))
    # The same image padded by hand, as LLaVA-1.5 does before its CLIP processor.
    square = Image.new("RGB", (112, 112), tuple(int(m * 255) for m in mean))
    square.paste(wide, (0, 28))
    prompt = tiny_llava.format_prompt("<image>")
    got = tiny_llava.encode([prompt], [[wide]])["pixel_values"][0]
    want = tiny_llava.encode([prompt], [[square]])["pixel_values"][0]
    assert got.shape == (3, 56, 56)
    assert torch.allclose(got, want, atol=1e-6)
    # The top rows are pure background: (int(255 * mean) / 255 - mean) / std per channel.
    for c in range(3):
        expected = (int(mean[c] * 255) / 255 - mean[c]) / std[c]
        assert got[c, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    # ... and the middle rows are the image: red channel (250 / 255 - mean) / std.
    assert got[0, 28, 28].item() == pytest.approx((250 / 255 - mean[0]) / std[0], abs=1e-2)


# -- the models run -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_generate_matches_across_attention_kernels_and_sees_the_image(family: str, request):
    path = request.getfixturevalue(f"tiny_{family}_path")
    outs = {}
    for attn in ("eager", "sdpa"):
        adapter = load_adapter(family, str(path), attn_implementation=attn)
        assert adapter.model.config.get_text_config()._attn_implementation == attn
        t = adapter.image_token
        prompts = [adapter.format_prompt(f"{t}\nDescribe the picture."), adapter.format_prompt("Count the cats.")]
        batch = adapter.encode(prompts, [[solid(70, 50)], []])
        gen = adapter.model.generate(**batch, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        outs[attn] = gen[:, batch["input_ids"].shape[1] :]
        # The picture reaches the language model: another image changes the logits.
        with torch.no_grad():
            a = adapter.model(**adapter.encode(prompts[:1], [[solid(70, 50)]])).logits[0, -1]
            b = adapter.model(**adapter.encode(prompts[:1], [[solid(70, 50, (0, 90, 255))]])).logits[0, -1]
        assert not torch.allclose(a, b)
    assert outs["eager"].shape == (2, 12)
    assert torch.equal(outs["eager"], outs["sdpa"])
    assert len(set(outs["sdpa"][0].tolist())) > 1  # not a constant stream


@pytest.mark.parametrize("which,cls_name", [("tiny_llava", "LlamaAttention"), ("tiny_internvl", "Qwen2Attention")])
def test_attention_modules_are_the_decoder_layers_in_order(request, which: str, cls_name: str):
    adapter: ModelAdapter = request.getfixturevalue(which)
    modules = adapter.attention_modules()
    assert [type(m).__name__ for m in modules] == [cls_name] * 4
    assert [m.layer_idx for m in modules] == [0, 1, 2, 3]
    if which == "tiny_internvl":  # grouped-query attention: 4 query heads share 2 KV heads
        assert modules[0].k_proj.out_features * 2 == modules[0].q_proj.out_features


def test_from_model_describes_a_7b_shaped_model_without_a_processor():
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig())
    adapter = ModelAdapter.from_model(model)
    assert adapter.family == "llava"
    assert adapter.tokens_per_image == 576  # (336 / 14) ** 2, CLS dropped
    assert adapter.image_token == "<image>" and adapter.image_token_id == 32000
    assert len(adapter.attention_modules()) == 32
    assert adapter.format_prompt("x") == CHAT_TEMPLATES["llava_llama_2"].format(prompt="x")
    with pytest.raises(ValueError, match="without a processor"):
        adapter.encode(["<image>"], [[solid(4, 4)]])


# -- configuration and errors ------------------------------------------------------------------


def test_config_files_resolve_to_working_adapters(tiny_llava_path: Path):
    adapter = adapter_from_config(model_config("tiny-llava"))
    assert adapter.tokens_per_image == model_config("tiny-llava")["tokens_per_image"]
    assert Path(adapter.model.name_or_path) == tiny_llava_path
    for name in ("llava-1.5-7b", "llava-1.5-13b", "internvl", "tiny-internvl"):
        check_model_config(model_config(name))
    wrong = dict(model_config("tiny-llava"), tokens_per_image=576)
    with pytest.raises(ValueError, match="tokens_per_image is 576 but the checkpoint .* 16 tokens"):
        adapter_from_config(wrong)


@pytest.mark.parametrize("name", ["tiny-mobilevlm", "tiny-internvl-chat"])
def test_authors_layout_twins_resolve_from_their_configs(name):
    cfg = model_config(name)
    adapter = adapter_from_config(cfg)
    assert (adapter.family, adapter.tokens_per_image, adapter.chat_template, adapter.encoding) == (
        cfg["family"], cfg["tokens_per_image"], cfg["chat_template"], "llava")


def test_the_papers_table3_models_are_configured_as_the_authors_ran_them():
    mobile, chat = model_config("mobilevlm-v2-3b"), model_config("internvl-chat-1.0")
    assert (mobile["path"], mobile["max_context_len"], mobile["tokens_per_image"], mobile["chat_template"]) == (
        "mtgv/MobileVLM_V2-3B", 2048, 144, "vicuna_v1")
    assert (chat["path"], chat["max_context_len"], chat["tokens_per_image"], chat["chat_template"]) == (
        "OpenGVLab/InternVL-Chat-ViT-6B-Vicuna-7B", 4096, 576, "internlm2_chat")
    for cfg in (mobile, chat):
        check_model_config(cfg)  # a hub id passes the offline checks; loading needs the weights


def test_an_unreachable_authors_checkpoint_says_so(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="cannot load checkpoint 'mtgv/MobileVLM_V2-3B': neither a local folder nor"):
        load_adapter("mobilevlm", "mtgv/MobileVLM_V2-3B")


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"path": "/no/such/folder"}, FileNotFoundError, "model.path='/no/such/folder' does not exist and is not a hub id"),
        ({"path": "a/b/c"}, FileNotFoundError, "model.path='a/b/c' does not exist and is not a hub id"),
        ({"attn_implementation": "flash"}, ValueError, "attn_implementation='flash' is unknown"),
        ({"attn_implementation": "flash_attention_2"}, ValueError, "flash_attention_2' needs a CUDA device"),
        ({"dtype": "float64"}, ValueError, "dtype='float64' is unknown"),
        ({"family": "qwen"}, ValueError, "unknown model family 'qwen'"),
        ({"chat_template": "vicuna"}, ValueError, "unknown chat_template 'vicuna'"),
    ],
)
def test_bad_arguments_fail_before_loading(monkeypatch, tiny_llava_path: Path, kwargs, error, message):
    def no_loading(*args, **kw):
        raise AssertionError("a model was loaded despite a bad argument")

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", no_loading)
    args = {"family": "llava", "path": str(tiny_llava_path), **kwargs}
    family, path = args.pop("family"), args.pop("path")
    with pytest.raises(error, match=message):
        load_adapter(family, path, **args)


def test_a_folder_without_a_checkpoint_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_adapter("llava", str(tmp_path))


def test_a_plain_clip_image_processor_is_replaced_by_the_padding_one(tmp_path: Path):
    """Real -hf LLaVA checkpoints ship a CLIPImageProcessor (centre crop, no padding)."""
    folder = build_tiny_model("llava", tmp_path / "clip", seed=0)
    config_file = folder / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["image_processor"]["image_processor_type"] = "CLIPImageProcessor"
    del config["image_processor"]["do_pad"]
    config_file.write_text(json.dumps(config))
    adapter = load_adapter("llava", str(folder))
    ip = adapter.processor.image_processor
    assert ip.do_pad is True and type(ip).__name__.startswith("LlavaImageProcessor")
    assert ip.crop_size["height"] == 56 and list(ip.image_mean) == config["image_processor"]["image_mean"]
    wide = solid(112, 56, (250, 0, 0))
    got = adapter.encode(["<image>"], [[wide]])["pixel_values"][0]
    # Top-left is background (mean colour), not the red image a centre crop would show.
    expected = (int(ip.image_mean[0] * 255) / 255 - ip.image_mean[0]) / ip.image_std[0]
    assert got[0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_a_builder_that_loses_the_race_keeps_the_winners_folder(tmp_path: Path):
    winner = build_tiny_model("internvl", tmp_path / "tiny-internvl", seed=0)
    stamp = (winner / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model("internvl", tmp_path / "tiny-internvl", seed=0) == winner
    assert (winner / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-internvl"]


def test_building_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    BUILDERS["llava"](7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_llava_path: Path):
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        load_adapter("llava", str(tiny_llava_path), device="cuda")
