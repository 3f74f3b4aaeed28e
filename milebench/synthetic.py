"""A small, faithful MileBench copy generated offline, in the exact released layout.

The real benchmark cannot be downloaded here, yet the loader, the prompt builder, the runner
and the scorer must be exercised on data shaped like it: every context kind (long frame
sequences, `{table#k}`, needles in long essays, GPR1200's bare options, open-ended sets with
no `choice_list` key, adjacent placeholders, repeated and nested image paths, JPEG and PNG),
samples long enough to force truncation, the combined grids, the `-adv.json` variants and
the Hub parquet form. The copy is a pure function of (samples, seed): byte-identical files.

    python -m milebench.synthetic --out data/milebench-synthetic [--samples 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw
from tqdm import tqdm

from milebench import catalog
from milebench.data import COMBINED_DIR, IMAGES_DIR, split_name
from milebench.files import build_folder_atomic

DEFAULT_SAMPLES = 5
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "milebench-synthetic"
PARQUET_DIR = "hf-parquet"
MARKER_FILE = "SYNTHETIC.json"
GENERATOR_VERSION = 1

WORDS = (
    "the a of and to in is was for on with as by at from that this it be are were has had "
    "city river house window road garden morning light water table chair music story people "
    "small large old new green blue red yellow white black bright quiet busy early late long "
    "walked opened looked found carried wrote painted counted moved built watched measured "
    "train bridge market teacher student baker farmer doctor child friend village mountain lake "
    "book letter picture screen map chart box cup ball door key stone bread fruit coffee boat "
    "history science summer winter evening season question answer reason result number idea"
).split()
CITIES = ("Yerevan", "Lisbon", "Nairobi", "Quito", "Hanoi", "Tromso", "Oaxaca", "Tbilisi", "Perth", "Bergen")
OBJECTS = ("cube", "sphere", "cylinder", "cup", "book", "ball", "box", "chair", "lamp", "bottle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "brown", "gray")
ACTIONS = ("opening a door", "pouring water", "throwing a ball", "folding a towel", "riding a bicycle",
           "closing a drawer", "picking up a cup", "washing dishes", "reading a book", "sitting down")


# ---------------------------------------------------------------- small helpers ---------

def sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, n_sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(n_sentences))


def placeholders(start: int, count: int, kind: str = "image") -> str:
    return "".join(f"{{{kind}#{k}}}" for k in range(start, start + count))


@dataclass
class Draft:
    """One sample before it is written: images are (relative path, PIL image) pairs, in
    `images_path` order, repeats allowed."""
    context: str
    images: list[tuple[str, Image.Image]]
    response: str
    choices: list[str] | None = None
    instruction_id: int = 0


class ImageMaker:
    """Deterministic little pictures: a background, a few shapes, optional text."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def picture(self, size: int | None = None, text: str | None = None) -> Image.Image:
        rng = self.rng
        w = size or rng.randint(32, 64)
        h = size or rng.randint(32, 64)
        im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.randint(1, 4)):
            x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
            x1, y1 = x0 + rng.randint(4, w // 2), y0 + rng.randint(4, h // 2)
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        if text:
            draw.text((2, h // 2 - 5), text, fill=(0, 0, 0))
        return im

    def table(self, rows: int = 3, cols: int = 3) -> Image.Image:
        w, h = 16 * cols + 1, 10 * rows + 1
        im = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(im)
        for r in range(rows + 1):
            draw.line((0, 10 * r, w, 10 * r), fill=(0, 0, 0))
        for c in range(cols + 1):
            draw.line((16 * c, 0, 16 * c, h), fill=(0, 0, 0))
        for r in range(rows):
            for c in range(cols):
                draw.text((16 * c + 3, 10 * r), str(self.rng.randrange(10)), fill=(0, 0, 0))
        return im


def mc(rng: random.Random, pool: list[str], k: int) -> tuple[list[str], str]:
    options = rng.sample(pool, k)
    return options, rng.choice(options)


# ---------------------------------------------------------------- dataset kinds ---------
# Each kind makes one Draft from (rng, images, sample index, dataset name).

# Frames per temporal sample, cycled: Few, Medium, Medium, Many, and a Many long enough to be
# truncated even with a tiny model's budget.
FRAME_COUNTS = (3, 8, 16, 36, 80)

TEMPORAL_QUESTIONS: dict[str, tuple[str, list[str]]] = {
    "ActionLocalization": ("During which part of the video does the action '{a}' occur?",
                           ["At the beginning of the video.", "In the middle of the video.",
                            "At the end of the video.", "Throughout the entire video."]),
    "ActionPrediction": ("What will the person do next after {a}?", [a.capitalize() + "." for a in ACTIONS]),
    "ActionSequence": ("What did the person do first, right before {a}?", [a.capitalize() + "." for a in ACTIONS]),
    "ObjectExistence": ("Is there a {c} {o} in the video when the scene ends?", ["yes", "no", "not sure"]),
    "ObjectInteraction": ("Which object did the person touch while {a}?", [f"The {o}." for o in OBJECTS]),
    "MovingAttribute": ("What colour is the {o} that moves to the left?", list(COLOURS)),
    "ObjectShuffle": ("Where is the {c} {o} hidden at the end?", ["Under the left cup.", "Under the middle cup.",
                                                                   "Under the right cup."]),
    "EgocentricNavigation": ("You walk through the rooms shown. Which way should you turn to reach the {o}?",
                             ["Turn left.", "Turn right.", "Go straight ahead.", "Turn around."]),
    "MovingDirection": ("In which direction does the {c} {o} move?", ["up", "down", "left", "right",
                                                                      "towards the camera"]),
    "CounterfactualInference": ("What would happen if the {c} {o} were removed?",
                                ["The tower would fall.", "Nothing would change.", "The ball would stop.",
                                 "The light would go out."]),
    "StateChange": ("Is the {o} being turned on or off?", ["on", "off", "neither"]),
    "CharacterOrder": ("In what order do the letters appear on the cards?", ["A, B, C", "B, A, C", "C, A, B",
                                                                             "A, C, B"]),
    "SceneTransition": ("How does the scene change over the video?", ["From a kitchen to a garden.",
                                                                     "From a street to a shop.",
                                                                     "From a beach to a forest.",
                                                                     "From a room to a corridor."]),
}


def temporal(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    question, pool = TEMPORAL_QUESTIONS[name]
    n = FRAME_COUNTS[i % len(FRAME_COUNTS)]
    video = f"video_{i:03d}"
    images = [(f"{video}/frame_{j:03d}.jpg", mk.picture()) for j in range(n)]
    q = question.format(a=rng.choice(ACTIONS), c=rng.choice(COLOURS), o=rng.choice(OBJECTS))
    options, answer = mc(rng, pool, min(len(pool), rng.randint(3, 4)))
    return Draft(placeholders(1, n) + q, images, answer, options, instruction_id=i % 2)


def knowledge(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """Interleaved image-text documents (S-1, S-2); MultiModalQA and WikiVQA also carry
    `{table#k}` in the shared numbering."""
    n = (2, 4, 7, 12, 20)[i % 5]
    uses_tables = name in ("MultiModalQA", "WikiVQA")
    ext = "png" if name in ("SlideVQA", "DocVQA") or (uses_tables and i % 2) else "jpg"
    parts, images = [], []
    for k in range(1, n + 1):
        is_table = uses_tables and k % 3 == 1
        im = mk.table() if is_table else mk.picture()
        images.append((f"{name.lower()}_{i:03d}/{'table' if is_table else 'img'}_{k}.{'png' if is_table else ext}", im))
        tag = f"{{{'table' if is_table else 'image'}#{k}}}"
        # one sample in five has long passages, so that it exceeds the token budget
        parts.append(f"{tag}{paragraph(rng, 5 if i % 5 == 4 else rng.randint(1, 3))}\n")
    obj = rng.choice(OBJECTS)
    question = f"Question: Which {rng.choice(('colour', 'city', 'number'))} is linked to the {obj}?"
    pool = [*COLOURS, *CITIES, *map(str, range(1, 13))]
    options, answer = mc(rng, pool, 4)
    return Draft("".join(parts) + question, images, answer, options, instruction_id=i % 2)


def difference(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """Image pairs followed by a short description (S-3): adjacent placeholders, open-ended.
    Later samples add solved pairs before the asked one."""
    pairs = (1, 1, 2, 3, 4)[i % 5]
    ext = "png" if name == "CLEVR-Change" else "jpg"
    label = {"Spot-the-Diff": "Difference:", "CLEVR-Change": "Difference:", "IEdit": "Edit:"}[name]
    parts, images = [], []
    answer = ""
    for p in range(pairs):
        for side in ("before", "after"):
            images.append((f"pair_{i:03d}_{p}/{side}.{ext}", mk.picture(size=48)))
        desc = f"the {rng.choice(COLOURS)} {rng.choice(OBJECTS)} {rng.choice(('moved', 'disappeared', 'changed colour', 'was added'))}"
        k = 2 * p + 1
        if p < pairs - 1:
            parts.append(f"{{image#{k}}}{{image#{k + 1}}}{label} {desc}.\n")
        else:
            parts.append(f"{{image#{k}}}{{image#{k + 1}}}{label}")
            answer = desc
    return Draft("".join(parts), images, answer)


def dialogue(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """MMCoQA: a conversation about documents with images; the answer is a short entity that
    substring scoring looks for. One sample in five has a history long enough to truncate."""
    n = (2, 3, 5, 8, 6)[i % 5]
    images = [(f"conv_{i:03d}/doc_{k}.jpg", mk.picture()) for k in range(1, n + 1)]
    turns = 40 if i % 5 == 4 else n + rng.randint(0, 2)
    history = []
    for t in range(turns):  # the first n answers each show one document, in order
        shown = f"{{image#{t + 1}}} " if t < n else ""
        history.append(f"Q: {sentence(rng)} A: {shown}{sentence(rng, 3, 6)}")
    answer = rng.choice(CITIES)
    question = f"Question: In which city was the {rng.choice(OBJECTS)} made?"
    return Draft("Conversation history:\n" + "\n".join(history) + "\n" + question, images, answer)


def alfred(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """ALFRED: a goal and step-by-step frames; consecutive steps often reuse the same frame
    (repeated paths)."""
    steps = (2, 5, 9, 14, 33)[i % 5]
    frames = [mk.picture() for _ in range(max(2, steps // 2))]
    images, parts = [], []
    for s in range(1, steps + 1):
        f = min((s - 1) // 2, len(frames) - 1)
        images.append((f"trial_{i:03d}/frame_{f:02d}.jpg", frames[f]))
        parts.append(f"{{image#{s}}}Step#{s}: {sentence(rng, 5, 10)} " if s < steps else f"{{image#{s}}}")
    goal = f"Put a {rng.choice(COLOURS)} {rng.choice(OBJECTS)} in the {rng.choice(('cupboard', 'fridge', 'sink'))}."
    answer = f"Pick up the {rng.choice(OBJECTS)} from the {rng.choice(('table', 'counter', 'shelf'))}."
    return Draft(f"Your Main Goal: {goal} Step Details: " + "".join(parts) + " Current Step: ", images, answer)


def driving(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """nuscenes: six camera views per time step, one to six steps."""
    steps = (1, 1, 2, 4, 6)[i % 5]
    cams = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
    images = [(f"samples/{cam}/scene_{i:03d}_t{t}.jpg", mk.picture()) for t in range(steps) for cam in cams]
    parts = [f"Time {t}: " + placeholders(6 * t + 1, 6) + "\n" for t in range(steps)]
    question = f"Question: Is the {rng.choice(('car', 'truck', 'pedestrian', 'bus'))} ahead moving or parked?"
    options, answer = mc(rng, ["moving", "parked", "turning left", "turning right", "reversing"], 4)
    return Draft("".join(parts) + question, images, answer, options)


def needle_text(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """A passkey sentence hidden at some depth of a long essay, with distractor images (drawn
    from a small pool, so paths repeat) interleaved in the text."""
    n_par = (4, 10, 25, 60, 120)[i % 5]
    n_img = (2, 3, 6, 12, 24)[i % 5]
    pool = [f"haystack/pool_{k}.jpg" for k in range(4)]
    images = [(pool[k % len(pool)], None) for k in range(n_img)]
    city = rng.choice(CITIES)
    key = str(rng.randrange(1_000_000, 10_000_000))
    needle = f"The special magic {city} number is: {key}"
    pars = [paragraph(rng, 3) for _ in range(n_par)]
    depth = rng.randrange(n_par)
    pars[depth] = needle + " " + pars[depth]
    per = max(1, n_par // n_img)
    body = ""
    k = 0
    for p, text in enumerate(pars):
        if p % per == 0 and k < n_img:
            k += 1
            body += f"{{image#{k}}}"
        body += text + " "
    body += placeholders(k + 1, n_img - k)
    return Draft(f"\nContext: {body}\nQuestion: What is the special magic {city} number?", images, key)


def needle_image(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """The passkey is written inside one image among distractors; the essay is the haystack."""
    n_img = (2, 4, 8, 16, 40)[i % 5]
    key = str(rng.randrange(1_000_000, 10_000_000))
    target = rng.randrange(n_img)
    pool = [f"haystack/pool_{k}.png" for k in range(3)]
    images = [(f"needle/sample_{i:03d}.png", mk.picture(size=64, text=key)) if k == target
              else (pool[k % len(pool)], None) for k in range(n_img)]
    body = "".join(f"{{image#{k + 1}}}{paragraph(rng, (1, 2, 3, 6, 8)[i % 5])} " for k in range(n_img))
    return Draft(f"\nContext: {body}\nQuestion: What is the special magic number written in one of the images?",
                 images, key)


def retrieval(rng: random.Random, mk: ImageMaker, i: int, name: str) -> Draft:
    """GPR1200: candidates then the anchor; options are bare 'imageK' strings. One sample has
    twelve candidates, where 'image1' shadows 'image10'..'image12' in MileBench's matching."""
    n = (3, 5, 12, 8, 4)[i % 5]
    images = [(f"gpr/{i:03d}_{k}.jpg", mk.picture()) for k in range(1, n + 2)]
    parts = " ".join(f"Image{k}:{{image#{k}}}" for k in range(1, n + 1))
    context = f"{parts} Anchor Image: {{image#{n + 1}}}. Choose the answer from the choice list. "
    options = [f"image{k}" for k in range(1, n + 1)]
    return Draft(context, images, rng.choice(options), options)


KINDS: dict[str, Callable[[random.Random, ImageMaker, int, str], Draft]] = {
    **{name: temporal for name in TEMPORAL_QUESTIONS},
    **{name: knowledge for name in ("WebQA", "TQA", "MultiModalQA", "WikiVQA", "SlideVQA", "OCR-VQA", "DocVQA")},
    **{name: difference for name in ("Spot-the-Diff", "CLEVR-Change", "IEdit")},
    "MMCoQA": dialogue,
    "ALFRED": alfred,
    "nuscenes": driving,
    "TextNeedleInAHaystack": needle_text,
    "ImageNeedleInAHaystack": needle_image,
    "GPR1200": retrieval,
}
assert set(KINDS) == set(catalog.NAMES), "every catalog dataset needs a generator"

INSTRUCTIONS: dict[str, list[str]] = {
    "GPR1200": ["Given a set of candidate images and an anchor image, pick the candidate that shows the "
                "same object or scene as the anchor image."],
    "TextNeedleInAHaystack": ["Read the document carefully, including the images, and answer the question "
                              "with the number only."],
    "ImageNeedleInAHaystack": ["One of the images has a number written on it. Find it and answer with "
                               "the number only."],
}


def instructions_for(name: str) -> list[str]:
    if name in INSTRUCTIONS:
        return INSTRUCTIONS[name]
    info = catalog.BY_NAME[name]
    if info.question_type == "multi-choice":
        return [f"You are given images from the {name} task. Answer the question by choosing one option "
                "from the choice list.",
                f"Look at every image ({name}) and select the best option from the choice list."]
    return [f"You are given images from the {name} task. Answer the question with a short sentence."]


# ---------------------------------------------------------------- writing ---------------

def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        im.save(path, format="PNG")
    else:
        im.save(path, format="JPEG", quality=85)


def _grid(pictures: list[Image.Image], cell: int = 16) -> Image.Image:
    """The combined_1_images grid: all of a sample's images as thumbnails, row by row."""
    cols = math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / cols)
    grid = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for j, pic in enumerate(pictures):
        grid.paste(pic.resize((cell, cell), Image.Resampling.BILINEAR), ((j % cols) * cell, (j // cols) * cell))
    return grid


def generate_dataset(out: Path, name: str, samples: int, seed: int) -> tuple[dict, dict]:
    """Write `<out>/<name>/` and return the (test, adv) JSON documents."""
    rng = random.Random(f"milebench-synthetic:{seed}:{name}")
    mk = ImageMaker(rng)
    root = out / name
    info = catalog.BY_NAME[name]
    instructions = instructions_for(name)
    pool_cache: dict[str, Image.Image] = {}
    records = []
    for i in range(samples):
        draft = KINDS[name](rng, mk, i, name)
        pictures = []
        for rel, im in draft.images:
            if im is None:  # a pooled (repeated) image: made once per dataset
                if rel not in pool_cache:
                    pool_cache[rel] = mk.picture()
                im = pool_cache[rel]
            elif rel in pool_cache and pool_cache[rel] is not im:
                im = pool_cache[rel]  # same path within a sample: same picture
            pool_cache[rel] = im
            pictures.append(im)
        for rel in dict.fromkeys(r for r, _ in draft.images):
            path = root / IMAGES_DIR / rel
            if not path.exists():
                _save(pool_cache[rel], path)
        combined = f"{name}_{i}.jpg"
        _save(_grid(pictures), root / COMBINED_DIR / combined)
        instance: dict = {"context": draft.context, "images_path": [r for r, _ in draft.images]}
        if draft.choices is not None:
            instance["choice_list"] = draft.choices
        instance["combined_1_images"] = [combined]
        records.append({
            "sample_id": i,
            "task_instruction_id": draft.instruction_id % len(instructions),
            "image_quantity_level": catalog.image_quantity_level(len(draft.images)),
            "task_instance": instance,
            "response": draft.response,
        })
    meta = {"dataset": name, "split": "test", "num_sample": samples, "task_instruction": instructions,
            "question_type": info.question_type}
    test = {"meta_data": meta, "data": records}
    adv = json.loads(json.dumps(test))
    adv["meta_data"]["split"] = "adv"
    for rec in adv["data"]:  # adversarial variant: the options rotated, the gold unchanged
        choices = rec["task_instance"].get("choice_list")
        if choices and info.lettered_choices:
            rec["task_instance"]["choice_list"] = choices[1:] + choices[:1]
    for doc, suffix in ((test, ""), (adv, "-adv")):
        (root / f"{name}{suffix}.json").write_text(json.dumps(doc, indent=4, ensure_ascii=False), encoding="utf-8")
    return test, adv


def write_parquet(out: Path, docs: dict[str, tuple[dict, dict]]) -> None:
    """The Hub form: one parquet file per split with the resolved instruction, a null
    choice_list for open-ended sets, and a README whose `configs` maps splits to files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    instance_type = pa.struct([
        ("context", pa.string()),
        ("images_path", pa.list_(pa.string())),
        ("choice_list", pa.list_(pa.string())),
        ("combined_1_images", pa.list_(pa.string())),
    ])
    schema = pa.schema([("sample_id", pa.int32()), ("task_instruction", pa.string()),
                        ("task_instance", instance_type), ("response", pa.string())])
    folder = out / PARQUET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    splits = []
    for name, pair in docs.items():
        for doc, adversarial in zip(pair, (False, True)):
            split = split_name(name, adversarial)
            instructions = doc["meta_data"]["task_instruction"]
            rows = [{
                "sample_id": rec["sample_id"],
                "task_instruction": instructions[rec["task_instruction_id"]],
                "task_instance": {
                    "context": rec["task_instance"]["context"],
                    "images_path": rec["task_instance"]["images_path"],
                    "choice_list": rec["task_instance"].get("choice_list"),
                    "combined_1_images": rec["task_instance"].get("combined_1_images"),
                },
                "response": rec["response"],
            } for rec in doc["data"]]
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{split}-00000-of-00001.parquet")
            splits.append(split)
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {split}-*"]
    lines += ["---", "", "Generated MileBench-format data (Hub parquet form).", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def generate(out: Path | str, samples: int = DEFAULT_SAMPLES, seed: int = 0, progress: bool = True) -> Path:
    """Write the whole copy into `out` (which must not exist or be empty)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {}
    for name in tqdm(catalog.NAMES, desc="milebench-synthetic", disable=not progress):
        docs[name] = generate_dataset(out, name, samples, seed)
    write_parquet(out, docs)
    marker = {"generator_version": GENERATOR_VERSION, "samples": samples, "seed": seed}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_synthetic(data_dir: Path | str = DEFAULT_DIR, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> Path:
    """Return `data_dir`, generating it first when absent, or rebuilding it when it is a
    generated copy made with other parameters or an older generator. A folder without the
    marker file is someone's own data and is never touched. The copy is built in a temporary
    sibling and renamed into place, so concurrent callers never see a half-written copy."""
    data_dir = Path(data_dir)
    wanted = {"generator_version": GENERATOR_VERSION, "samples": samples, "seed": seed}
    marker = data_dir / MARKER_FILE
    if data_dir.exists():
        if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) == wanted:
            return data_dir
    return build_folder_atomic(data_dir, lambda tmp: generate(tmp, samples=samples, seed=seed, progress=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be absent or empty)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    start = time.perf_counter()
    generate(args.out, samples=args.samples, seed=args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    n_files = sum(1 for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(catalog.NAMES)} datasets x {args.samples} samples to {args.out}: "
          f"{n_files} files, {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
