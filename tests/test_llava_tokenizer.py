"""The real LLaVA-1.5 tokenizer (Llama-2's SentencePiece vocabulary, built offline by
csp.models.llava_tokenizer) and LLaVA's own prompt encoding (csp/models/llava_encoding.py).

Truths used here, none of them our own code:
- llama.cpp's reference texts and ids for this vocabulary (shipped beside it), which are what
  the original SentencePiece tokenizer gives;
- ids published with Llama-2 (BOS 1, EOS 2, "Hello this is a test", "[INST]");
- a reference of LLaVA's `tokenizer_image_token`, written below from its documented behaviour:
  split at the image placeholder, tokenize each chunk alone, keep only the first chunk's BOS,
  one image token between chunks.

The vocabulary is fetched the way a user gets it (the builder; pip, once, cached under
models/). Without a package index the tests skip and say why.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tokenizers import Tokenizer, models, normalizers
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from csp.models.llava_encoding import follow_sentencepiece, llava_input_ids
from csp.models.llava_tokenizer import VocabUnavailable, ensure_llava_tokenizer, reference_vectors
from csp.models.adapters import CHAT_TEMPLATES, ModelAdapter, load_adapter
from milebench.runner.models import check_model_config
from csp.models.adapters import llava_image_processor_class
from milebench.data import Sample
from milebench.prompt import build_prompt

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "configs" / "model" / "llava-1.5-7b.yaml").read_text())
BOS, EOS, IMAGE, PAD = 1, 2, 32000, 32001


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return ensure_llava_tokenizer()
    except VocabUnavailable as err:
        reason = f"LLaVA-1.5 vocabulary unavailable, tests not run: {err}"
        warnings.warn(reason)  # shown in pytest's warnings summary, not only with -rs
        pytest.skip(reason)


@pytest.fixture(scope="module")
def hf_tokenizer(folder: Path):
    """The tokenizer as transformers loads llava-hf's (a fast LlamaTokenizer)."""
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def sp_encode(folder: Path):
    """Reference SentencePiece encoding without BOS, assembled here from tokenizers' parts:
    the saved BPE vocabulary and merges with byte fallback, and SentencePiece's normalization
    (one dummy-prefix "▁", spaces as "▁"). Checked against llama.cpp's reference ids below."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    ref = Tokenizer(models.BPE(vocab=spec["vocab"], merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    ref.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    return lambda text: ref.encode(text, add_special_tokens=False).ids if text else []


def reference_tokenizer_image_token(prompt: str, sp_encode) -> list[int]:
    """LLaVA's documented behaviour: chunks between '<image>' tokenized alone (each with its
    own dummy prefix), the BOS every chunk gets kept only once at the front, IMAGE between."""
    out = [BOS]
    for k, chunk in enumerate(prompt.split("<image>")):
        if k:
            out.append(IMAGE)
        out.extend(sp_encode(chunk))
    return out


def expand(ids: list[int], n: int) -> list[int]:
    return [t for i in ids for t in ([i] * n if i == IMAGE else [i])]


def llava_7b_shaped_adapter(hf_tokenizer, encoding: str) -> ModelAdapter:
    """A random, narrow LLaVA with the 7B's vocabulary, image size and special ids, and a
    processor around the real tokenizer: the shapes that decide input ids, nothing else."""
    text = LlamaConfig(vocab_size=32064, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS,
                       pad_token_id=PAD, max_position_embeddings=4096)
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                              image_size=336, patch_size=14, projection_dim=8)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE, image_seq_length=576,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).eval()
    image_processor = llava_image_processor_class()(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True,
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=hf_tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>")
    return ModelAdapter.from_model(model, processor, chat_template=CONFIG["chat_template"], encoding=encoding)


@pytest.fixture(scope="module")
def adapter(hf_tokenizer) -> ModelAdapter:
    """As configs/model/llava-1.5-7b.yaml asks (template and encoding)."""
    return llava_7b_shaped_adapter(hf_tokenizer, CONFIG["encoding"])


def solid(rgb) -> Image.Image:
    return Image.new("RGB", (40, 30), rgb)


# -- the vocabulary ------------------------------------------------------------------------------


def test_the_saved_tokenizer_is_llama2s_with_llava_hfs_added_tokens(hf_tokenizer):
    tok = hf_tokenizer
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, BOS, EOS)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE and tok.image_token_id == IMAGE
    assert tok.pad_token == "<pad>" and tok.pad_token_id == PAD and len(tok) == 32002
    assert tok.padding_side == "left"
    # The example in transformers' LlamaTokenizer documentation (Llama-2's vocabulary).
    assert tok("Hello this is a test").input_ids == [1, 15043, 445, 338, 263, 1243]
    # Llama-2 chat's "[INST]" is "▁[" "INST" "]"; "USER" is "▁US" "ER" (LLaVA's conversations).
    assert tok("[INST]", add_special_tokens=False).input_ids == [518, 25580, 29962]
    assert tok.convert_ids_to_tokens(tok("USER", add_special_tokens=False).input_ids) == ["\u2581US", "ER"]
    # A newline has no piece of its own: byte fallback <0x0A> is id 3 + 0x0A = 13, after the
    # dummy prefix "▁" (29871).
    assert tok("\n", add_special_tokens=False).input_ids == [29871, 13]
    assert tok.convert_ids_to_tokens([13, 29871]) == ["<0x0A>", "\u2581"]
    # <image> stays whole; decoding drops specials and the dummy prefix.
    assert tok("a <image>", add_special_tokens=False).input_ids[-1] == IMAGE
    assert tok.decode([BOS, 15043, 445, 338, 263, 1243, EOS], skip_special_tokens=True) == "Hello this is a test"


def test_sentencepiece_rules_reproduce_llama_cpps_reference_ids(folder, hf_tokenizer, sp_encode):
    cases = reference_vectors()
    assert len(cases) >= 40 and (" Hello world", [29871, 15043, 3186]) in cases
    ours = follow_sentencepiece(hf_tokenizer)
    for text, ids in cases:
        assert ours(text, add_special_tokens=False).input_ids == ids, repr(text)
        assert sp_encode(text) == ids, repr(text)  # the reference the encoding tests rely on
    # Why the switch is needed: the fast tokenizer as loaded skips the dummy prefix when the text
    # starts with a space, which LLaVA's (SentencePiece's) tokenizer does not.
    assert hf_tokenizer(" Hello world", add_special_tokens=False).input_ids == [15043, 3186]
    # The switch works on a copy: the tokenizer handed in is left as it was.
    assert hf_tokenizer(" Hello", add_special_tokens=False).input_ids == [15043]


# -- LLaVA's prompt encoding ---------------------------------------------------------------------


def test_a_short_prompt_has_llavas_ids(adapter: ModelAdapter, hf_tokenizer):
    prompt = "Hello <image>\n<image> world"
    ids = llava_input_ids(prompt, adapter.processor.tokenizer, "<image>", IMAGE)
    # Each chunk alone, with SentencePiece's dummy prefix (ids from llama.cpp's reference cases:
    # "Hello world" is 15043 3186, " Hello world" is 29871 15043 3186, "\n" is 29871 13):
    #   "Hello "  -> BOS 1, "▁Hello" 15043, the trailing space "▁" 29871
    #   "\n"      -> "▁" 29871, byte <0x0A> 13
    #   " world"  -> "▁" 29871, "▁world" 3186
    # with only the first chunk's BOS kept and <image> (32000) between chunks.
    assert ids == [1, 15043, 29871, 32000, 29871, 13, 32000, 29871, 3186]
    # The tokenizer as transformers loads llava-hf's, on the whole string (the processor's
    # way): no dummy prefix after an image token, nor before a leading space.
    assert hf_tokenizer(prompt).input_ids == [1, 15043, 29871, 32000, 13, 32000, 3186]


def milebench_sample() -> Sample:
    # GPR1200-like text after images (" Image2:"), adjacent images (the "\n" rule puts a newline
    # right after an image), a question after the last image, and a lettered choice list.
    context = ("The first picture:{image#1} Image2:{image#2}{image#3}Which picture shows the same "
               "place as the first one?")
    return Sample(dataset="WebQA", sample_id=3, instruction="Answer with the option's letter.", context=context,
                  images=["a.jpg", "b.jpg", "c.jpg"], choices=["the second", "the third"], response="the second",
                  image_quantity_level="Few", combined_images=[])


def encode_sample(adapter: ModelAdapter, sample: Sample, images: list[Image.Image]):
    built = build_prompt(sample, tokenizer=adapter.processor.tokenizer, image_token=adapter.image_token,
                         template="{prompt}", max_context_len=CONFIG["max_context_len"],
                         tokens_per_image=adapter.tokens_per_image)
    prompt = adapter.format_prompt(built.text)
    return prompt, adapter.encode([prompt], [images])


def test_milebench_prompt_matches_tokenizer_image_token(adapter: ModelAdapter, hf_tokenizer, sp_encode):
    assert adapter.encoding == "llava" and adapter.chat_template == "llava_llama_2"
    assert adapter.tokens_per_image == CONFIG["tokens_per_image"] == 576
    images = [solid((200, 0, 0)), solid((0, 200, 0)), solid((0, 0, 200))]
    prompt, batch = encode_sample(adapter, milebench_sample(), images)
    assert prompt == CHAT_TEMPLATES["llava_llama_2"].format(prompt=(
        "Answer with the option's letter.\nThe first picture:<image> Image2:<image>\n<image>\nWhich picture shows "
        "the same place as the first one?\nChoice list: \nA. the second\nB. the third\nYour answer is: "))
    want = expand(reference_tokenizer_image_token(prompt, sp_encode), 576)
    assert batch["input_ids"][0].tolist() == want
    assert batch["attention_mask"][0].tolist() == [1] * len(want)
    # The same pixels as the processor's own encoding, and a different text encoding from it.
    processor_adapter = llava_7b_shaped_adapter(hf_tokenizer, "processor")
    theirs = processor_adapter.encode([prompt], [images])
    assert torch.equal(theirs["pixel_values"], batch["pixel_values"])
    assert theirs["input_ids"][0].tolist() != want
    # ... and the model takes it: one image's features per run of 576 image tokens.
    with torch.no_grad():
        logits = adapter.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_a_batch_is_left_padded_with_llava_hfs_pad(adapter: ModelAdapter, sp_encode):
    prompts = [adapter.format_prompt("<image>\nWhat is it?"), adapter.format_prompt("No image here.")]
    batch = adapter.encode(prompts, [[solid((9, 9, 9))], []])
    rows = [expand(reference_tokenizer_image_token(p, sp_encode), 576) for p in prompts]
    width = batch["input_ids"].shape[1]
    assert width == len(rows[0]) > len(rows[1])
    short = width - len(rows[1])
    assert batch["input_ids"][1].tolist() == [PAD] * short + rows[1]
    assert batch["attention_mask"][1].tolist() == [0] * short + [1] * len(rows[1])
    assert batch["input_ids"][0].tolist() == rows[0] and batch["pixel_values"].shape == (1, 3, 336, 336)


def test_truncation_counts_tokens_as_llavas_tokenizer(adapter: ModelAdapter, sp_encode):
    """MileBench's budget is counted with the model's tokenizer. A fragment after an image
    that starts with a space costs its dummy-prefix token too (SentencePiece), one more than
    the fast tokenizer as loaded would count: the limit moves by exactly that token."""
    instruction, first, question = "Answer briefly.", "The first picture shows a harbour.", " Which boat is red?"
    s = Sample(dataset="ALFRED", sample_id=1, instruction=instruction, context=first + "{image#1}" + question,
               images=["x.jpg"], choices=None, response="x", image_quantity_level="Few", combined_images=[])
    n = [len(sp_encode(t)) for t in (instruction, first, question)]
    assert sp_encode(question)[0] == 29871  # the leading space is its own "▁" piece
    fits = n[0] + n[2] + 576 + n[1]  # everything, exactly at the limit
    tok = adapter.processor.tokenizer

    def question_at(limit: int) -> str:
        return build_prompt(s, tokenizer=tok, image_token="<image>", template="{prompt}", max_context_len=limit,
                            tokens_per_image=576).question

    assert question_at(fits) == f"{instruction}\n{first}<ImageHere>{question}"
    # One under: the first fragment no longer fits, the loop stopped after keeping the image.
    assert question_at(fits - 1) == f"{instruction}\n<ImageHere>{question}"
    # Only the question and its image fit ...
    assert question_at(n[0] + n[2] + 576) == f"{instruction}\n<ImageHere>{question}"
    # ... and one token less drops the image too.
    assert question_at(n[0] + n[2] + 575) == f"{instruction}\n{question}"


def test_tiny_model_gets_the_same_ids_from_both_encodings(tiny_llava: ModelAdapter, tiny_llava_path):
    """The tiny byte-level BPE has no dummy prefix, so LLaVA's encoding and the processor's
    coincide there: what differs is the BOS handling and expansion, checked to agree."""
    llava = load_adapter("llava", str(tiny_llava_path), encoding="llava")
    t = llava.image_token
    prompts = [llava.format_prompt(f"Look:{t} then{t}{t}\nWhich one? A. first\nB. second"), llava.format_prompt("None.")]
    images = [[solid((1, 2, 3)), solid((90, 0, 0)), solid((0, 90, 0))], []]
    a, b = tiny_llava.encode(prompts, images), llava.encode(prompts, images)
    assert set(a) == set(b) == {"input_ids", "attention_mask", "pixel_values"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (b["input_ids"][0] == llava.image_token_id).sum().item() == 3 * 16


def test_encoding_is_checked_with_the_model_config():
    check_model_config(CONFIG)
    with pytest.raises(ValueError, match=r"model config 'x': encoding='bpe' is unknown; expected one of \['llava', 'processor'\]"):
        check_model_config(dict(CONFIG, name="x", encoding="bpe"))
    internvl = yaml.safe_load((REPO / "configs" / "model" / "internvl.yaml").read_text())
    with pytest.raises(ValueError, match="encoding='llava' is LLaVA's own prompt encoding; family 'internvl'"):
        check_model_config(dict(internvl, encoding="llava"))
