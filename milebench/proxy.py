"""A MileBench-format proxy task set that a tiny model can learn in minutes.

Random-weight models score zero everywhere, so offline runs cannot tell a good KV-pruning
method from a bad one. These six datasets copy the situations that pruning must survive in
MileBench, with pictures simple enough (one coloured shape on a grey ground) that a tiny
CLIP learns them in minutes (`standins.proxy_llava` trains the model):

| dataset | MileBench situation | answer |
|---|---|---|
| ProxyVisualNeedle | a visual needle among many labelled pictures (one coloured, the rest black or white) | choice: "it is <colour>" |
| ProxyCrossModal | a text question about picture k among captioned ones | choice: "it is <colour>" |
| ProxyTemporal | a short event among many video frames | choice: "it was <colour>" |
| ProxyMultiTurn | a dialogue whose last turn refers back to an early turn's picture | choice: "it was <colour>" |
| ProxyTextNeedle | one sentence (a door's colour) hidden in a long text with pictures | free form (ROUGE-L): "colour <colour>" |
| ProxyImageDiff | the change within the last of several picture pairs, after solved pairs | free form (ROUGE-L): "from <c1> to <c2>" |

Every answer starts with a token that does not depend on the sample ("it", "colour",
"from"): the first answer token is predicted by the prefill, which always sees the whole
prompt, so only the later tokens feel the pruned cache.

The scored (held-out) samples are `<out>/<D>/<D>.json`; the training samples live in their
own data dir `<out>/train/<D>/<D>.json` with pictures rendered separately (other jitter), so
no scored picture or sample is ever trained on. Pictures are a small pool per split, reused
by path as MileBench reuses paths. A pure function of (seed, sample counts): the same
arguments give byte-identical files.

    python -m milebench.proxy --out data/milebench-proxy [--train 600] [--eval 40] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from milebench import catalog
from milebench.data import IMAGES_DIR
from milebench.files import build_folder_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "data" / "milebench-proxy"
TRAIN_DIR = "train"
MARKER_FILE = catalog.PROXY_MARKER
GENERATOR_VERSION = 1
DEFAULT_TRAIN = 300
DEFAULT_EVAL = 25

IMAGE_SIZE = 56  # the tiny LLaVA's input size: 4 x 4 patches of 14 px, 16 tokens per picture
BACKGROUND = 120  # grey ground; every colour below stands out from it
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
PLAIN = ("black", "white")  # the filler pictures
VIVID = tuple(c for c in COLOURS if c not in PLAIN)  # what questions ask about
VARIANTS = 8  # pictures per colour and split, size, place and kind jittered
CITIES = ("Paris", "Lisbon", "Hanoi", "Quito", "Perth", "Bergen", "Nairobi", "Oslo")
WORDS = (
    "the a of and to in is was for on with as by at from that it city river house window road "
    "garden morning light water table chair music story people small large old new quiet busy "
    "early late long walked opened looked found carried wrote painted counted moved built watched "
    "train bridge market teacher student baker farmer doctor child friend village mountain lake "
    "book letter map chart box cup ball door key stone bread fruit coffee boat history science "
    "summer winter evening season question answer reason result number idea"
).split()


# ---------------------------------------------------------------- pictures --------------

@dataclass(frozen=True)
class Picture:
    path: str  # relative to <D>/images/
    colour: str


def render(colour: str, rng: random.Random) -> Image.Image:
    """One shape (square or disc) of `colour` on a grey ground, size and place jittered: it
    covers about 4 to 9 of the 16 patches, the rest is ground."""
    g = BACKGROUND + rng.randint(-10, 10)
    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (g, g, g))
    draw = ImageDraw.Draw(im)
    side = rng.randint(22, 30)
    x0, y0 = rng.randint(1, IMAGE_SIZE - side - 1), rng.randint(1, IMAGE_SIZE - side - 1)
    fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[colour])
    (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x0 + side, y0 + side), fill=fill)
    return im


def make_pool(rng: random.Random) -> tuple[dict[str, list[Picture]], dict[str, Image.Image]]:
    """VARIANTS pictures per colour under neutral names (a name never tells the colour)."""
    keys = [c for c in COLOURS for _ in range(VARIANTS)]
    order = list(range(len(keys)))
    rng.shuffle(order)
    pool: dict[str, list[Picture]] = {c: [] for c in COLOURS}
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
    """The random choices shared by the task generators."""

    def __init__(self, rng: random.Random, pool: dict[str, list[Picture]]):
        self.rng = rng
        self.pool = pool

    def picture(self, colour: str) -> Picture:
        return self.rng.choice(self.pool[colour])

    def plain(self, n: int) -> list[Picture]:
        return [self.picture(self.rng.choice(PLAIN)) for _ in range(n)]

    def options(self, prefix: str) -> list[str]:
        """The four coloured answers, shuffled (the gold is always among them)."""
        options = [f"{prefix} {c}" for c in VIVID]
        self.rng.shuffle(options)
        return options

    def sentence(self, lo: int = 5, hi: int = 10) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi))).capitalize() + "."


# Every task hides one piece of evidence (a coloured shape, or a colour word in the text)
# among black-and-white pictures and filler text, and asks for its colour; the tasks differ
# in where the evidence sits and what surrounds it, as MileBench's situations do.

def visual_needle(mk: Maker, lo: int, hi: int) -> Draft:
    """Many labelled pictures, all black and white but one: which colour is the coloured one?"""
    rng = mk.rng
    pics = mk.plain(rng.randint(lo, hi))
    gold = rng.choice(VIVID)
    pics[rng.randrange(len(pics))] = mk.picture(gold)
    body = "".join(f"Picture {k}: {{image#{k}}}\n" for k in range(1, len(pics) + 1))
    question = "Question: One picture shows a coloured shape. What colour is it?"
    return Draft(body + question, pics, f"it is {gold}", mk.options("it is"))


def cross_modal(mk: Maker, lo: int, hi: int) -> Draft:
    """Captioned pictures (text between the images); the question names picture k, the one
    with a coloured shape, and asks its colour."""
    rng = mk.rng
    pics = mk.plain(rng.randint(lo, hi))
    gold = rng.choice(VIVID)
    k = rng.randrange(len(pics))
    pics[k] = mk.picture(gold)
    body = "".join(f"Picture {j + 1}: {{image#{j + 1}}} {mk.sentence(6, 12)}\n" for j in range(len(pics)))
    question = f"Question: Picture {k + 1} shows a coloured shape. What colour is it?"
    return Draft(body + question, pics, f"it is {gold}", mk.options("it is"))


def temporal(mk: Maker, lo: int, hi: int) -> Draft:
    """Unlabelled video frames, black and white but for a short event: a coloured shape in
    two or three consecutive frames somewhere before the last few."""
    rng = mk.rng
    n = rng.randint(lo, hi)
    pics = mk.plain(n)
    gold = rng.choice(VIVID)
    length = min(n, rng.randint(2, 3))
    start = rng.randrange(max(1, n - length - 2))
    for j in range(start, start + length):
        pics[j] = mk.picture(gold)
    frames = "".join(f"{{image#{j}}}" for j in range(1, n + 1))
    question = "\nQuestion: For a moment the video shows a coloured shape. What colour was it?"
    return Draft("Video frames: " + frames + question, pics, f"it was {gold}", mk.options("it was"))


def multi_turn(mk: Maker, lo: int, hi: int) -> Draft:
    """A dialogue showing one picture per turn; the last turn asks about the one coloured
    shape, shown in the first half of the dialogue."""
    rng = mk.rng
    pics = mk.plain(rng.randint(lo, hi))
    gold = rng.choice(VIVID)
    pics[rng.randrange(max(1, len(pics) // 2))] = mk.picture(gold)
    turns = [f"User: Turn {j + 1}. {{image#{j + 1}}}\nAssistant: {mk.sentence(3, 7)}\n" for j in range(len(pics))]
    question = "User: In an early turn I showed you a coloured shape. What colour was it?"
    return Draft("".join(turns) + question, pics, f"it was {gold}", mk.options("it was"))


def text_needle(mk: Maker, lo: int, hi: int) -> Draft:
    """A long text with black and white pictures; one sentence states a door's colour."""
    rng = mk.rng
    n_par = rng.randint(lo, hi)
    n_img = max(1, n_par // 2)
    city = rng.choice(CITIES)
    gold = rng.choice(VIVID)
    paragraphs = [mk.sentence() for _ in range(n_par)]
    paragraphs[rng.randrange(n_par)] += f" The door of {city} is {gold}."
    pics = mk.plain(n_img)
    body, k = "", 0
    per = max(1, n_par // n_img)
    for p, text in enumerate(paragraphs):
        if p % per == 0 and k < n_img:
            k += 1
            body += f"{{image#{k}}}"
        body += text + " "
    body += "".join(f"{{image#{j}}}" for j in range(k + 1, n_img + 1))
    return Draft(f"Context: {body}\nQuestion: What colour is the door of {city}?", pics, f"colour {gold}")


def image_diff(mk: Maker, lo: int, hi: int) -> Draft:
    """Pairs of pictures, each described (black to white or back); the last pair, asked, goes
    from one colour to another."""
    rng = mk.rng
    pairs = rng.randint(lo, hi)
    pics, parts = [], []
    for p in range(pairs - 1):
        before, after = rng.sample(PLAIN, 2)
        pics += [mk.picture(before), mk.picture(after)]
        parts.append(f"{{image#{2 * p + 1}}}{{image#{2 * p + 2}}}Change: from {before} to {after}.\n")
    before, after = rng.sample(VIVID, 2)
    pics += [mk.picture(before), mk.picture(after)]
    parts.append(f"{{image#{2 * pairs - 1}}}{{image#{2 * pairs}}}Change:")
    return Draft("".join(parts), pics, f"from {before} to {after}")


@dataclass(frozen=True)
class Task:
    make: Callable[[Maker, int, int], Draft]
    sizes: tuple[int, int]  # scored samples: the generator's size range (pictures, paragraphs or pairs)
    train_sizes: tuple[int, int]  # training samples: also short ones, where a lookup is easy to learn
    instruction: str


MC_INSTRUCTION = "Answer with one option from the choice list."
TASKS: dict[str, Task] = {
    "ProxyVisualNeedle": Task(visual_needle, (10, 18), (1, 18), MC_INSTRUCTION),
    "ProxyCrossModal": Task(cross_modal, (6, 11), (1, 11), MC_INSTRUCTION),
    "ProxyTemporal": Task(temporal, (16, 26), (3, 26), MC_INSTRUCTION),
    "ProxyMultiTurn": Task(multi_turn, (5, 9), (1, 9), MC_INSTRUCTION),
    "ProxyTextNeedle": Task(text_needle, (10, 16), (1, 16), "Read the text and answer with the colour."),
    "ProxyImageDiff": Task(image_diff, (6, 10), (1, 10), "Describe how the shape changes in the last pair of pictures."),
}
assert set(TASKS) == set(catalog.PROXY_NAMES), "every proxy catalog entry needs a generator"


# ---------------------------------------------------------------- writing ---------------

def _records(name: str, drafts: list[Draft]) -> dict:
    info = catalog.get(name)
    data = []
    for i, d in enumerate(drafts):
        instance: dict = {"context": d.context, "images_path": [p.path for p in d.images]}
        if d.choices is not None:
            instance["choice_list"] = d.choices
        data.append({
            "sample_id": i,
            "task_instruction_id": 0,
            "image_quantity_level": catalog.image_quantity_level(len(d.images)),
            "task_instance": instance,
            "response": d.response,
        })
    meta = {"dataset": name, "split": "test", "num_sample": len(drafts),
            "task_instruction": [TASKS[name].instruction], "question_type": info.question_type}
    return {"meta_data": meta, "data": data}


def write_split(data_dir: Path, split: str, samples: int, seed: int) -> None:
    """Every proxy dataset of one split into `data_dir/<D>/` (pictures + `<D>.json`)."""
    pool, images = make_pool(random.Random(f"milebench-proxy:{seed}:{split}:pool"))
    for name, task in TASKS.items():
        rng = random.Random(f"milebench-proxy:{seed}:{split}:{name}")
        mk = Maker(rng, pool)
        sizes = task.train_sizes if split == "train" else task.sizes
        drafts = [task.make(mk, *sizes) for _ in range(samples)]
        root = data_dir / name
        for rel in sorted({p.path for d in drafts for p in d.images}):
            path = root / IMAGES_DIR / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            images[rel].save(path, format="PNG")
        doc = _records(name, drafts)
        (root / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def marker(train: int, eval: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "train": train, "eval": eval, "seed": seed}


def generate(out: Path | str, train: int = DEFAULT_TRAIN, eval: int = DEFAULT_EVAL, seed: int = 0) -> Path:
    """Write the held-out EVAL split into `out` and the TRAIN split into `out/train`."""
    if train < 1 or eval < 1:
        raise ValueError(f"train and eval sample counts must be >= 1, got {train} and {eval}")
    out = Path(out)
    write_split(out, "eval", eval, seed)
    write_split(out / TRAIN_DIR, "train", train, seed)
    (out / MARKER_FILE).write_text(json.dumps(marker(train, eval, seed), indent=2) + "\n", encoding="utf-8")
    return out


def ensure_proxy(data_dir: Path | str = DEFAULT_DIR, train: int = DEFAULT_TRAIN, eval: int = DEFAULT_EVAL,
                 seed: int = 0) -> Path:
    """Return `data_dir`, (re)generating it when absent or made with other parameters. Built
    in a temporary sibling and renamed into place, so readers never see half a copy."""
    data_dir = Path(data_dir)
    path = data_dir / MARKER_FILE
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == marker(train, eval, seed):
        return data_dir
    if data_dir.exists() and not path.is_file():
        raise FileExistsError(f"{data_dir} exists but holds no {MARKER_FILE}: not a generated proxy copy; "
                              "remove it or choose another folder")
    return build_folder_atomic(data_dir, lambda tmp: generate(tmp, train=train, eval=eval, seed=seed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training samples per dataset")
    parser.add_argument("--eval", type=int, default=DEFAULT_EVAL, help="scored samples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ensure_proxy(args.out, train=args.train, eval=args.eval, seed=args.seed)
    print(f"{args.out}: {len(TASKS)} proxy datasets, {args.eval} scored + {args.train} training samples each "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
