"""Loading MileBench files: both forms, instruction resolution, and one test per kind of
bad input (each error must name the file, the dataset, the sample id and the field)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from milebench import catalog
from milebench.data import DataError, DataWarning, Sample, find_parquet, load_dataset, split_name


def _image(path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format=fmt)


def write_mc(data_dir: Path, name: str = "WebQA", records: list | None = None, **meta) -> Path:
    """A valid two-sample multiple-choice dataset; `records`/`meta` override parts of it."""
    root = data_dir / name
    _image(root / "images" / "doc" / "a.png")
    _image(root / "images" / "b.jpg", "JPEG")
    _image(root / "combined_1_images" / "0.jpg", "JPEG")
    if records is None:
        records = [
            {"sample_id": 0, "task_instruction_id": 1, "image_quantity_level": "Few",
             "task_instance": {"context": "{image#1} Caption.{table#2}Which?", "images_path": ["doc/a.png", "b.jpg"],
                               "choice_list": ["red", "blue"], "combined_1_images": ["0.jpg"]},
             "response": "blue"},
            {"sample_id": 5, "task_instruction_id": 0, "image_quantity_level": "Few",
             "task_instance": {"context": "{image#1}{image#2}{image#3}Which?",
                               "images_path": ["b.jpg", "b.jpg", "doc/a.png"], "choice_list": ["x", "y", "z"]},
             "response": "z"},
        ]
    doc = {"meta_data": {"dataset": name, "split": "test", "num_sample": len(records),
                         "task_instruction": ["First instruction.", "Second instruction."],
                         "question_type": catalog.BY_NAME[name].question_type, **meta},
           "data": records}
    path = root / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def write_open(data_dir: Path, name: str = "CLEVR-Change", extra: dict | None = None) -> Path:
    root = data_dir / name
    _image(root / "images" / "p" / "before.png")
    _image(root / "images" / "p" / "after.png")
    instance = {"context": "{image#1}{image#2}Difference:", "images_path": ["p/before.png", "p/after.png"],
                **(extra or {})}
    doc = {"meta_data": {"dataset": name, "split": "test", "num_sample": 1, "task_instruction": ["Describe."],
                         "question_type": "open-ended"},
           "data": [{"sample_id": 3, "task_instruction_id": 0, "image_quantity_level": "Few",
                     "task_instance": instance, "response": "the cube moved"}]}
    path = root / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# ---------------------------------------------------------------- good input ------------

def test_json_form_resolves_instructions_and_keeps_paths(tmp_path):
    write_mc(tmp_path)
    ds = load_dataset(tmp_path, "WebQA")
    assert ds.name == "WebQA" and ds.root == tmp_path / "WebQA" and ds.question_type == "multi-choice"
    first, second = ds.samples
    assert first == Sample(dataset="WebQA", sample_id=0, instruction="Second instruction.",
                           context="{image#1} Caption.{table#2}Which?", images=["doc/a.png", "b.jpg"],
                           choices=["red", "blue"], response="blue", image_quantity_level="Few",
                           combined_images=["0.jpg"])
    assert second.instruction == "First instruction."
    assert second.images == ["b.jpg", "b.jpg", "doc/a.png"]  # repeats kept as written
    assert second.combined_images == []


def test_open_ended_sample_has_no_choices(tmp_path):
    write_open(tmp_path)
    (s,) = load_dataset(tmp_path, "CLEVR-Change").samples
    assert s.choices is None and s.response == "the cube moved"


def test_adversarial_file(tmp_path):
    write_mc(tmp_path)
    adv = json.loads((tmp_path / "WebQA" / "WebQA.json").read_text())
    adv["data"][0]["task_instance"]["choice_list"] = ["blue", "red"]
    (tmp_path / "WebQA" / "WebQA-adv.json").write_text(json.dumps(adv))
    assert load_dataset(tmp_path, "WebQA", adversarial=True).samples[0].choices == ["blue", "red"]
    assert load_dataset(tmp_path, "WebQA").samples[0].choices == ["red", "blue"]


def _write_parquet(folder: Path, split: str, rows: list[dict]) -> None:
    inst = pa.struct([("context", pa.string()), ("images_path", pa.list_(pa.string())),
                      ("choice_list", pa.list_(pa.string())), ("combined_1_images", pa.list_(pa.string()))])
    schema = pa.schema([("sample_id", pa.int32()), ("task_instruction", pa.string()),
                        ("task_instance", inst), ("response", pa.string())])
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{split}-00000-of-00001.parquet")


def test_parquet_form_matches_json_form(tmp_path):
    write_open(tmp_path)
    rows = [{"sample_id": 3, "task_instruction": "Describe.",
             "task_instance": {"context": "{image#1}{image#2}Difference:",
                               "images_path": ["p/before.png", "p/after.png"], "choice_list": None,
                               "combined_1_images": None},
             "response": "the cube moved"}]
    _write_parquet(tmp_path / "hf-parquet", "CLEVR_Change_test", rows)
    assert split_name("CLEVR-Change") == "CLEVR_Change_test"
    assert split_name("CLEVR-Change", adversarial=True) == "CLEVR_Change_adv"
    assert find_parquet(tmp_path, "CLEVR-Change") == [tmp_path / "hf-parquet" / "CLEVR_Change_test-00000-of-00001.parquet"]
    from_parquet = load_dataset(tmp_path, "CLEVR-Change", form="parquet")
    from_json = load_dataset(tmp_path, "CLEVR-Change", form="json")
    assert from_parquet == from_json  # level recomputed from the image count: 2 images -> Few
    # with the JSON file gone, auto-detection falls back to the parquet form
    (tmp_path / "CLEVR-Change" / "CLEVR-Change.json").unlink()
    assert load_dataset(tmp_path, "CLEVR-Change") == from_json


def test_parquet_choice_list_on_open_ended_set(tmp_path):
    rows = [{"sample_id": 1, "task_instruction": "Describe.",
             "task_instance": {"context": "x", "images_path": [], "choice_list": ["a"], "combined_1_images": None},
             "response": "a"}]
    _write_parquet(tmp_path, "IEdit_test", rows)
    with pytest.raises(DataError, match=r"IEdit_test-00000-of-00001\.parquet: dataset IEdit, sample 1.*'choice_list'"):
        load_dataset(tmp_path, "IEdit", check_images=False)


# ---------------------------------------------------------------- bad input -------------

def test_unknown_dataset_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path, "WebQa")
    msg = str(e.value)
    assert "'WebQa'" in msg and all(name in msg for name in catalog.NAMES)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r"dataset TQA: folder .*TQA does not exist"):
        load_dataset(tmp_path, "TQA")


def test_invalid_json(tmp_path):
    path = write_mc(tmp_path)
    path.write_text('{"meta_data": {"task_instruction": []}, "data": [}', encoding="utf-8")
    with pytest.raises(DataError, match=r"WebQA\.json: dataset WebQA: invalid JSON at line 1 column"):
        load_dataset(tmp_path, "WebQA")


@pytest.mark.parametrize("where, field", [("sample", "response"), ("instance", "images_path"),
                                          ("sample", "task_instruction_id"), ("instance", "context")])
def test_missing_required_field(tmp_path, where, field):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    target = doc["data"][1] if where == "sample" else doc["data"][1]["task_instance"]
    del target[field]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"WebQA\.json: dataset WebQA, sample 5.*required field '{field}' is missing"):
        load_dataset(tmp_path, "WebQA")


def test_missing_choice_list_on_multi_choice_set(tmp_path):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    del doc["data"][0]["task_instance"]["choice_list"]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"sample 0, task_instance: required field 'choice_list' is missing"):
        load_dataset(tmp_path, "WebQA")


@pytest.mark.parametrize("context, bad", [
    ("{image#0}{image#1}{image#2}Which?", "{image#0}"),     # 1-based: 0 names no image
    ("{image#1}{table#0}Which?", "{table#0}"),
    ("{image#1}{image#2}{image#3}{image#4}Which?", "{image#4}"),  # three images: #4 is one too far
    ("{image#1}{image#2}{table#4}Which?", "{table#4}"),
])
def test_out_of_range_placeholder_is_a_data_error_naming_file_sample_field(tmp_path, context, bad):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][1]["task_instance"]["context"] = context
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"WebQA\.json: dataset WebQA, sample 5, task_instance: field 'context' has "
                                        rf"placeholder {re.escape(bad)} but 'images_path' has 3 entries"):
        load_dataset(tmp_path, "WebQA")


def test_placeholders_up_to_the_last_image_are_valid(tmp_path):
    # {image#k} and {table#k} share one 1-based numbering up to len(images_path) inclusive
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][1]["task_instance"]["context"] = "{table#1}{image#2}{table#3}Which?"
    path.write_text(json.dumps(doc))
    assert load_dataset(tmp_path, "WebQA").samples[1].context == "{table#1}{image#2}{table#3}Which?"


def test_missing_image_file(tmp_path):
    write_mc(tmp_path)
    (tmp_path / "WebQA" / "images" / "doc" / "a.png").unlink()
    with pytest.raises(DataError, match=r"dataset WebQA, sample 0, task_instance: field 'images_path': "
                                        r"image 'doc/a.png' not found"):
        load_dataset(tmp_path, "WebQA")
    assert len(load_dataset(tmp_path, "WebQA", check_images=False).samples) == 2


def test_unreadable_image_file(tmp_path):
    write_mc(tmp_path)
    (tmp_path / "WebQA" / "images" / "b.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"sample 0, task_instance: field 'images_path': image 'b.jpg' .* cannot be read"):
        load_dataset(tmp_path, "WebQA")


def test_choice_list_on_open_ended_set(tmp_path):
    write_open(tmp_path, extra={"choice_list": ["a", "b"]})
    with pytest.raises(DataError, match=r"CLEVR-Change\.json: dataset CLEVR-Change, sample 3, task_instance: "
                                        r"field 'choice_list' is present but CLEVR-Change is an open-ended set"):
        load_dataset(tmp_path, "CLEVR-Change")


def test_empty_data(tmp_path):
    write_mc(tmp_path, records=[])
    with pytest.raises(DataError, match=r"WebQA\.json: dataset WebQA has an empty 'data' list"):
        load_dataset(tmp_path, "WebQA")


def test_response_not_among_choices_warns(tmp_path):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][1]["response"] = "w"
    path.write_text(json.dumps(doc))
    with pytest.warns(DataWarning, match=r"dataset WebQA, sample 5: field 'response' 'w' is not among 'choice_list'"):
        ds = load_dataset(tmp_path, "WebQA")
    assert ds.samples[1].response == "w"  # still loaded: it scores as wrong


def test_instruction_id_out_of_range(tmp_path):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][0]["task_instruction_id"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"sample 0: field 'task_instruction_id' = 2 is outside"):
        load_dataset(tmp_path, "WebQA")


def test_duplicate_sample_id(tmp_path):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][1]["sample_id"] = 0
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"sample 0: field 'sample_id' is duplicated"):
        load_dataset(tmp_path, "WebQA")


def test_wrong_field_type(tmp_path):
    path = write_mc(tmp_path)
    doc = json.loads(path.read_text())
    doc["data"][0]["task_instance"]["images_path"] = "doc/a.png"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"sample 0, task_instance: field 'images_path' must be a list, got str"):
        load_dataset(tmp_path, "WebQA")


def test_question_type_disagreeing_with_catalog(tmp_path):
    write_mc(tmp_path, question_type="open-ended")
    with pytest.raises(DataError, match=r"meta_data: field 'question_type' is 'open-ended' but WebQA is 'multi-choice'"):
        load_dataset(tmp_path, "WebQA")
