"""The runner end to end on the tiny model and the generated data: the README command on all
29 datasets, kill-and-resume, two processes against one, errors, reruns, a sweep."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from milebench import catalog
from milebench.data import DataError, load_dataset
from milebench.runner.loop import run
from milebench.runner.settings import RunConfigError
from milebench.synthetic import DEFAULT_DIR, ensure_synthetic

ROOT = Path(__file__).resolve().parent.parent
PRED_KEYS = {"sample_id", "image", "question", "gt_response", "gen_model_id", "pred_response", "gen_kwargs"}
# One thread per process: the one- and two-process runs then do the same arithmetic.
ENV = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
# Two datasets: MMCoQA runs one sample per batch (3 batches), WebQA one batch of 3.
SMALL = ["method=csp", "datasets=[MMCoQA,WebQA]", "limit=3", "max_new_tokens=6"]


@pytest.fixture(scope="module", autouse=True)
def data() -> Path:
    return ensure_synthetic(DEFAULT_DIR)


def cli(*args: str, out: Path, nproc: int = 1, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(ENV, NPROC=str(nproc))
    cmd = ["bash", "scripts/eval.sh", *args, f"output_dir={out}", f"hydra.run.dir={out}/hydra"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, the saved config without its output_dir line."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "config.yaml":
                data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"output_dir:"))
            out[str(p.relative_to(run_dir))] = data
    return out


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_readme_command_scores_all_29_datasets(tmp_path):
    cli("limit=1", "max_new_tokens=2", out=tmp_path)
    run_dir = tmp_path / "tiny-llava" / "full"
    assert (run_dir / "config.yaml").is_file()
    for info in catalog.DATASETS:
        folder = run_dir / info.name
        preds = json.loads((folder / "pred.json").read_text())
        first = load_dataset(DEFAULT_DIR, info.name, check_images=False).samples[0]
        assert len(preds) == 1 and set(preds[0]) == PRED_KEYS, info.name
        p = preds[0]
        assert (p["sample_id"], p["gt_response"], p["gen_model_id"]) == (first.sample_id, first.response, "tiny-llava")
        assert p["gen_kwargs"]["max_new_tokens"] == 2 and p["gen_kwargs"]["method"]["name"] == "full"
        assert p["question"].count("<ImageHere>") == len(p["image"]) and all(Path(i).is_file() for i in p["image"])
        ev = json.loads((folder / "eval.json").read_text())
        assert set(ev) == {info.metric, "image_quantity_level-Accuracy", "image_quantity_level-Result"}
        assert 0.0 <= ev[info.metric] <= 1.0
        assert json.loads((folder / "eval_score.json").read_text())[0]["id"] == str(first.sample_id)
        assert not (folder / "partial").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted one-process run of SMALL."""
    out = tmp_path_factory.mktemp("reference")
    cli(*SMALL, out=out)
    return out / "tiny-llava" / "csp_b0.2"


def test_reference_run_uses_the_ratio_table_per_dataset(reference):
    for name, cross in (("MMCoQA", 0.5), ("WebQA", 0.9)):
        preds = json.loads((reference / name / "pred.json").read_text())
        assert [p["sample_id"] for p in preds] == [0, 1, 2]
        assert {p["gen_kwargs"]["method"]["cross_ratio"] for p in preds} == {cross}


def test_sigkill_then_rerun_gives_identical_files(reference, tmp_path):
    cmd = ["bash", "scripts/eval.sh", *SMALL, f"output_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra"]
    part = tmp_path / "tiny-llava" / "csp_b0.2" / "MMCoQA" / "partial" / "rank0.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (part.is_file() and part.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_done = part.read_bytes().count(b"\n")
    assert 1 <= n_done < 3 and not (part.parent.parent / "pred.json").exists()
    with open(part, "ab") as f:  # as if killed in the middle of writing the next line
        f.write(b'{"sample_id": 2, "image": ["data/mileb')
    cli(*SMALL, out=tmp_path)
    assert files_of(tmp_path / "tiny-llava" / "csp_b0.2") == files_of(reference)


def test_sigkill_inside_a_multi_sample_batch_then_resume(reference, tmp_path, monkeypatch):
    """WebQA runs as ONE batch of 3 after MMCoQA. The run is SIGKILLed while that batch is in
    flight, and its partial file is left as a kill in the middle of the batch's write leaves
    it: the first line whole, the second torn. The resume must redo the batch as a whole (the
    same padding as an uninterrupted run) yet append only samples 1 and 2, and end with files
    identical to the uninterrupted run."""
    import torch

    from milebench.runner.store import JsonlAppender

    run_dir = tmp_path / "tiny-llava" / "csp_b0.2"
    cmd = ["bash", "scripts/eval.sh", *SMALL, f"output_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "WebQA" / "partial").is_dir():  # opened just before its one batch runs
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "WebQA" / "pred.json").exists(), "the WebQA batch finished before the kill"
    lines = [json.dumps(r, ensure_ascii=False) for r in json.loads((reference / "WebQA" / "pred.json").read_text())]
    part = run_dir / "WebQA" / "partial" / "rank0.jsonl"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2], encoding="utf-8")

    appended = []
    real_append = JsonlAppender.append

    def spy(self, records):
        records = list(records)
        if self.path == part:
            appended.extend(r["sample_id"] for r in records)
        real_append(self, records)

    monkeypatch.setattr(JsonlAppender, "append", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the one-thread subprocess that made `reference`
    try:
        run(compose_cfg(*SMALL, f"output_dir={tmp_path}"), method_name="csp")
    finally:
        torch.set_num_threads(threads)
    assert appended == [1, 2]  # none skipped, none written twice
    assert files_of(run_dir) == files_of(reference)


def test_two_processes_equal_one(reference, tmp_path):
    cli(*SMALL, out=tmp_path, nproc=2)
    assert files_of(tmp_path / "tiny-llava" / "csp_b0.2") == files_of(reference)


def test_rerun_with_another_config_is_an_error_and_a_finished_run_is_left_alone(reference):
    out = str(reference.parent.parent)
    cfg = compose_cfg(*SMALL, f"output_dir={out}", "max_new_tokens=7")
    with pytest.raises(RunConfigError, match=r"(?s)different config.*max_new_tokens: 6 in the folder, 7 now"):
        run(cfg, method_name="csp")
    before = files_of(reference)

    def never(*a, **k):
        raise AssertionError("a finished run loaded the model again")

    # the same command again: everything is done, so nothing is loaded or rewritten
    run(compose_cfg(*SMALL, f"output_dir={out}"), method_name="csp", load_adapter=never, generate_fn=never)
    assert files_of(reference) == before


def test_bad_sample_raises_by_default_and_is_skipped_on_request(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DIR / "MMCoQA", data / "MMCoQA")
    victim = load_dataset(data, "MMCoQA").samples[1]
    (data / "MMCoQA" / "images" / victim.images[0]).unlink()
    args = ["datasets=[MMCoQA]", "limit=3", "max_new_tokens=2", f"data_dir={data}", f"output_dir={tmp_path}/out"]
    with pytest.raises(DataError, match=rf"dataset MMCoQA, sample {victim.sample_id}.*not found"):
        run(compose_cfg(*args), method_name="full")
    run_dir = run(compose_cfg(*args, "on_error=skip"), method_name="full")
    errors = [json.loads(l) for l in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert [(e["dataset"], e["sample_id"], e["error"]) for e in errors] == [("MMCoQA", victim.sample_id, "DataError")]
    preds = json.loads((run_dir / "MMCoQA" / "pred.json").read_text())
    assert [p["sample_id"] for p in preds] == [s for s in (0, 1, 2) if s != victim.sample_id]
    ev = json.loads((run_dir / "MMCoQA" / "eval.json").read_text())
    assert ev["image_quantity_level-Result"] and sum(n for _, n in ev["image_quantity_level-Result"].values()) == 2


def test_submitit_local_sweep_gives_one_run_per_budget(tmp_path):
    cmd = [sys.executable, "-m", "milebench.run", "--multirun", "hydra/launcher=submitit_local",
           "method=h2o", "budget=0.1,0.3", "datasets=[WebQA]", "limit=1", "max_new_tokens=2",
           f"output_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for budget in (0.1, 0.3):
        preds = json.loads((tmp_path / "tiny-llava" / f"h2o_b{budget}" / "WebQA" / "pred.json").read_text())
        assert len(preds) == 1 and preds[0]["gen_kwargs"]["method"]["budget"] == budget
        assert (tmp_path / "tiny-llava" / f"h2o_b{budget}" / "WebQA" / "eval.json").is_file()
