"""The proxy task set (milebench/proxy.py) and the proxy LLaVA trained on it (standins/proxy_llava.py).

Data: every file passes the loader's validation, and every answer follows from the prompt
itself (the pictures' pixels and the text), checked here without the generator's notes.
Model: a shortened training schedule (shared by the session) must answer the held-out samples
well above chance with the full cache; keeping everything must equal the full cache; and at
a harsh budget `random` must fall clearly below the full cache while the attention-guided
methods keep the evidence. These are quality tests: a broken engine or method fails them.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from csp.engine.decode import greedy_generate
from csp.models.adapters import ModelAdapter, load_adapter
from milebench.runner.models import check_model_config
from standins.proxy_llava import Recipe, build_proxy_model, build_untrained, encode_example, train
from csp.engine.registry import build_method, method_names
from milebench import catalog
from milebench.data import IMAGES_DIR, load_dataset
from milebench.proxy import COLOURS, TRAIN_DIR, VIVID, generate
from milebench.prompt import prepare_sample
from milebench.runner.loop import run
from milebench.score import score_predictions

ROOT = Path(__file__).resolve().parents[1]
MC = [d.name for d in catalog.PROXY_DATASETS if d.scoring == "choice"]
# the multiple-choice tasks only, on a schedule short enough for the test suite, long enough to learn the easier lookups
TEST_RECIPE = dict(steps=200, train_samples=40, curriculum_ramp=1.0,
                   task_weights=tuple((name, float(name in MC)) for name in catalog.PROXY_NAMES))


@pytest.fixture(scope="session")
def proxy_data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("proxy-data"), train=TEST_RECIPE["train_samples"], eval=12, seed=0)


@pytest.fixture(scope="session")
def proxy_model(proxy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proxy-model") / "proxy-llava"
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        try:
            build_proxy_model(out, Recipe(**TEST_RECIPE), proxy_data, quiet=True)
        finally:
            torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def proxy_adapter(proxy_model) -> ModelAdapter:
    return load_adapter("llava", str(proxy_model), chat_template="processor")


# ---------------------------------------------------------------- data --------------------

def test_catalog_keeps_the_29_datasets_apart() -> None:
    assert len(catalog.NAMES) == 29 and len(catalog.DATASETS) == 29
    assert not set(catalog.PROXY_NAMES) & set(catalog.NAMES)
    assert catalog.PROXY_GROUP not in catalog.GROUPS
    assert all(catalog.get(n).group == catalog.PROXY_GROUP for n in catalog.PROXY_NAMES)
    assert {catalog.get(n).metric for n in catalog.PROXY_NAMES} == {"Accuracy", "Rouge-L f"}


def test_both_splits_pass_the_loaders_validation(proxy_data: Path) -> None:
    for folder in (proxy_data, proxy_data / TRAIN_DIR):
        for name in catalog.PROXY_NAMES:
            dataset = load_dataset(folder, name, check_images=True)
            assert dataset.question_type == catalog.get(name).question_type
            for s in dataset.samples:
                assert (s.choices is not None) == (name in MC)
                if s.choices is not None:
                    assert s.response in s.choices and len(set(s.choices)) == len(s.choices)


def colour_of(path: Path) -> str:
    """The shape's colour from the pixels: the pixels far from the ground (a corner pixel),
    averaged, named by the nearest palette colour."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3)
    shape = pixels[np.abs(pixels - pixels[0]).max(axis=1) > 60]
    assert len(shape) > 100, f"{path}: no shape found"
    mean = shape.mean(axis=0)
    return min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))


def answer_from_prompt(name: str, context: str, colours: list[str]) -> str:
    """The answer each task's question asks for, worked out from the text and the pictures."""
    vivid = [c for c in colours if c in VIVID]
    if name == "ProxyTextNeedle":
        assert not vivid, "the text needle's pictures are black and white"
        words = [w for w in re.findall(r"[a-z]+", context) if w in VIVID]
        assert len(words) == 1, words
        return f"colour {words[0]}"
    if name == "ProxyImageDiff":
        *solved, (before, after) = [colours[i:i + 2] for i in range(0, len(colours), 2)]
        described = re.findall(r"Change: from (\w+) to (\w+)\.", context)
        assert described == [tuple(pair) for pair in solved]
        return f"from {before} to {after}"
    assert len(set(vivid)) == 1, f"{name}: exactly one colour besides black and white, got {vivid}"
    if name == "ProxyCrossModal":  # the question names the picture that holds the colour
        k = int(re.search(r"Picture (\d+) shows a coloured shape", context).group(1))
        assert colours[k - 1] == vivid[0]
    if name == "ProxyMultiTurn":  # shown in the first half of the dialogue
        assert colours.index(vivid[0]) < max(1, len(colours) // 2)
    if name == "ProxyTemporal":  # one short event of consecutive frames
        at = [i for i, c in enumerate(colours) if c in VIVID]
        assert at == list(range(at[0], at[0] + len(at))) and 2 <= len(at) <= 3
    prefix = "it was" if name in ("ProxyTemporal", "ProxyMultiTurn") else "it is"
    return f"{prefix} {vivid[0]}"


def test_every_answer_follows_from_the_prompt(proxy_data: Path) -> None:
    for folder in (proxy_data, proxy_data / TRAIN_DIR):
        for name in catalog.PROXY_NAMES:
            dataset = load_dataset(folder, name)
            cache: dict[str, str] = {}
            for s in dataset.samples:
                colours = [cache.setdefault(p, colour_of(dataset.root / IMAGES_DIR / p)) for p in s.images]
                assert answer_from_prompt(name, s.context, colours) == s.response, (folder, name, s.sample_id)


def test_generation_is_a_pure_function_of_the_seed(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    a, b, c = (generate(tmp_path / n, train=3, eval=2, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_scored_pictures_are_never_trained_on(proxy_data: Path) -> None:
    def pictures(folder: Path) -> set[bytes]:
        return {p.read_bytes() for p in folder.glob(f"*/{IMAGES_DIR}/**/*.png")}

    assert pictures(proxy_data) and not pictures(proxy_data) & pictures(proxy_data / TRAIN_DIR)


def test_scored_prompts_are_long_and_never_truncated(proxy_data: Path) -> None:
    model, processor = build_untrained(0)
    adapter = ModelAdapter.from_model(model, processor, chat_template="processor")
    max_context = int(compose_cfg("model=proxy-llava").model.max_context_len)
    lengths = []
    for name in catalog.PROXY_NAMES:
        dataset = load_dataset(proxy_data, name)
        for s in dataset.samples:
            built, images = prepare_sample(adapter, s, dataset, max_context)
            assert len(images) == len(s.images)  # every picture kept
            ids = adapter.encode([adapter.format_prompt(built.text)], [images])["input_ids"][0]
            lengths.append(len(ids))
            assert (ids == adapter.image_token_id).sum() == 16 * len(s.images)
    assert 250 <= min(lengths) and max(lengths) <= 700, (min(lengths), max(lengths))


# ---------------------------------------------------------------- model -------------------

def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_model_config_names_the_trained_checkpoint() -> None:
    cfg = compose_cfg("model=proxy-llava").model
    check_model_config(cfg)
    assert cfg.trained == "proxy" and cfg.chat_template == "processor"
    bad = dict(cfg, trained="nonsense")
    with pytest.raises(ValueError, match="trained"):
        check_model_config(bad)


def test_training_is_deterministic_for_a_seed(proxy_data: Path) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            threads = torch.get_num_threads()
            try:
                model, _, _ = train(Recipe(seed=seed, steps=3, batch_size=4, train_samples=3), proxy_data, log_every=0)
            finally:
                torch.set_num_threads(threads)
        return model.state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def scores(adapter: ModelAdapter, data: Path, method, datasets=catalog.PROXY_NAMES) -> dict[str, float]:
    """Each dataset's MileBench score (x 100) of greedy answers with `method` pruning."""
    out = {}
    for name in datasets:
        dataset = load_dataset(data, name)
        inputs = []
        for s in dataset.samples:
            built, images = prepare_sample(adapter, s, dataset, 1024)
            inputs.append(adapter.encode([adapter.format_prompt(built.text)], [images]))
        gen = greedy_generate(adapter, inputs, method, max_new_tokens=8)
        preds = [{"sample_id": s.sample_id, "pred_response": adapter.decode(t)} for s, t in zip(dataset.samples, gen.tokens)]
        out[name] = 100 * score_predictions(dataset, preds).value
    return out


@pytest.fixture(scope="session")
def full_scores(proxy_adapter, proxy_data) -> dict[str, float]:
    return scores(proxy_adapter, proxy_data, None)


def test_the_runner_scores_the_trained_model_well_above_chance(proxy_model, proxy_data, tmp_path) -> None:
    """Through the unchanged runner and scorer: eval.json per proxy dataset."""
    run_dir = run(compose_cfg("model=proxy-llava", f"model.path={proxy_model}", "model.trained=null",
                              f"data_dir={proxy_data}", f"output_dir={tmp_path}", "method=full"), method_name="full")
    got = {}
    for name in catalog.PROXY_NAMES:
        doc = json.loads((run_dir / name / "eval.json").read_text())
        got[name] = 100 * doc[catalog.get(name).metric]
    mc = sum(got[n] for n in MC) / len(MC)
    assert mc >= 60, got  # chance is 25


def test_keep_everything_equals_the_full_cache(proxy_adapter, proxy_data) -> None:
    dataset = load_dataset(proxy_data, "ProxyVisualNeedle")
    inputs = [proxy_adapter.encode([proxy_adapter.format_prompt(b.text)], [im])
              for b, im in (prepare_sample(proxy_adapter, s, dataset, 1024) for s in dataset.samples[:3])]
    full = greedy_generate(proxy_adapter, inputs, None, max_new_tokens=6)
    for name in method_names():
        out = greedy_generate(proxy_adapter, inputs, build_method(name, budget=1.0, recent_ratio=0.5), max_new_tokens=6)
        assert out.tokens == full.tokens, name


def test_random_at_a_harsh_budget_falls_clearly_below_the_full_cache(proxy_adapter, proxy_data, full_scores) -> None:
    rand = scores(proxy_adapter, proxy_data, build_method("random", budget=0.05, recent_ratio=0.025), MC)
    full_mc = sum(full_scores[n] for n in MC) / len(MC)
    rand_mc = sum(rand.values()) / len(MC)
    assert rand_mc <= full_mc - 20, (full_scores, rand)


@pytest.mark.parametrize("name", ["csp", "snapkv", "vlcache"])
def test_attention_guided_methods_keep_the_evidence(proxy_adapter, proxy_data, full_scores, name) -> None:
    """At budget 0.1 a method that reads the attention keeps the coloured shape: it stays near
    the full cache and well above random eviction at the same budget."""
    method = scores(proxy_adapter, proxy_data, build_method(name, budget=0.1, recent_ratio=0.05), MC)
    rand = scores(proxy_adapter, proxy_data, build_method("random", budget=0.1, recent_ratio=0.05), MC)
    mean = sum(method.values()) / len(MC)
    full_mc = sum(full_scores[n] for n in MC) / len(MC)
    assert mean >= full_mc - 15, (method, full_scores)
    assert mean >= sum(rand.values()) / len(MC) + 15, (method, rand)
