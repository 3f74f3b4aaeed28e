"""The generated MileBench copy: the released layout, every context kind, both forms giving
identical prompts, and byte-for-byte determinism."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from csp.models.adapters import CHAT_TEMPLATES
from milebench import catalog
from milebench.data import load_dataset
from milebench.prompt import build_prompt
from milebench.synthetic import DEFAULT_SAMPLES, MARKER_FILE, PARQUET_DIR, ensure_synthetic, generate, main


def _tiny_budget() -> tuple[int, int]:
    """max_context_len and tokens_per_image of the tiny LLaVA, as its model config sets them."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "model" / "tiny-llava.yaml")
    return int(cfg.max_context_len), int(cfg.tokens_per_image)


TINY_MAX_LEN, TINY_TPI = _tiny_budget()


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "milebench", progress=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_llava_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_path)


@pytest.fixture(scope="module")
def loaded(copy_dir):
    return {name: load_dataset(copy_dir, name, form="json") for name in catalog.NAMES}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_of_every_dataset(copy_dir, loaded):
    for name in catalog.NAMES:
        root = copy_dir / name
        doc = json.loads((root / f"{name}.json").read_text())
        assert doc["meta_data"]["num_sample"] == DEFAULT_SAMPLES == len(doc["data"])
        assert doc["meta_data"]["question_type"] == catalog.BY_NAME[name].question_type
        assert (root / f"{name}-adv.json").is_file()
        for rec in doc["data"]:
            assert (root / "combined_1_images" / rec["task_instance"]["combined_1_images"][0]).is_file()
            assert rec["image_quantity_level"] == catalog.image_quantity_level(len(rec["task_instance"]["images_path"]))
            if catalog.BY_NAME[name].question_type == "open-ended":
                assert "choice_list" not in rec["task_instance"]  # absent, not null
            else:
                assert rec["response"] in rec["task_instance"]["choice_list"]
    splits = re.findall(r"- split: (\S+)", (copy_dir / PARQUET_DIR / "README.md").read_text())
    assert len(splits) == 2 * len(catalog.NAMES) and "Spot_the_Diff_test" in splits and "OCR_VQA_adv" in splits
    assert len(list((copy_dir / PARQUET_DIR).glob("*.parquet"))) == 2 * len(catalog.NAMES)


def test_copy_covers_the_real_variety(copy_dir, loaded):
    samples = [s for ds in loaded.values() for s in ds.samples]
    paths = [p for s in samples for p in s.images]
    assert {Path(p).suffix for p in paths} == {".jpg", ".png"}
    assert all("/" in p for p in paths)  # sub-folders everywhere
    assert any(len(set(s.images)) < len(s.images) for s in samples)  # repeated paths
    assert {s.image_quantity_level for s in samples} == {"Few", "Medium", "Many"}
    assert max(len(s.images) for s in samples) >= 80
    assert any("{table#" in s.context for s in loaded["MultiModalQA"].samples)
    assert any("}{image#" in s.context for s in loaded["CLEVR-Change"].samples)  # adjacent placeholders
    gpr = loaded["GPR1200"].samples
    assert all(s.choices == [f"image{k}" for k in range(1, len(s.choices) + 1)] for s in gpr)
    assert max(len(s.choices) for s in gpr) >= 12
    for s in loaded["TextNeedleInAHaystack"].samples:
        assert re.fullmatch(r"\d{7}", s.response)
        assert re.search(rf"The special magic \w+ number is: {s.response}", s.context)
    for s in loaded["ImageNeedleInAHaystack"].samples:
        assert s.response not in s.context  # the passkey is only in a picture


def test_parquet_and_json_forms_give_identical_prompts(copy_dir, loaded, tokenizer):
    truncated = set()
    for name in catalog.NAMES:
        from_parquet = load_dataset(copy_dir, name, form="parquet", check_images=False)
        assert from_parquet.samples == loaded[name].samples
        for a, b in zip(loaded[name].samples, from_parquet.samples):
            kw = dict(tokenizer=tokenizer, image_token="<image>", template=CHAT_TEMPLATES["llava_llama_2"],
                      max_context_len=TINY_MAX_LEN, tokens_per_image=TINY_TPI)
            pa, pb = build_prompt(a, **kw), build_prompt(b, **kw)
            assert (pa.text, pa.question, pa.images) == (pb.text, pb.question, pb.images)
            if len(pa.images) < len(a.images):
                truncated.add(name)
    # long frame sequences, long documents, long dialogue and needles all exceed the budget
    assert {"ActionLocalization", "WebQA", "MMCoQA", "ALFRED", "TextNeedleInAHaystack",
            "ImageNeedleInAHaystack"} <= truncated


def test_adversarial_variant_rotates_options(copy_dir, loaded):
    adv = load_dataset(copy_dir, "ObjectExistence", adversarial=True)
    for s, a in zip(loaded["ObjectExistence"].samples, adv.samples):
        assert a.choices == s.choices[1:] + s.choices[:1] and a.response == s.response
    adv_pq = load_dataset(copy_dir, "ObjectExistence", adversarial=True, form="parquet", check_images=False)
    assert adv_pq.samples == adv.samples


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = _tree(generate(tmp_path / "a", samples=2, seed=3, progress=False))
    b = _tree(generate(tmp_path / "b", samples=2, seed=3, progress=False))
    c = _tree(generate(tmp_path / "c", samples=2, seed=4, progress=False))
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a["WebQA/WebQA.json"] != c["WebQA/WebQA.json"]


def test_ensure_synthetic_generates_once_atomically(tmp_path, monkeypatch):
    target = tmp_path / "data" / "milebench-synthetic"
    assert ensure_synthetic(target, samples=1, seed=0) == target
    assert json.loads((target / MARKER_FILE).read_text()) == {"generator_version": 1, "samples": 1, "seed": 0}
    assert [p.name for p in target.parent.iterdir()] == ["milebench-synthetic"]  # no temp folder left
    import milebench.synthetic as syn

    real_generate = syn.generate
    monkeypatch.setattr(syn, "generate", lambda *a, **k: pytest.fail("regenerated an existing copy"))
    assert ensure_synthetic(target, samples=1) == target
    # a copy made with other parameters is rebuilt in place
    monkeypatch.setattr(syn, "generate", real_generate)
    ensure_synthetic(target, samples=2, seed=0)
    assert json.loads((target / MARKER_FILE).read_text())["samples"] == 2
    assert len(load_dataset(target, "GPR1200").samples) == 2
    assert [p.name for p in target.parent.iterdir()] == ["milebench-synthetic"]
    # a folder without the marker is a user's own data: left alone
    own = tmp_path / "own"
    own.mkdir()
    assert ensure_synthetic(own) == own and not any(own.iterdir())


def test_command_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--samples", "1", "--seed", "2"])
    assert "wrote 29 datasets x 1 samples" in capsys.readouterr().out
    assert len(load_dataset(tmp_path / "cli", "nuscenes").samples) == 1
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "cli")])  # refuses a non-empty folder
