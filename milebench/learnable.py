"""A learnable MileBench: the 29 datasets, in LLaVA-1.5's shape, that a small model can learn.

The random-weight tiny model answers nothing, so on it every method scores alike. This copy
keeps MileBench's layout, its dataset names, task groups, prompt forms and answer types, but
its pictures are simple enough (one shape on a grey ground) for a small model to learn in
minutes (`standins.llava_standin` trains it), and its shape is LLaVA-1.5's on MileBench:

- many tokens per picture (168 px, 144 patches) and image-heavy prompts (about 0.85-0.9 of
  the prompt tokens, LLaVA's system prompt included), long enough that MileBench's truncation
  drops pictures from the longest samples (the stand-in's `max_context_len` is 1800);
- the answer depends on the content of specific pictures or text: every picture holds a
  coloured shape or a grey one, and the question picks pictures by a label, a name, an event
  in a video, a change between pictures or a match with an anchor, so the other pictures are
  distractors that look like evidence;
- the answer's content comes first and takes more than one content token, drawn from two
  places ("red and blue": the colours of two pictures; "748": a number's digits; "red:blue":
  the two needle pictures' colours as one word), so the tokens decoded after the prefill
  need the pruned cache.

Six skills carry the 29 datasets, each dataset with its own wording, label word, instruction,
sizes and answer type (multiple choice with four colour-pair options, free form, needle word,
GPR1200's bare `imageK` options):

| skill | datasets | the question picks |
|---|---|---|
| label | ObjectExistence, ObjectInteraction, CharacterOrder, EgocentricNavigation, nuscenes, ALFRED, MMCoQA | two pictures by the label after each ("<image> view 3.") |
| named | WebQA, TQA, MultiModalQA, WikiVQA, SlideVQA, OCR-VQA, DocVQA | two pictures by the name in the caption after each |
| event | ActionLocalization, ActionPrediction, ActionSequence, MovingAttribute, ObjectShuffle, MovingDirection, CounterfactualInference, StateChange, SceneTransition | the two short events (coloured frames) among grey frames, in order |
| change | Spot-the-Diff, CLEVR-Change, IEdit | the last pair of pictures, after described pairs |
| needle | TextNeedleInAHaystack (a number in one sentence, a second city's number beside it), ImageNeedleInAHaystack (the two coloured pictures among grey ones) | the needle |
| retrieval | GPR1200 | the candidate whose shape has the anchor's colour |

The scored samples are `<out>/<D>/<D>.json`; the training samples live in their own data dir
`<out>/train/<D>/<D>.json` with pictures rendered separately, so no scored picture or sample
is trained on. A pure function of (seed, sample counts): the same arguments give
byte-identical files.

    python -m milebench.learnable --out data/milebench-learnable [--samples 12] [--train 400] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw
from tqdm import tqdm

from milebench import catalog
from milebench.data import IMAGES_DIR
from milebench.files import build_folder_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "data" / "milebench-learnable"
TRAIN_DIR = "train"
MARKER_FILE = "LEARNABLE.json"
GENERATOR_VERSION = 5
DEFAULT_SAMPLES = 12
DEFAULT_TRAIN = 400

IMAGE_SIZE = 168  # 12 x 12 patches of 14 px: 144 tokens per picture
BACKGROUND = 120  # grey ground
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
GREY = "grey"  # the filler pictures' shape: there, but never asked about
GREY_SHADES = (80, 165)
VARIANTS = 10  # pictures per colour and split (size, place, kind and shade jittered)
NAMES = ("river", "garden", "house", "window", "road", "market", "bridge", "village",
         "mountain", "lake", "train", "boat", "letter", "map", "door", "stone")
ANSWER_LINK = {"pair": " and ", "change": " to "}


# ---------------------------------------------------------------- pictures --------------

@dataclass(frozen=True)
class Picture:
    path: str  # relative to <D>/images/
    colour: str  # a key of COLOURS, or GREY


def render(colour: str, rng: random.Random) -> Image.Image:
    """One shape (square or disc) on a grey ground, size and place jittered: it covers about
    12 to 36 of the 144 patches. Grey shapes are darker or lighter than the ground."""
    g = BACKGROUND + rng.randint(-8, 8)
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (g, g, g))
    draw = ImageDraw.Draw(im)
    side = rng.randint(50, 84)
    x0, y0 = rng.randint(2, IMAGE_SIZE - side - 2), rng.randint(2, IMAGE_SIZE - side - 2)
    base = (rng.choice(GREY_SHADES),) * 3 if colour == GREY else COLOURS[colour]
    fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in base)
    (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x0 + side, y0 + side), fill=fill)
    return im


def make_pool(rng: random.Random) -> tuple[dict[str, list[Picture]], dict[str, Image.Image]]:
    """VARIANTS pictures per colour (twice as many grey ones) under neutral names."""
    keys = [c for c in (*COLOURS, GREY, GREY) for _ in range(VARIANTS)]
    order = list(range(len(keys)))
    rng.shuffle(order)
    pool: dict[str, list[Picture]] = {c: [] for c in (*COLOURS, GREY)}
    images: dict[str, Image.Image] = {}
    for i, colour in enumerate(keys):
        path = f"pool/p{order[i]:03d}.png"
        images[path] = render(colour, rng)
        pool[colour].append(Picture(path, colour))
    return pool, images


# ---------------------------------------------------------------- samples ---------------

@dataclass
class Draft:
    context: str
    images: list[Picture]
    response: str
    choices: list[str] | None = None


class Maker:
    """The random choices shared by the skills."""

    def __init__(self, rng: random.Random, pool: dict[str, list[Picture]]):
        self.rng = rng
        self.pool = pool

    def picture(self, colour: str) -> Picture:
        return self.rng.choice(self.pool[colour])

    def colours(self, n: int) -> list[str]:
        """n colours, neighbours always different (so a picture never repeats its neighbour)."""
        out: list[str] = []
        for _ in range(n):
            out.append(self.rng.choice([c for c in COLOURS if not out or c != out[-1]]))
        return out

    def pair_options(self, a: str, b: str, shown: Sequence[str] = ()) -> list[str]:
        """Four colour pairs on a 2 x 2 grid: first colour a or x, second colour b or y (x and
        y two other colours). Every first colour and every second colour occurs in exactly two
        options, so neither answer token alone settles the option, and nothing in the options'
        make-up marks the gold: with the gold sharing its colours with two decoys and the
        decoys not with each other, "the colour named twice" would point at it. x and y are
        drawn from the `shown` colours (the other pictures') where two are there: a decoy
        colour that no picture shows marks its options as wrong without any lookup (up to
        version 4, "pick an option whose colours the pictures show" scored 0.37 and 0.33 on
        ObjectExistence and WebQA, where chance is 0.25, and a stand-in learnt just that)."""
        others = sorted({c for c in shown if c not in (a, b)})
        x, y = self.rng.sample(others if len(others) >= 2 else [c for c in COLOURS if c not in (a, b)], 2)
        options = [pair(a, b), pair(a, y), pair(x, b), pair(x, y)]
        self.rng.shuffle(options)
        return options


def pair(a: str, b: str) -> str:
    return f"{a}{ANSWER_LINK['pair']}{b}"


@dataclass(frozen=True)
class Form:
    """A dataset's wording: how its pictures are introduced and what its question says."""

    label: str = "image"  # label word after each picture (label skill), or frame wording
    question: str = ""  # the question, with {a}/{b} for the picked labels or names
    caption: bool = False  # a short sentence after each picture
    intro: str = ""  # text before the pictures


def label_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Labelled pictures, every one with a coloured shape and followed by its label ("<image>
    view 3."); the question names two labels."""
    rng = mk.rng
    n = rng.randint(max(2, lo), hi)
    colours = mk.colours(n)
    pics = [mk.picture(c) for c in colours]
    i = rng.randrange(n)
    j = rng.choice([k for k in range(n) if colours[k] != colours[i]])
    body = form.intro + "".join(f"{{image#{k + 1}}} {form.label} {k + 1}.\n" for k in range(n))
    question = form.question.format(a=f"{form.label} {i + 1}", b=f"{form.label} {j + 1}")
    gold = pair(colours[i], colours[j])
    return Draft(body + question, pics, gold, mk.pair_options(colours[i], colours[j], colours) if choice else None)


def named_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Pictures each followed by a name (a caption: "<image> river."); the question names two
    of them (the form's label word is what the question calls them)."""
    rng = mk.rng
    n = rng.randint(max(2, lo), hi)
    names = rng.sample(NAMES, n)
    colours = mk.colours(n)
    pics = [mk.picture(c) for c in colours]
    i = rng.randrange(n)
    j = rng.choice([k for k in range(n) if colours[k] != colours[i]])
    body = form.intro + "".join(f"{{image#{k + 1}}} {names[k]}.\n" for k in range(n))
    question = form.question.format(a=names[i], b=names[j])
    gold = pair(colours[i], colours[j])
    return Draft(body + question, pics, gold, mk.pair_options(colours[i], colours[j], colours) if choice else None)


def event_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Video frames, grey but for two short events (a coloured shape in two or three
    consecutive frames each, the second after the first); asked: the events' colours in order."""
    rng = mk.rng
    n = rng.randint(max(5, lo), hi)
    first, second = mk.colours(2)
    la, lb = rng.randint(2, 3), rng.randint(2, 3)
    la, lb = min(la, (n - 1) // 2), min(lb, (n - 1) // 2)
    start_a = rng.randrange(0, n - la - lb)
    start_b = rng.randrange(start_a + la + 1, n - lb + 1)
    colours = [GREY] * n
    colours[start_a:start_a + la] = [first] * la
    colours[start_b:start_b + lb] = [second] * lb
    pics = [mk.picture(c) for c in colours]
    frames = "".join(f"{{image#{k}}}" for k in range(1, n + 1))
    return Draft(form.intro + frames + "\n" + form.question, pics, pair(first, second),
                 mk.pair_options(first, second) if choice else None)


def change_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Pairs of pictures, each pair's change written after it; the last pair's is asked."""
    rng = mk.rng
    pairs = rng.randint(max(1, lo), hi)
    pics, parts = [], []
    for p in range(pairs):
        before, after = mk.colours(2)
        pics += [mk.picture(before), mk.picture(after)]
        text = f"{form.label}: {before}{ANSWER_LINK['change']}{after}.\n" if p < pairs - 1 else f"{form.label}:"
        parts.append(f"{{image#{2 * p + 1}}}{{image#{2 * p + 2}}}{text}")
    return Draft(form.intro + "".join(parts), pics, f"{before}{ANSWER_LINK['change']}{after}")


def text_needle_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Grey pictures with short sentences between them; two sentences state two names'
    numbers, one is asked."""
    rng = mk.rng
    n = rng.randint(max(2, lo), hi)
    pics = [mk.picture(GREY) for _ in range(n)]
    name, other = rng.sample(NAMES, 2)
    number, decoy = (str(rng.randint(100, 999)) for _ in range(2))
    slots = rng.sample(range(n), 2)
    body = form.intro
    for k in range(n):
        body += f"{{image#{k + 1}}}"
        if k == slots[0]:
            body += f" The special magic {name} number is: {number}.\n"
        elif k == slots[1]:
            body += f" The special magic {other} number is: {decoy}.\n"
    return Draft(body + form.question.format(a=name), pics, number)


def image_needle_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """Grey pictures but for two coloured ones: the answer is their colours as one word,
    joined by a colon, which MileBench's normalisation keeps (a hyphen would split the word
    and fail its whole-token match) and which leaves each colour's tokens the same whatever
    its neighbour (run together, "whitered" is split as "whit|ere|d")."""
    rng = mk.rng
    n = rng.randint(max(3, lo), hi)
    colours = [GREY] * n
    i, j = sorted(rng.sample(range(n), 2))
    first, second = mk.colours(2)
    colours[i], colours[j] = first, second
    pics = [mk.picture(c) for c in colours]
    body = form.intro + "".join(f"{{image#{k + 1}}}" for k in range(n))
    return Draft(body + "\n" + form.question, pics, f"{first}:{second}")


def retrieval_skill(mk: Maker, form: Form, lo: int, hi: int, choice: bool) -> Draft:
    """GPR1200: candidates of different colours and an anchor; the match has its colour."""
    rng = mk.rng
    n = rng.randint(max(2, lo), min(hi, len(COLOURS)))
    colours = rng.sample(list(COLOURS), n)
    gold = rng.randrange(n)
    pics = [mk.picture(c) for c in colours] + [mk.picture(colours[gold])]
    body = " ".join(f"{{image#{k + 1}}} image{k + 1}." for k in range(n))
    context = f"{body} Anchor Image: {{image#{n + 1}}}. {form.question}"
    return Draft(context, pics, f"image{gold + 1}", [f"image{k + 1}" for k in range(n)])


Skill = Callable[[Maker, Form, int, int, bool], Draft]


@dataclass(frozen=True)
class Task:
    skill: Skill
    form: Form
    sizes: tuple[int, int]  # scored samples: pictures (or pairs) per sample
    instruction: str


MC = "Answer with the option's content from the choice list."
PAIR_Q = "Which colours are {a} and {b}? Answer with both colours."
EVENT_Q = "Question: Which colours do the two events in the video have, in order?"
LABEL = (7, 12)
EVENT = (8, 13)
TASKS: dict[str, Task] = {
    # T-1 .. T-4: videos (events) and labelled frames
    "ActionLocalization": Task(event_skill, Form(question=EVENT_Q), EVENT, MC),
    "ActionPrediction": Task(event_skill, Form(intro="Watch the clip. ", question=EVENT_Q), EVENT, MC),
    "ActionSequence": Task(event_skill, Form(question="Question: In which order do the two coloured actions happen?"), EVENT, MC),
    "ObjectExistence": Task(label_skill, Form("image", "Question: Which colours do the objects in {a} and {b} have?"), LABEL, MC),
    "ObjectInteraction": Task(label_skill, Form("frame", "Question: Which colours are the objects held in {a} and {b}?"), LABEL, MC),
    "MovingAttribute": Task(event_skill, Form(question="Question: Which colours does the moving object take, in order?"), EVENT, MC),
    "ObjectShuffle": Task(event_skill, Form(intro="Cups are shuffled. ", question="Question: Which colours are shown, first and then later?"), EVENT, MC),
    "EgocentricNavigation": Task(label_skill, Form("step", "Question: Which colours do you see at {a} and at {b}?"), LABEL, MC),
    "MovingDirection": Task(event_skill, Form(question="Question: Which colours does the object show as it moves, in order?"), EVENT, MC),
    "CounterfactualInference": Task(event_skill, Form(question="Question: Which two colours appear before the video ends, in order?"), EVENT, MC),
    "StateChange": Task(event_skill, Form(question="Question: Which colour does the object have first, and which after the change?"), EVENT, MC),
    "CharacterOrder": Task(label_skill, Form("panel", "Question: Which colours do the characters in {a} and {b} wear?"), LABEL, MC),
    "SceneTransition": Task(event_skill, Form(question="Question: Which two scenes follow each other, by colour?"), EVENT, MC),
    # S-1, S-2: pictures named by captions (knowledge and text-rich pages)
    "WebQA": Task(named_skill, Form("photo of the", "Question: Which colours are the {a} and the {b}?"), LABEL, MC),
    "TQA": Task(named_skill, Form("diagram of the", "Question: Which colours mark the {a} and the {b}?"), LABEL, MC),
    "MultiModalQA": Task(named_skill, Form("table row", "Question: Which colours belong to {a} and {b}?"), LABEL, MC),
    "WikiVQA": Task(named_skill, Form("article", "Question: Which colours show the {a} and the {b}?"), LABEL, MC),
    "SlideVQA": Task(named_skill, Form("slide", "Question: Which colours are on the slides {a} and {b}?"), LABEL, MC),
    "OCR-VQA": Task(named_skill, Form("cover", "Question: Which colours are the covers {a} and {b}?"), LABEL, MC),
    "DocVQA": Task(named_skill, Form("page", "Question: Which colours are the pages {a} and {b}?"), LABEL, MC),
    # S-3: changes between pairs (free form, ROUGE-L)
    "Spot-the-Diff": Task(change_skill, Form("Difference"), (3, 6), "Describe the difference in the last pair."),
    "CLEVR-Change": Task(change_skill, Form("Change"), (3, 6), "Describe how the shape changes."),
    "IEdit": Task(change_skill, Form("Edit", intro="Each pair shows an edit. "), (3, 6), "Describe the last edit."),
    # S-4: dialogue
    "MMCoQA": Task(label_skill, Form("turn", PAIR_Q, intro="A conversation shows pictures.\n"), LABEL, "Answer the question."),
    "ALFRED": Task(label_skill, Form("step", "Question: Which colours are the objects at {a} and {b}?"), LABEL, "Describe the objects."),
    # S-5: driving views
    "nuscenes": Task(label_skill, Form("camera", "Question: Which colours are the cars seen by {a} and {b}?"), LABEL, MC),
    # NH, IR
    "TextNeedleInAHaystack": Task(text_needle_skill, Form(intro="Context: ", question="\nQuestion: What is the special magic {a} number?"), (6, 10), "Read the context and answer."),
    "ImageNeedleInAHaystack": Task(image_needle_skill, Form(question="Question: Which word do the two coloured pictures spell, by their colours (first:second)?"), (7, 12), "Find the needles."),
    "GPR1200": Task(retrieval_skill, Form(question="Choose the answer from the choice list."), (4, 6), "Find the image most similar to the anchor."),
}
assert tuple(TASKS) != () and set(TASKS) == set(catalog.NAMES), "every MileBench dataset needs a learnable form"
# The datasets whose every picture is followed by its label or name ("<image> image 3.",
# "<image> river.", "<image> image1."): a stand-in can be taught there what each picture shows.
LABELLED = tuple(name for name, task in TASKS.items() if task.skill in (label_skill, named_skill, retrieval_skill))
# Training samples are shorter than the scored ones (at most about 1200 tokens against 1800):
# a lookup is learnt sooner among few pictures and a step costs half as much. The events and
# changes carry over to longer prompts; the lookup by label is not learnt at any size (README,
# "What the label lookup lacks"), and on version 4 training on 2 to 12 pictures did not
# change that in 400 steps.
TRAIN_SIZES = {label_skill: (2, 8), named_skill: (2, 8), event_skill: (5, 9), change_skill: (1, 4),
               text_needle_skill: (2, 7), image_needle_skill: (3, 8), retrieval_skill: (2, 6)}


# ---------------------------------------------------------------- writing ---------------

def _records(name: str, drafts: list[Draft], instruction: str) -> dict:
    info = catalog.get(name)
    data = []
    for i, d in enumerate(drafts):
        instance: dict = {"context": d.context, "images_path": [p.path for p in d.images]}
        if info.question_type == "multi-choice":
            instance["choice_list"] = d.choices
        data.append({
            "sample_id": i,
            "task_instruction_id": 0,
            "image_quantity_level": catalog.image_quantity_level(len(d.images)),
            "task_instance": instance,
            "response": d.response,
        })
    meta = {"dataset": name, "split": "test", "num_sample": len(drafts),
            "task_instruction": [instruction], "question_type": info.question_type}
    return {"meta_data": meta, "data": data}


def make_drafts(name: str, split: str, samples: int, seed: int, pool: dict[str, list[Picture]]) -> list[Draft]:
    task = TASKS[name]
    mk = Maker(random.Random(f"milebench-learnable:{seed}:{split}:{name}"), pool)
    sizes = TRAIN_SIZES[task.skill] if split == "train" else task.sizes
    choice = catalog.get(name).question_type == "multi-choice"
    return [task.skill(mk, task.form, *sizes, choice) for _ in range(samples)]


def write_split(data_dir: Path, split: str, samples: int, seed: int, progress: bool = False) -> None:
    """Every dataset of one split into `data_dir/<D>/` (pictures + `<D>.json`)."""
    pool, images = make_pool(random.Random(f"milebench-learnable:{seed}:{split}:pool"))
    for name in tqdm(catalog.NAMES, desc=f"milebench-learnable {split}", disable=not progress):
        drafts = make_drafts(name, split, samples, seed, pool)
        root = data_dir / name
        for rel in sorted({p.path for d in drafts for p in d.images}):
            path = root / IMAGES_DIR / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            images[rel].save(path, format="PNG")
        doc = _records(name, drafts, TASKS[name].instruction)
        (root / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def marker(samples: int, train: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "samples": samples, "train": train, "seed": seed}


def generate(out: Path | str, samples: int = DEFAULT_SAMPLES, train: int = DEFAULT_TRAIN, seed: int = 0,
             progress: bool = False) -> Path:
    """Write the scored split into `out` and the training split into `out/train`."""
    if samples < 1 or train < 1:
        raise ValueError(f"samples and train must be >= 1, got {samples} and {train}")
    out = Path(out)
    write_split(out, "eval", samples, seed, progress)
    write_split(out / TRAIN_DIR, "train", train, seed, progress)
    (out / MARKER_FILE).write_text(json.dumps(marker(samples, train, seed), indent=2) + "\n", encoding="utf-8")
    return out


def ensure_learnable(data_dir: Path | str = DEFAULT_DIR, samples: int = DEFAULT_SAMPLES,
                     train: int = DEFAULT_TRAIN, seed: int = 0) -> Path:
    """Return `data_dir`, (re)generating it when absent or made with other parameters. Built
    in a temporary sibling and renamed into place, so readers never see half a copy; a folder
    without the marker file is someone's own data and is never touched."""
    data_dir = Path(data_dir)
    path = data_dir / MARKER_FILE
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == marker(samples, train, seed):
        return data_dir
    if data_dir.exists() and not path.is_file():
        raise FileExistsError(f"{data_dir} exists but holds no {MARKER_FILE}: not a generated learnable copy; "
                              "remove it or choose another folder")
    return build_folder_atomic(data_dir, lambda tmp: generate(tmp, samples, train, seed, progress=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="scored samples per dataset")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training samples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ensure_learnable(args.out, samples=args.samples, train=args.train, seed=args.seed)
    print(f"{args.out}: {len(TASKS)} datasets, {args.samples} scored + {args.train} training samples each "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
