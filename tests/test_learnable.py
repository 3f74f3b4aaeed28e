"""The learnable MileBench (milebench/learnable.py) and the LLaVA stand-in trained on it
(standins/llava_standin.py).

Data: every file passes the loader's validation, every answer follows from the prompt itself
(the pictures' pixels and the text, read here with rules written from the datasets' wording,
not from the generator's notes), the options never give the answer away, and the prompts
have LLaVA-1.5's shape on MileBench (image share, tokens per picture, truncation).
Model: the stand-in's config, its deterministic training (on a schedule of a few steps: the
full one takes thirteen minutes), the caption loss's targets and gradient, the runner's path
through it, keeping everything equal to the full cache, and the one-layer pruning tool.
Quality thresholds on this data (full cache above chance, `random` below the
attention-guided methods) are not here yet: a schedule the suite can afford did not learn
reliably (see the README); tests/test_proxy.py holds that role.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from transformers import LlavaForConditionalGeneration

from csp.engine.decode import greedy_generate
from csp.engine.registry import build_method, method_names
from csp.models.adapters import LLAVA_SYSTEM_PROMPT, ModelAdapter
from milebench import catalog
from milebench.data import IMAGES_DIR, load_dataset
from milebench.learnable import COLOURS, TRAIN_DIR, generate
from milebench.prompt import prepare_sample
from milebench.runner.loop import run
from milebench.runner.models import check_model_config
from standins.diagnose import caption_accuracy, evidence_attention, token_accuracy, token_kinds, whole_answers
from standins.evaluate import OnlyLayers, load_standin
from standins.llava_standin import (CHAT_TEMPLATE, Recipe, build_standin_model, build_untrained, encode_example,
                                    train, train_step)

ROOT = Path(__file__).resolve().parents[1]
MC = [d.name for d in catalog.DATASETS if d.scoring == "choice"]


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("learnable-data"), samples=6, train=TEST_RECIPE["train_samples"], seed=0)


# ---------------------------------------------------------------- data --------------------

def test_both_splits_pass_the_loaders_validation(learnable_data: Path) -> None:
    for folder in (learnable_data, learnable_data / TRAIN_DIR):
        for name in catalog.NAMES:
            dataset = load_dataset(folder, name, check_images=True)
            assert dataset.question_type == catalog.get(name).question_type
            for s in dataset.samples:
                assert (s.choices is not None) == (name in MC)
                if s.choices is not None:
                    assert s.response in s.choices and len(set(s.choices)) == len(s.choices)


GREYS = {"grey-dark": (80, 80, 80), "grey-light": (165, 165, 165)}


@functools.cache
def colour_of(path: Path) -> str:
    """The shape's colour from the pixels: the pixels far from the ground (a corner pixel),
    averaged, named by the nearest palette colour; both grey shades are `grey`. Cached: the
    datasets of a split draw on one pool of pictures."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3)
    shape = pixels[np.abs(pixels - pixels[0]).max(axis=1) > 15]
    assert len(shape) > 1000, f"{path}: no shape found"
    mean_rgb = shape.mean(axis=0)
    palette = {**COLOURS, **GREYS}
    best = min(palette, key=lambda c: float(((mean_rgb - np.array(palette[c])) ** 2).sum()))
    return "grey" if best.startswith("grey") else best


# Where each dataset's question points, by its wording (MileBench's situation): labelled or
# named pictures, two short events in a video, the last of several pairs, a needle, an anchor.
RULES = {
    **{n: "label" for n in ("ObjectExistence", "ObjectInteraction", "CharacterOrder", "EgocentricNavigation",
                            "nuscenes", "ALFRED", "MMCoQA")},
    **{n: "named" for n in ("WebQA", "TQA", "MultiModalQA", "WikiVQA", "SlideVQA", "OCR-VQA", "DocVQA")},
    **{n: "event" for n in ("ActionLocalization", "ActionPrediction", "ActionSequence", "MovingAttribute",
                            "ObjectShuffle", "MovingDirection", "CounterfactualInference", "StateChange",
                            "SceneTransition")},
    **{n: "change" for n in ("Spot-the-Diff", "CLEVR-Change", "IEdit")},
    "TextNeedleInAHaystack": "text-needle", "ImageNeedleInAHaystack": "image-needle", "GPR1200": "retrieval",
}


def answer_from_prompt(rule: str, context: str, colours: list[str]) -> str:
    """The answer a dataset's question asks for, worked out from the text and the pictures."""
    question = context.rsplit("\n", 1)[-1]
    if rule in ("label", "named"):
        # "{image#3} <label> 3." or "{image#4} <name>.", one per line; the question names two
        where = {m.group(2).strip(): int(m.group(1)) for m in re.finditer(r"^\{image#(\d+)\} (.+?)\.$", context, re.M)}
        assert len(where) == len(colours)
        named = [key for _, key in sorted((m.start(), key) for key in where
                                          for m in re.finditer(rf"\b{re.escape(key)}\b(?!\d)", question))]
        assert len(named) == 2, (question, named)
        a, b = (colours[where[k] - 1] for k in named)
        assert a != b and "grey" not in (a, b)
        return f"{a} and {b}"
    if rule == "event":
        runs = [(c, len(list(g))) for c, g in itertools.groupby(colours)]
        events = [(c, n) for c, n in runs if c != "grey"]
        assert len(events) == 2 and all(2 <= n <= 3 or n == len(colours) for _, n in events), runs
        return f"{events[0][0]} and {events[1][0]}"
    if rule == "change":
        *solved, last = [colours[i:i + 2] for i in range(0, len(colours), 2)]
        described = re.findall(r": (\w+) to (\w+)\.", context)
        assert described == [tuple(p) for p in solved] and context.endswith(":")
        return f"{last[0]} to {last[1]}"
    if rule == "text-needle":
        assert set(colours) == {"grey"}
        name = re.search(r"special magic (\w+) number\?$", context).group(1)
        numbers = dict(re.findall(r"The special magic (\w+) number is: (\d+)\.", context))
        assert len(numbers) == 2 and name in numbers
        return numbers[name]
    if rule == "image-needle":
        coloured = [c for c in colours if c != "grey"]
        assert len(coloured) == 2
        return ":".join(coloured)
    assert rule == "retrieval" and "Anchor Image: {image#" in context
    *candidates, anchor = colours
    assert candidates.count(anchor) == 1 and len(set(candidates)) == len(candidates)
    return f"image{candidates.index(anchor) + 1}"


def test_every_answer_follows_from_the_prompt(learnable_data: Path) -> None:
    assert set(RULES) == set(catalog.NAMES)
    for folder in (learnable_data, learnable_data / TRAIN_DIR):
        for name in catalog.NAMES:
            dataset = load_dataset(folder, name)
            for s in dataset.samples:
                colours = [colour_of(dataset.root / IMAGES_DIR / p) for p in s.images]
                assert answer_from_prompt(RULES[name], s.context, colours) == s.response, (folder, name, s.sample_id)


def test_options_never_give_the_answer_away(learnable_data: Path) -> None:
    """Four colour pairs whose make-up does not mark the gold: every option's first colour is
    the first colour of as many options as every other option's, and so for the second
    colours and for the colours anywhere. Then neither answer token alone settles the option
    and no rule over the options alone (such as "the first colour named twice", which the
    stand-in learnt when the gold shared its colours with two decoys) beats chance; every gold
    position occurs, and about equally often."""
    positions = []
    for folder in (learnable_data, learnable_data / TRAIN_DIR):
        for name in MC:
            if name == "GPR1200":
                continue
            for s in load_dataset(folder, name).samples:
                pairs = [tuple(c.split(" and ")) for c in s.choices]
                assert len(pairs) == 4 and s.response in s.choices and len(set(pairs)) == 4
                firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
                anywhere = firsts + seconds
                make_up = {(firsts.count(f), seconds.count(t), anywhere.count(f) + anywhere.count(t)) for f, t in pairs}
                assert len(make_up) == 1, (folder, name, s.sample_id, s.choices)
                assert all(f != t for f, t in pairs), s.choices
                positions.append(s.choices.index(s.response))
    assert set(positions) == {0, 1, 2, 3}
    counts = [positions.count(k) for k in range(4)]
    expected = len(positions) / 4  # a uniform shuffle: chi-square (3 dof) under 16.27, p = 0.001
    assert sum((c - expected) ** 2 / expected for c in counts) < 16.27, counts


def test_no_option_is_ruled_out_by_the_colours_the_pictures_show(learnable_data: Path) -> None:
    """In the label and name sets, every colour the four options name is shown by some
    picture (read from the pixels) wherever the pictures show two colours besides the gold's:
    otherwise "an option whose colours the pictures show" finds the gold without the lookup
    the question asks for (up to generator version 4 it scored 0.37 and 0.33 on
    ObjectExistence and WebQA, chance 0.25, and a stand-in learnt just that). Nearly every
    scored sample must be such a case, so the check is not passed by having none."""
    lookups = [n for n in MC if RULES.get(n) in ("label", "named")]
    checked = scored = 0
    for folder in (learnable_data, learnable_data / TRAIN_DIR):
        for name in lookups:
            dataset = load_dataset(folder, name)
            for s in dataset.samples:
                shown = {colour_of(dataset.root / IMAGES_DIR / p) for p in s.images}
                gold = set(s.response.split(" and "))
                if len(shown - gold) < 2:
                    continue
                named = {c for option in s.choices for c in option.split(" and ")}
                assert named <= shown, (folder, name, s.sample_id, s.choices, sorted(shown))
                checked += 1
                scored += folder == learnable_data
    total = sum(len(load_dataset(learnable_data, n).samples) for n in lookups)
    assert scored >= 0.9 * total and checked > scored, (scored, total, checked)


def test_generation_is_a_pure_function_of_the_seed(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    a, b, c = (generate(tmp_path / n, samples=2, train=2, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_scored_pictures_are_never_trained_on(learnable_data: Path) -> None:
    def pictures(folder: Path) -> set[bytes]:
        return {p.read_bytes() for p in folder.glob(f"*/{IMAGES_DIR}/**/*.png")}

    assert pictures(learnable_data) and not pictures(learnable_data) & pictures(learnable_data / TRAIN_DIR)


def test_prompts_have_llavas_shape_on_milebench(learnable_data: Path) -> None:
    """Counted on the encoded prompts, as the runner encodes them: 144 tokens per picture, an
    image share of at least 0.85 on average, LLaVA's system prompt, the question last, and
    MileBench's truncation dropping pictures from some samples (and only from the front)."""
    model, processor = build_untrained(0)
    adapter = ModelAdapter.from_model(model, processor, chat_template=CHAT_TEMPLATE)
    cfg = compose_cfg("model=standin-llava").model
    assert cfg.name == "standin-llava" and int(cfg.tokens_per_image) == 144
    shares, truncated, total = [], 0, 0
    for name in catalog.NAMES:
        dataset = load_dataset(learnable_data, name)
        for s in dataset.samples:
            built, images = prepare_sample(adapter, s, dataset, int(cfg.max_context_len))
            prompt = adapter.format_prompt(built.text)
            assert LLAVA_SYSTEM_PROMPT in prompt and prompt.rstrip().endswith("[/INST]")
            ids = adapter.encode([prompt], [images])["input_ids"][0]
            n_image = int((ids == adapter.image_token_id).sum())
            assert n_image == 144 * len(images)
            shares.append(n_image / len(ids))
            kept = [str(p) for p in built.images]
            assert kept == [str(dataset.root / IMAGES_DIR / p) for p in s.images[len(s.images) - len(kept):]]
            truncated += len(kept) < len(s.images)
            total += 1
    assert statistics.mean(shares) >= 0.85, statistics.mean(shares)
    assert 0.03 <= truncated / total <= 0.35, (truncated, total)


# ---------------------------------------------------------------- model -------------------

# Two datasets of the event skill, a few steps: the plumbing, not the answers.
TEST_DATASETS = ("ActionLocalization", "MovingDirection")
TEST_RECIPE = dict(steps=4, batch_size=2, vision_steps=4, train_samples=8, datasets=TEST_DATASETS, weights=())


@pytest.fixture(scope="session")
def standin_model(learnable_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("standin-model") / "standin-llava"
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        try:
            build_standin_model(out, Recipe(**TEST_RECIPE), learnable_data, quiet=True)
        finally:
            torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def standin(standin_model) -> ModelAdapter:
    return load_standin(standin_model)


def test_model_config_names_the_trained_checkpoint() -> None:
    cfg = compose_cfg("model=standin-llava").model
    check_model_config(cfg)
    assert cfg.trained == "standin" and cfg.chat_template == "llava_llama_2"
    with pytest.raises(ValueError, match="trained"):
        check_model_config(dict(cfg, trained="nonsense"))


def test_data_from_another_generator_version_is_refused(learnable_data: Path, tmp_path: Path) -> None:
    """A stand-in must never train on data an older generator wrote (a label before its
    picture instead of after it is another task): a copy outside the default folder is refused,
    naming both versions, before any training."""
    stale = tmp_path / "stale"
    stale.mkdir()
    made = json.loads((learnable_data / "LEARNABLE.json").read_text())
    (stale / "LEARNABLE.json").write_text(json.dumps({**made, "generator_version": made["generator_version"] - 1}))
    recipe = Recipe(**{**TEST_RECIPE, "train_samples": made["train"], "data_seed": made["seed"]})
    with pytest.raises(ValueError, match=rf"generator version {made['generator_version'] - 1} .*needs version "
                                         rf"{recipe.data_version}"):
        build_standin_model(tmp_path / "model", recipe, stale, quiet=True)
    with pytest.raises(ValueError, match=r"generator version 0, but this code's generator is version"):
        build_standin_model(tmp_path / "model", dataclasses.replace(recipe, data_version=0), learnable_data, quiet=True)
    assert not (tmp_path / "model").exists()


def test_training_is_deterministic_for_a_seed(learnable_data: Path) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            threads = torch.get_num_threads()
            try:
                model, _, _ = train(Recipe(**{**TEST_RECIPE, "seed": seed, "steps": 2}), learnable_data, log_every=0)
            finally:
                torch.set_num_threads(threads)
        return model.state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_runner_runs_the_trained_model(standin_model, learnable_data, tmp_path) -> None:
    """Through the unchanged runner and scorer: eval.json per dataset, the answers decoded."""
    run_dir = run(compose_cfg("model=standin-llava", f"model.path={standin_model}", "model.trained=null",
                              f"data_dir={learnable_data}", f"output_dir={tmp_path}", "method=csp", "limit=2",
                              f"datasets=[{','.join(TEST_DATASETS)}]"), method_name="csp")
    for name in TEST_DATASETS:
        assert "Accuracy" in json.loads((run_dir / name / "eval.json").read_text())
        preds = json.loads((run_dir / name / "pred.json").read_text())
        assert len(preds) == 2 and all(p["gen_kwargs"]["method"]["name"] == "csp" for p in preds)


def test_keep_everything_equals_the_full_cache(standin, learnable_data) -> None:
    dataset = load_dataset(learnable_data, "ObjectExistence")
    inputs = [standin.encode([standin.format_prompt(b.text)], [im])
              for b, im in (prepare_sample(standin, s, dataset, 1800) for s in dataset.samples[:2])]
    full = greedy_generate(standin, inputs, None, max_new_tokens=6)
    for name in method_names():
        out = greedy_generate(standin, inputs, build_method(name, budget=1.0, recent_ratio=0.5), max_new_tokens=6)
        assert out.tokens == full.tokens, name


def test_pruning_one_layer_alone_touches_only_that_layer(standin, learnable_data) -> None:
    """OnlyLayers (the layer check's tool): with every layer listed it is the method itself,
    with none it is the full cache."""
    dataset = load_dataset(learnable_data, "ActionLocalization")
    inputs = [standin.encode([standin.format_prompt(b.text)], [im])
              for b, im in (prepare_sample(standin, s, dataset, 1800) for s in dataset.samples[:2])]
    method = build_method("random", budget=0.05, recent_ratio=0.025)
    layers = tuple(range(standin.model.config.text_config.num_hidden_layers))
    assert (greedy_generate(standin, inputs, OnlyLayers(method, layers), max_new_tokens=6).tokens
            == greedy_generate(standin, inputs, method, max_new_tokens=6).tokens)
    assert (greedy_generate(standin, inputs, OnlyLayers(method, ()), max_new_tokens=6).tokens
            == greedy_generate(standin, inputs, None, max_new_tokens=6).tokens)
    with pytest.raises(ValueError, match="cross-layer"):
        OnlyLayers(build_method("vlcache"), (0,))


# ---------------------------------------------------------------- the caption loss --------

def label_text(tokenizer, ids: torch.Tensor, position: int, image_id: int) -> str:
    """The text from the last image token before `position` up to it: a picture's label."""
    start = position
    while int(ids[start - 1]) != image_id:
        start -= 1
    return tokenizer.decode(ids[start:position + 1]).strip()


@pytest.mark.parametrize("split", ["scored", "train"])
def test_caption_targets_name_each_labelled_pictures_colour(standin, learnable_data, split) -> None:
    """The caption loss's targets against a truth they are not computed from: in the label and
    name datasets the answer names, in order, the colours of the two pictures whose labels the
    question asks for, so the targets at those two labels must spell the answer (and every
    kept picture has one); GPR1200's candidates all differ in colour and the anchor has no
    label. LABELLED, the datasets trained with captions, are those this file's rules read as
    labelled, named or retrieval."""
    from milebench.learnable import LABELLED

    assert set(LABELLED) == {n for n, rule in RULES.items() if rule in ("label", "named", "retrieval")}
    tokenizer = standin.processor.tokenizer
    colour_of_token = {tokenizer(" " + c, add_special_tokens=False).input_ids[0]: c for c in COLOURS}
    root = learnable_data / TRAIN_DIR if split == "train" else learnable_data
    checked = 0
    for name in catalog.NAMES:
        dataset = load_dataset(root, name)
        for s in dataset.samples[:6]:
            if name not in LABELLED:
                continue
            e = encode_example(standin, s, dataset, captions=True)
            kept = e.pixel_values.shape[0]
            labels = {label_text(tokenizer, e.input_ids, p, standin.image_token_id): colour_of_token[t]
                      for p, t in zip(e.caption_positions, e.caption_targets)}
            if name == "GPR1200":
                assert len(labels) == kept - 1 == len(set(labels.values())), (name, s.sample_id, labels)
                continue
            assert len(labels) == kept, (name, s.sample_id, labels)
            if kept < len(s.images):
                continue  # truncation may have dropped an asked picture
            question = s.context.split("\n")[-1]
            asked = sorted((m.start(), label) for label in labels
                           for m in [re.search(rf"\b{re.escape(label)}\b", question)] if m)
            assert len(asked) == 2, (name, s.sample_id, question, labels)
            assert f"{labels[asked[0][1]]} and {labels[asked[1][1]]}" == s.response, (name, s.sample_id)
            checked += 1
    assert checked >= 20


def test_train_step_is_the_answer_loss_plus_the_weighted_caption_loss(standin, learnable_data) -> None:
    """`train_step`'s gradient against the textbook computation: the model's own logits over
    the whole sequence, cross-entropy of the answer tokens (mean over the batch's answer
    tokens) plus the weight times that of the caption targets (mean over the batch's)."""
    dataset = load_dataset(learnable_data / TRAIN_DIR, "WebQA")
    batch = [encode_example(standin, s, dataset, captions=True) for s in dataset.samples[:2]]
    model = standin.model
    params = [p for p in model.parameters() if p.dtype.is_floating_point]

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        model.zero_grad(set_to_none=True)
        return out

    model.zero_grad(set_to_none=True)
    answer, caption = train_step(model, batch, caption_weight=0.5)
    ours = grads()
    answer_terms, caption_terms = [], []
    for e in batch:
        logits = model(input_ids=e.input_ids[None], pixel_values=e.pixel_values).logits[0]
        answer_terms.append(F.cross_entropy(logits[e.answer_start - 1:-1], e.input_ids[e.answer_start:],
                                            reduction="none"))
        caption_terms.append(F.cross_entropy(logits[e.caption_positions], torch.tensor(e.caption_targets),
                                             reduction="none"))
    a, c = torch.cat(answer_terms).mean(), torch.cat(caption_terms).mean()
    (a + 0.5 * c).backward()
    textbook = grads()
    assert answer == pytest.approx(a.item(), rel=1e-4) and caption == pytest.approx(c.item(), rel=1e-4)
    assert len(torch.cat(caption_terms)) >= 4
    assert all(torch.allclose(x, y, atol=1e-6, rtol=1e-4) for x, y in zip(ours, textbook))


# ---------------------------------------------------------------- diagnostics -------------

class Oracle:
    """A stand-in's interface with known answers: its logits at each position put the argmax
    on the NEXT input token (`shift=1`: a perfect teacher-forced model) or on the same one."""

    device, dtype = torch.device("cpu"), torch.float32  # what the adapter's encoder asks of a model

    def __init__(self, vocab: int, shift: int):
        self.vocab, self.shift = vocab, shift

    def __call__(self, input_ids: torch.Tensor, pixel_values=None):
        target = torch.roll(input_ids, -self.shift, dims=1) if self.shift else input_ids
        return type("Out", (), {"logits": torch.nn.functional.one_hot(target, self.vocab).float()})()


def test_token_accuracy_reads_the_position_before_each_answer_token(standin, learnable_data) -> None:
    vocab = standin.model.config.text_config.vocab_size
    real = standin.model
    try:
        standin.model = Oracle(vocab, shift=1)
        tokens, perfect = token_accuracy(standin, learnable_data, "ObjectExistence", limit=3)
        standin.model = Oracle(vocab, shift=0)
        _, copying = token_accuracy(standin, learnable_data, "ObjectExistence", limit=3)
    finally:
        standin.model = real
    assert tokens[-1] == "</s>" and len(tokens) >= 4
    assert perfect == [1.0] * len(tokens)
    assert max(copying) < 1.0


class PictureGate(Oracle):
    """The perfect teacher-forced model, but only for the pictures it was shown first: with
    other pixel values it copies the current token (wrong everywhere)."""

    def __init__(self, vocab: int):
        super().__init__(vocab, shift=1)
        self.seen: set[int] = set()
        self.recording = True

    def __call__(self, input_ids: torch.Tensor, pixel_values=None):
        key = hash(pixel_values.numpy().tobytes())
        if self.recording:
            self.seen.add(key)
        self.shift = 1 if key in self.seen else 0
        return super().__call__(input_ids, pixel_values)


def test_whole_answers_shuffles_each_samples_pictures(standin, learnable_data) -> None:
    import random

    vocab = standin.model.config.text_config.vocab_size
    real = standin.model
    try:
        standin.model = gate = PictureGate(vocab)
        as_given = whole_answers(standin, learnable_data, "ObjectExistence")
        gate.recording = False
        shuffled = whole_answers(standin, learnable_data, "ObjectExistence", shuffle=random.Random(0))
        again = whole_answers(standin, learnable_data, "ObjectExistence")
    finally:
        standin.model = real
    assert as_given == 1.0 == again
    assert shuffled < 0.5


class LabelColour(Oracle):
    """Names one colour at every token that stands right before a full stop (where a label
    such as "<image> image 3." ends) and another colour everywhere else."""

    def __init__(self, vocab: int, stop: int, at_label: int, elsewhere: int):
        super().__init__(vocab, shift=0)
        self.stop, self.at_label, self.elsewhere = stop, at_label, elsewhere

    def __call__(self, input_ids: torch.Tensor, pixel_values=None):
        before_stop = torch.roll(input_ids, -1, dims=1) == self.stop
        target = torch.where(before_stop, self.at_label, self.elsewhere)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(target, self.vocab).float()})()


def test_caption_accuracy_reads_each_label_against_its_pictures_pixels(standin, learnable_data) -> None:
    """A model that says "red" at each label and "blue" elsewhere must score the share of red
    pictures among the labelled ones, read from the pixels (the kept pictures are the last
    ones), and the reverse model the share of blue ones; datasets without labels get None."""
    tokenizer = standin.processor.tokenizer
    red, blue = (tokenizer(" " + c, add_special_tokens=False).input_ids[0] for c in ("red", "blue"))
    stop = tokenizer.convert_tokens_to_ids(".")
    vocab = standin.model.config.text_config.vocab_size
    truth: list[str] = []
    for name in ("ObjectExistence", "WebQA"):
        dataset = load_dataset(learnable_data, name)
        for s in dataset.samples:
            kept = encode_example(standin, s, dataset).pixel_values.shape[0]
            truth += [colour_of(dataset.root / IMAGES_DIR / p) for p in s.images[len(s.images) - kept:]]
    real = standin.model
    try:
        got = {}
        for said, other in (("red", "blue"), ("blue", "red")):
            standin.model = LabelColour(vocab, stop, *((red, blue) if said == "red" else (blue, red)))
            scores = [caption_accuracy(standin, learnable_data, n) for n in ("ObjectExistence", "WebQA")]
            got[said] = sum(a * n for a, n in scores) / sum(n for _, n in scores)
            assert sum(n for _, n in scores) == len(truth)
        assert caption_accuracy(standin, learnable_data, "ActionLocalization") is None
    finally:
        standin.model = real
    assert truth.count("red") != truth.count("blue")
    assert got["red"] == pytest.approx(truth.count("red") / len(truth))
    assert got["blue"] == pytest.approx(truth.count("blue") / len(truth))


def test_evidence_is_the_answer_colours_shapes(standin, learnable_data) -> None:
    """Token kinds checked against the pictures read from their pixels (this file's reader):
    the evidence lies on the pictures whose colour the answer names, and only on their shapes;
    every image token gets a kind, text is the rest; truncation keeps the last pictures."""
    seen_truncated = False
    for name in catalog.NAMES:
        dataset = load_dataset(learnable_data, name)
        for s in dataset.samples:
            e = encode_example(standin, s, dataset)
            prompt = e.input_ids[: e.answer_start]
            kinds = token_kinds(standin, s, dataset, prompt)
            image = prompt == standin.image_token_id
            assert bool((kinds[~image] == 3).all()) and bool((kinds[image] < 3).all())
            kept = s.images[len(s.images) - e.pixel_values.shape[0]:]
            seen_truncated |= len(kept) < len(s.images)
            per_picture = kinds[image].reshape(len(kept), -1)
            for path, row in zip(kept, per_picture):
                colour = colour_of(dataset.root / IMAGES_DIR / path)
                assert bool((row == 0).any()) == (colour in s.response), (name, s.sample_id, path)
                assert 3 <= int((row < 2).sum()) <= 64  # a shape's patches, not the picture's
    assert seen_truncated


def test_evidence_attention_splits_each_heads_attention(standin_model, standin, learnable_data) -> None:
    eager = LlavaForConditionalGeneration.from_pretrained(str(standin_model), attn_implementation="eager").eval()
    mass, share = evidence_attention(eager, standin, learnable_data, "ActionLocalization", limit=2)
    layers = standin.model.config.text_config.num_hidden_layers
    heads = standin.model.config.text_config.num_attention_heads
    assert mass.shape == (layers, heads, 4)
    assert np.allclose(mass.sum(-1), 1.0, atol=1e-4)
    assert (mass[..., 3] < 0.99).any()  # the last position, not the first (which sees only text)
    assert 0.0 < share < 0.2
