"""Prompt construction and MileBench's truncation, on the tiny model's real tokenizer.

The truncation cases are hand-computed from the token counts of the pieces, which the first
test pins: if the tokenizer changes, that test says so before the others fail obscurely."""
from __future__ import annotations

from pathlib import Path

import pytest

from csp.models.adapters import CHAT_TEMPLATES
from milebench.data import DataError, Sample
from milebench.prompt import build_prompt, choice_block, replace_placeholders

TEMPLATE = CHAT_TEMPLATES["llava_llama_2"]
SYSTEM = ("[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
          "visual content that the user provides, and assist the user with a variety of tasks using natural "
          "language.\n<</SYS>>\n\n")
T = 16  # tokens per image in these cases

INSTR = "Answer with one word."  # 6 tokens
A = "The red car is parked. "  # 9
B = "Then the man walks away. "  # 10
C = "Now the door opens. "  # 7
Q = "Which car moved?"  # 7
CONTEXT = f"{A}{{image#1}}{B}{{image#2}}{C}{{table#3}}{Q}"
IMAGES = ["v/1.jpg", "v/2.jpg", "v/3.png"]


@pytest.fixture(scope="module")
def tokenizer(tiny_llava_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_path)


def sample(context=CONTEXT, images=IMAGES, choices=None, instruction=INSTR, dataset="ALFRED", combined=()):
    return Sample(dataset=dataset, sample_id=7, instruction=instruction, context=context, images=list(images),
                  choices=choices, response="x", image_quantity_level="Few", combined_images=list(combined))


def build(tokenizer, s, max_len, tpi=T, **kw):
    return build_prompt(s, tokenizer=tokenizer, image_token="<image>", template=TEMPLATE,
                        max_context_len=max_len, tokens_per_image=tpi, **kw)


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_piece_token_counts_that_the_cases_below_rely_on(tokenizer):
    counts = {s: n_tokens(tokenizer, s) for s in (INSTR, A, B, C, Q, " moved?")}
    assert counts == {INSTR: 6, A: 9, B: 10, C: 7, Q: 7, " moved?": 5}


def test_everything_fits(tokenizer):
    # budget 87 - 6 = 81 = 7 + 16 + 7 + 16 + 10 + 16 + 9: every fragment and image kept
    p = build(tokenizer, sample(), 87)
    assert p.question == f"{INSTR}\n{A}<ImageHere>{B}<ImageHere>{C}<ImageHere>{Q}"
    assert p.images == IMAGES


def test_start_with_image_when_the_first_fragment_no_longer_fits(tokenizer):
    # budget 80: after Q, img3, C, img2, B, img1 used = 72; A (9) would make 81 > 80 -> stop
    # right after keeping an image, so the text starts with the marker
    p = build(tokenizer, sample(), 86)
    assert p.question == f"{INSTR}\n<ImageHere>{B}<ImageHere>{C}<ImageHere>{Q}"
    assert p.images == IMAGES


def test_images_dropped_from_the_front(tokenizer):
    # budget 71: Q 7, img3 23, C 30, img2 46, B 56; 56 + 16 > 71 -> stop without image 1
    p = build(tokenizer, sample(), 77)
    assert p.question == f"{INSTR}\n{B}<ImageHere>{C}<ImageHere>{Q}"
    assert p.images == IMAGES[1:]
    # budget 55: ... img2 brings 46; B (10) would make 56 -> stop after an image
    p = build(tokenizer, sample(), 61)
    assert p.question == f"{INSTR}\n<ImageHere>{C}<ImageHere>{Q}"
    assert p.images == IMAGES[1:]
    # budget 23: Q 7, and 7 + 16 = 23 still fits: image 3 is kept exactly at the limit
    p = build(tokenizer, sample(), 29)
    assert p.question == f"{INSTR}\n<ImageHere>{Q}"
    assert p.images == IMAGES[2:]
    # budget 22: Q 7, then 7 + 16 > 22 -> no image at all
    p = build(tokenizer, sample(), 28)
    assert p.question == f"{INSTR}\n{Q}"
    assert p.images == []


def test_question_longer_than_the_budget_keeps_its_last_tokens(tokenizer):
    # budget 11 - 6 = 5 < 7 tokens of Q: the last 5 tokens of Q, which decode to " moved?"
    p = build(tokenizer, sample(), 11)
    assert p.question == f"{INSTR}\n moved?"
    assert p.images == []
    assert p.text == SYSTEM + f"{INSTR}\n moved? [/INST]"


def test_instruction_is_kept_and_counted(tokenizer):
    long_instr = INSTR + " Do not explain."
    extra = n_tokens(tokenizer, long_instr) - 6
    assert extra > 0
    # the budget that kept everything with the short instruction now loses fragment A
    p = build(tokenizer, sample(instruction=long_instr), 87)
    assert p.question == f"{long_instr}\n<ImageHere>{B}<ImageHere>{C}<ImageHere>{Q}"
    # even when nothing of the context fits, the whole instruction stays
    p = build(tokenizer, sample(instruction=long_instr), 6 + extra + 2)
    assert p.question.startswith(long_instr + "\n")
    assert len(p.question) < len(long_instr) + 1 + len(Q)


def test_known_sample_prompt_byte_for_byte(tokenizer):
    s = sample(context="{image#1}{image#2}Which car moved?", images=["a.jpg", "b.jpg"],
               choices=["The red car", "The blue car"], dataset="WebQA")
    p = build(tokenizer, s, 4096, tpi=576)
    assert p.question == ("Answer with one word.\n<ImageHere><ImageHere>Which car moved?\nChoice list: \n"
                          "A. The red car\nB. The blue car\nYour answer is: ")
    assert p.text == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
        "<</SYS>>\n\nAnswer with one word.\n<image>\n<image>\nWhich car moved?\nChoice list: \nA. The red car\n"
        "B. The blue car\nYour answer is:  [/INST]")
    assert p.images == ["a.jpg", "b.jpg"]


def test_adjacent_markers_get_one_left_to_right_newline_pass(tokenizer):
    s = sample(context="{image#1}{image#2}{image#3}Difference:", images=["1.png", "2.png", "3.png"])
    p = build(tokenizer, s, 1024)
    assert p.question == f"{INSTR}\n<ImageHere><ImageHere><ImageHere>Difference:"
    assert p.text == SYSTEM + f"{INSTR}\n<image>\n<image>\n<image>Difference: [/INST]"
    s4 = sample(context="{image#1}{image#2}{image#3}{image#4}x", images=["1", "2", "3", "4"])
    assert build(tokenizer, s4, 1024).text == SYSTEM + f"{INSTR}\n<image>\n<image>\n<image>\n<image>\nx [/INST]"


def test_gpr1200_options_are_bare_and_others_lettered():
    gpr = sample(choices=["image1", "image2"], dataset="GPR1200")
    assert choice_block(gpr) == "\nChoice list: \nimage1\nimage2\nYour answer is: "
    other = sample(choices=["yes", "no", "maybe"], dataset="ObjectExistence")
    assert choice_block(other) == "\nChoice list: \nA. yes\nB. no\nC. maybe\nYour answer is: "
    assert choice_block(sample(choices=None)) == ""


def test_placeholders_replaced_only_up_to_the_image_count():
    text = "{image#1}{table#2}{image#10}{image#3}{image#0}"
    assert replace_placeholders(text, 2, False) == "<ImageHere><ImageHere>{image#10}{image#3}{image#0}"
    assert replace_placeholders(text, 2, True) == "<Image 1> <Image 2> {image#10}{image#3}{image#0}"
    # combined-image mode numbers from 1 as MileBench does: the first image is "<Image 1> "
    assert replace_placeholders("{table#1}", 1, True) == "<Image 1> "


def test_combined_image_mode(tokenizer):
    s = sample(context="{image#1}{image#2}Difference:", images=["1.png", "2.png"], combined=["grid_7.jpg"])
    p = build(tokenizer, s, 1024, combine_image=True, dataset_root=Path("/d/CLEVR-Change"))
    assert p.question == f"<ImageHere>\n{INSTR}\n<Image 1> <Image 2> Difference:"
    assert p.text == SYSTEM + f"<image>\n{INSTR}\n<Image 1> <Image 2> Difference: [/INST]"
    assert p.images == ["/d/CLEVR-Change/combined_1_images/grid_7.jpg"]
    with pytest.raises(DataError, match=r"sample 7.*combined_1_images"):
        build(tokenizer, sample(), 1024, combine_image=True)


def test_dataset_root_gives_full_image_paths(tokenizer):
    p = build(tokenizer, sample(), 77, dataset_root=Path("/data/ALFRED"))
    assert p.images == ["/data/ALFRED/images/v/2.jpg", "/data/ALFRED/images/v/3.png"]


def test_template_without_prompt_field_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="prompt"):
        build_prompt(sample(), tokenizer=tokenizer, image_token="<image>", template="[INST] {p} [/INST]",
                     max_context_len=100, tokens_per_image=T)
