"""Read one MileBench dataset, in the on-disk JSON form or the Hugging Face parquet form, into
validated sample objects.

Both forms give identical `Sample`s, so the prompt builder and the runner never know which
form they were read from. Everything that could go wrong later (a placeholder with no image, a
missing image file, a gold answer that cannot be scored) is checked here, at load time, with
an error that names the file, the dataset, the sample id and the field.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from milebench import catalog

PLACEHOLDER_RE = re.compile(r"\{(image|table)#(\d+)\}")
LEVELS = ("Few", "Medium", "Many")
IMAGES_DIR = "images"
COMBINED_DIR = "combined_1_images"
# Folders (relative to the data dir) searched for the parquet form; the generator writes
# "hf-parquet", a Hub snapshot keeps its files in "data" or "preview".
PARQUET_DIRS = (".", "hf-parquet", "data", "preview")

Form = Literal["auto", "json", "parquet"]


class DataError(ValueError):
    """Malformed benchmark data; the message names the file, dataset, sample id and field."""


class DataWarning(UserWarning):
    """Data that loads but cannot be scored as intended (e.g. a gold answer not among the choices)."""


@dataclass(frozen=True)
class Sample:
    dataset: str
    sample_id: int
    instruction: str  # the resolved task instruction
    context: str
    images: list[str]  # images_path as in the file, relative to <D>/images/
    choices: list[str] | None  # None for open-ended sets
    response: str
    image_quantity_level: str
    combined_images: list[str]  # relative to <D>/combined_1_images/


@dataclass(frozen=True)
class DatasetFile:
    name: str
    root: Path  # <data_dir>/<D>: images/ and combined_1_images/ live here
    question_type: str
    samples: list[Sample]


def split_name(name: str, adversarial: bool = False) -> str:
    """The Hub parquet split of a dataset: `<D>_test` / `<D>_adv`, with '-' turned into '_'."""
    return f"{name.replace('-', '_')}_{'adv' if adversarial else 'test'}"


def json_path(data_dir: Path | str, name: str, adversarial: bool = False) -> Path:
    return Path(data_dir) / name / f"{name}{'-adv' if adversarial else ''}.json"


def find_parquet(data_dir: Path | str, name: str, adversarial: bool = False) -> list[Path]:
    """Parquet files of a dataset's split (Hub naming `<split>-00000-of-00001.parquet` or
    `<split>.parquet`) in the data dir or one of its usual sub-folders."""
    split = split_name(name, adversarial)
    found: list[Path] = []
    for sub in PARQUET_DIRS:
        folder = Path(data_dir) / sub
        if folder.is_dir():
            found += sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
        if found:
            break
    return found


def load_dataset(
    data_dir: Path | str,
    name: str,
    *,
    adversarial: bool = False,
    check_images: bool = True,
    form: Form = "auto",
) -> DatasetFile:
    """Load and validate one dataset. `form="auto"` prefers `<D>/<D>.json` and falls back to
    the parquet form; images are always looked up under `<data_dir>/<D>/`."""
    if name not in catalog.BY_NAME:
        raise DataError(f"unknown MileBench dataset {name!r}; valid names: {', '.join(catalog.NAMES)}")
    info = catalog.BY_NAME[name]
    data_dir = Path(data_dir)
    root = data_dir / name
    jpath = json_path(data_dir, name, adversarial)
    if form == "json" or (form == "auto" and jpath.is_file()):
        if not root.is_dir():
            raise DataError(f"dataset {name}: folder {root} does not exist (data_dir={data_dir})")
        if not jpath.is_file():
            raise DataError(f"dataset {name}: annotation file {jpath} does not exist")
        question_type, raw = _read_json_form(jpath, name)
        source = jpath
    elif form in ("auto", "parquet"):
        files = find_parquet(data_dir, name, adversarial)
        if not files:
            if form == "parquet":
                raise DataError(
                    f"dataset {name}: no parquet file for split {split_name(name, adversarial)} "
                    f"in {data_dir} (looked in {', '.join(PARQUET_DIRS)})")
            raise DataError(
                f"dataset {name}: folder {root} does not exist and no parquet split "
                f"{split_name(name, adversarial)} was found in {data_dir}")
        question_type, raw = info.question_type, _read_parquet_form(files, name)
        source = files[0]
    else:
        raise ValueError(f"form must be 'auto', 'json' or 'parquet', not {form!r}")

    if not raw:
        raise DataError(f"{source}: dataset {name} has an empty 'data' list")
    samples = [_to_sample(rec, i, name, question_type, source, json_form=source == jpath)
               for i, rec in enumerate(raw)]
    seen: set[int] = set()
    for s in samples:
        if s.sample_id in seen:
            raise DataError(f"{source}: dataset {name}, sample {s.sample_id}: field 'sample_id' is duplicated")
        seen.add(s.sample_id)
    if check_images:
        _check_images(root, samples, source)
    return DatasetFile(name=name, root=root, question_type=question_type, samples=samples)


# ---------------------------------------------------------------- the two forms ---------

def _read_json_form(path: Path, name: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse `<D>.json` and resolve each sample's instruction, returning uniform records."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: dataset {name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: dataset {name}: not UTF-8 text ({e})") from None
    where = f"{path}: dataset {name}"
    if not isinstance(doc, dict):
        raise DataError(f"{where}: top level must be an object with 'meta_data' and 'data'")
    meta = _field(doc, "meta_data", dict, where)
    instructions = _field(meta, "task_instruction", list, f"{where}, meta_data")
    question_type = _field(meta, "question_type", str, f"{where}, meta_data")
    if question_type not in ("multi-choice", "open-ended"):
        raise DataError(f"{where}, meta_data: field 'question_type' must be 'multi-choice' or 'open-ended', "
                        f"not {question_type!r}")
    expected = catalog.BY_NAME[name].question_type
    if question_type != expected:
        raise DataError(f"{where}, meta_data: field 'question_type' is {question_type!r} but {name} is "
                        f"{expected!r} in the catalog")
    data = _field(doc, "data", list, where)
    records = []
    for i, ann in enumerate(data):
        if not isinstance(ann, dict):
            raise DataError(f"{where}, data[{i}]: each sample must be an object")
        sid = ann.get("sample_id", f"#{i}")
        swhere = f"{where}, sample {sid}"
        tid = _field(ann, "task_instruction_id", int, swhere)
        if not 0 <= tid < len(instructions):
            raise DataError(f"{swhere}: field 'task_instruction_id' = {tid} is outside meta_data.task_instruction "
                            f"(which has {len(instructions)} entries)")
        rec = dict(ann)
        rec["task_instruction"] = instructions[tid]
        records.append(rec)
    return question_type, records


def _read_parquet_form(files: list[Path], name: str) -> list[dict[str, Any]]:
    """Read a Hub split with the `datasets` library; its rows already carry the resolved
    instruction and a null `choice_list` for open-ended sets."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per split would drown the runner's own bar
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as e:  # pyarrow/datasets raise many types for a broken file
        raise DataError(f"{files[0]}: dataset {name}: cannot read the parquet file: {e}") from e
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return list(ds)


# ---------------------------------------------------------------- validation ------------

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _field(obj: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: required field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise DataError(f"{where}: field {key!r} must be {_TYPE_NAMES[typ]}, got {type(value).__name__}")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str) -> list[str]:
    value = _field(obj, key, list, where)
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{where}: field {key!r}[{j}] must be a string, got {type(item).__name__}")
    return list(value)


def _to_sample(rec: dict[str, Any], index: int, name: str, question_type: str, source: Path,
               json_form: bool) -> Sample:
    where = f"{source}: dataset {name}, data[{index}]"
    sid = _field(rec, "sample_id", int, where)
    where = f"{source}: dataset {name}, sample {sid}"
    instruction = _field(rec, "task_instruction", str, where)
    inst = _field(rec, "task_instance", dict, where)
    iwhere = f"{where}, task_instance"
    context = _field(inst, "context", str, iwhere)
    images = _str_list(inst, "images_path", iwhere)
    combined = _str_list(inst, "combined_1_images", iwhere) if inst.get("combined_1_images") is not None else []

    choices: list[str] | None = None
    if inst.get("choice_list") is not None:
        if question_type == "open-ended":
            raise DataError(f"{iwhere}: field 'choice_list' is present but {name} is an open-ended set")
        choices = _str_list(inst, "choice_list", iwhere)
        if not choices:
            raise DataError(f"{iwhere}: field 'choice_list' is empty")
    elif question_type == "multi-choice":
        raise DataError(f"{iwhere}: required field 'choice_list' is missing ({name} is a multi-choice set)")

    if "response" not in rec or rec["response"] is None:
        raise DataError(f"{where}: required field 'response' is missing")
    if not isinstance(rec["response"], (str, int, float)) or isinstance(rec["response"], bool):
        raise DataError(f"{where}: field 'response' must be a string, got {type(rec['response']).__name__}")
    response = str(rec["response"])  # MileBench compares the gold as a string
    if choices is not None and response not in choices:
        warnings.warn(f"{where}: field 'response' {response!r} is not among 'choice_list'; "
                      "this sample can never be scored correct", DataWarning, stacklevel=3)

    if rec.get("image_quantity_level") is not None:
        level = _field(rec, "image_quantity_level", str, where)
        if level not in LEVELS:
            raise DataError(f"{where}: field 'image_quantity_level' must be one of {LEVELS}, not {level!r}")
    elif json_form:  # the field is part of the on-disk format
        raise DataError(f"{where}: required field 'image_quantity_level' is missing")
    else:  # the Hub parquet form does not carry it; MileBench's buckets give it back
        level = catalog.image_quantity_level(len(images))

    for m in PLACEHOLDER_RE.finditer(context):
        k = int(m.group(2))
        if not 1 <= k <= len(images):
            raise DataError(f"{iwhere}: field 'context' has placeholder {m.group(0)} but 'images_path' has "
                            f"{len(images)} entries")
    return Sample(dataset=name, sample_id=sid, instruction=instruction, context=context, images=images,
                  choices=choices, response=response, image_quantity_level=level, combined_images=combined)


def _check_images(root: Path, samples: list[Sample], source: Path) -> None:
    """Open every referenced image's header once: a missing or corrupt file fails here, not
    in the middle of a batch hours into a run."""
    from PIL import Image, UnidentifiedImageError

    checked: set[str] = set()
    for s in samples:
        for rel in s.images:
            if rel in checked:
                continue
            checked.add(rel)
            path = root / IMAGES_DIR / rel
            where = f"{source}: dataset {s.dataset}, sample {s.sample_id}, task_instance: field 'images_path'"
            if not path.is_file():
                raise DataError(f"{where}: image {rel!r} not found at {path}")
            try:
                with Image.open(path) as im:
                    im.size  # header parsed
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{where}: image {rel!r} at {path} cannot be read: {e}") from None
