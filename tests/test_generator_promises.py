"""Each data generator's documented promises, checked on every sample it writes: where the
evidence lies and where it may not. The truth is read back from the written files (the
pictures' pixels, the context text), not from the generator's own bookkeeping."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
from PIL import Image

from milebench import proxy
from milebench.data import IMAGES_DIR, load_dataset
from milebench.synthetic import generate_dataset


# ---------------------------------------------------------------- the synthetic copy ----
SYNTHETIC_SETS = ("TextNeedleInAHaystack", "ImageNeedleInAHaystack", "GPR1200", "MMCoQA", "ALFRED", "MultiModalQA",
                  "WikiVQA")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A fresh copy of the generated sets under test, ten samples each (every size in the
    generators' five-sample cycles twice), from the generator as it is now."""
    out = tmp_path_factory.mktemp("synthetic")
    for name in SYNTHETIC_SETS:
        generate_dataset(out, name, 10, 1)
    return out


def samples(root: Path, name: str):
    return load_dataset(root, name, check_images=False).samples


def test_text_needle_is_one_sentence_in_the_text_and_the_pictures_hold_none(synthetic) -> None:
    for s in samples(synthetic, "TextNeedleInAHaystack"):
        needles = re.findall(r"The special magic (\w+) number is: (\d+)", s.context)
        assert len(needles) == 1, s.sample_id
        city, key = needles[0]
        assert s.context.endswith(f"Question: What is the special magic {city} number?")
        assert s.response == key and s.context.count(key) == 1
        assert all(p.startswith("haystack/") for p in s.images)  # the pictures are distractors


def test_image_needle_is_in_one_picture_and_never_in_the_text(synthetic) -> None:
    for s in samples(synthetic, "ImageNeedleInAHaystack"):
        needle = [p for p in s.images if p.startswith("needle/")]
        assert len(needle) == 1 and s.images.count(needle[0]) == 1, s.sample_id
        assert all(p.startswith(("needle/", "haystack/")) for p in s.images)
        assert s.response.isdigit() and s.response not in s.context
        # the needle picture is drawn with text on it: it differs from every haystack picture
        root = synthetic / "ImageNeedleInAHaystack" / IMAGES_DIR
        with Image.open(root / needle[0]) as im:
            pixels = im.convert("RGB").tobytes()
        for p in set(s.images) - set(needle):
            with Image.open(root / p) as im:
                assert im.convert("RGB").tobytes() != pixels


def test_gpr1200_candidates_then_the_anchor_last(synthetic) -> None:
    counts = []
    for s in samples(synthetic, "GPR1200"):
        n = len(s.images) - 1
        counts.append(n)
        assert s.choices == [f"image{k}" for k in range(1, n + 1)] and s.response in s.choices
        assert f"Anchor Image: {{image#{n + 1}}}." in s.context
        assert all(f"Image{k}:{{image#{k}}}" in s.context for k in range(1, n + 1))
    assert 12 in counts  # 'image1' shadows 'image10'..'image12' in MileBench's matching


def test_mmcoqa_shows_each_document_once_in_order_and_one_in_five_is_long(synthetic) -> None:
    turns = []
    for s in samples(synthetic, "MMCoQA"):
        lines = [line for line in s.context.splitlines() if line.startswith("Q: ")]
        turns.append(len(lines))
        for k in range(1, len(s.images) + 1):
            assert f"{{image#{k}}}" in lines[k - 1] and s.context.count(f"{{image#{k}}}") == 1
        assert s.choices is None and s.response.isalpha()
    assert sum(t >= 40 for t in turns) == len(turns) // 5  # the long history that truncates


def test_alfred_consecutive_steps_reuse_frames(synthetic) -> None:
    for s in samples(synthetic, "ALFRED"):
        assert len(s.images) >= 2
        assert any(a == b for a, b in zip(s.images, s.images[1:])), s.sample_id
        assert s.context.rstrip().endswith("Current Step:")


@pytest.mark.parametrize("name", ["MultiModalQA", "WikiVQA"])
def test_tables_share_the_image_numbering(synthetic, name) -> None:
    for s in samples(synthetic, name):
        for k, path in enumerate(s.images, 1):
            tag = "table" if "/table_" in path else "image"
            assert f"{{{tag}#{k}}}" in s.context, (s.sample_id, k)


# ---------------------------------------------------------------- the proxy task set -----
@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory) -> Path:
    return proxy.ensure_proxy(tmp_path_factory.mktemp("proxy") / "data", train=40, eval=25, seed=3)


@lru_cache(maxsize=None)
def colour_of(path: Path) -> str:
    """The colour of the one shape on the grey ground, from the pixels: the mean of the pixels
    away from the ground, named by the nearest of the generator's colours."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        ground = rgb.getpixel((0, 0))
        shape = [p for p in rgb.get_flattened_data() if sum(abs(a - b) for a, b in zip(p, ground)) > 60]
    assert shape, f"{path}: no shape"
    mean = [sum(p[i] for p in shape) / len(shape) for i in range(3)]
    return min(proxy.COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(mean, proxy.COLOURS[c])))


def proxy_samples(root: Path, name: str):
    """(sample, colour of each picture) for both splits."""
    for split_root in (root, root / proxy.TRAIN_DIR):
        for s in samples(split_root, name):
            yield s, [colour_of(split_root / name / IMAGES_DIR / p) for p in s.images]


def vivid_at(colours: list[str]) -> list[int]:
    return [i for i, c in enumerate(colours) if c in proxy.VIVID]


def test_visual_needle_one_coloured_picture_and_the_answer_is_its_colour(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyVisualNeedle"):
        (k,) = vivid_at(colours)
        assert s.response == f"it is {colours[k]}" and s.response in s.choices


def test_cross_modal_question_names_the_coloured_picture(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyCrossModal"):
        named = int(re.search(r"Question: Picture (\d+) shows", s.context).group(1))
        assert vivid_at(colours) == [named - 1] and s.response == f"it is {colours[named - 1]}"


def test_temporal_event_is_consecutive_frames_before_the_last_few(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyTemporal"):
        event = vivid_at(colours)
        assert event == list(range(event[0], event[0] + len(event))) and len(event) <= 3
        assert len({colours[i] for i in event}) == 1 and s.response == f"it was {colours[event[0]]}"
        if len(colours) >= len(event) + 3:  # room for plain frames after it: at least three follow
            assert event[-1] <= len(colours) - 4
        if len(colours) >= 2:
            assert len(event) >= 2


def test_multi_turn_picture_is_in_the_first_half(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyMultiTurn"):
        (k,) = vivid_at(colours)
        assert k < max(1, len(colours) // 2) and s.response == f"it was {colours[k]}"


def test_text_needle_is_one_sentence_and_the_pictures_are_plain(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyTextNeedle"):
        (city, colour), = re.findall(r"The door of (\w+) is (\w+)\.", s.context)
        assert s.context.endswith(f"Question: What colour is the door of {city}?")
        assert s.response == f"colour {colour}" and colour in proxy.VIVID
        assert not vivid_at(colours)
        assert sum(s.context.count(c) for c in proxy.VIVID) == 1  # no other colour word to confuse


def test_image_diff_asks_the_last_pair_and_the_solved_pairs_say_what_they_show(proxy_dir) -> None:
    for s, colours in proxy_samples(proxy_dir, "ProxyImageDiff"):
        assert len(colours) % 2 == 0
        solved = re.findall(r"Change: from (\w+) to (\w+)\.", s.context)
        assert [(colours[2 * p], colours[2 * p + 1]) for p in range(len(solved))] == solved
        assert all(a != b and {a, b} <= set(proxy.PLAIN) for a, b in solved)  # black to white or back
        before, after = colours[-2:]
        assert before != after and {before, after} <= set(proxy.VIVID)
        assert s.response == f"from {before} to {after}" and s.context.endswith("Change:")
