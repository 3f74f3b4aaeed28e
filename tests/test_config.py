"""Config composition and the checks that fail a run before any model is loaded."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from milebench import catalog
from milebench.runner import ratios
from milebench.runner.loop import run
from milebench.runner.settings import RunConfigError, derive_run_name, select_datasets

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def table(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "ratios" / f"{name}.yaml"))


# -- ratio tables ----------------------------------------------------------------------------

def test_reference_table_matches_the_reference_code():
    t = table("reference")
    ratios.validate(t)
    assert ratios.settings_for(t, "ActionLocalization") == {"cross_ratio": 0.1, "bias": 1.0}
    assert ratios.settings_for(t, "ActionPrediction") == {"cross_ratio": 0.0, "bias": 1.0}
    assert ratios.settings_for(t, "WebQA") == {"cross_ratio": 0.9, "bias": 1.0}
    assert ratios.settings_for(t, "EgocentricNavigation") == {"cross_ratio": 0.5, "bias": 1.5}
    assert ratios.settings_for(t, "SlideVQA") == {"cross_ratio": 0.5, "bias": 0.5}
    assert ratios.settings_for(t, "GPR1200") == {"cross_ratio": 0.5, "bias": 1.0}
    ten = {d for d in catalog.NAMES if ratios.settings_for(t, d)["cross_ratio"] != 0.5}
    assert len(ten) == 10  # 6 at 0.1, 3 at 0.9, ActionPrediction at 0


def test_paper_tables_are_per_task_group():
    t7, t13 = table("paper-7b"), table("paper-13b")
    ratios.validate(t7)
    ratios.validate(t13)
    assert ratios.settings_for(t7, "SceneTransition")["cross_ratio"] == 0.1  # T-4, 7B
    assert ratios.settings_for(t13, "SceneTransition")["cross_ratio"] == 0.5  # T-4, 13B
    assert ratios.settings_for(t13, "ActionSequence")["cross_ratio"] == 1.0  # T-1, 13B
    assert ratios.settings_for(t7, "GPR1200") == {"cross_ratio": 0.9, "bias": 1.0}  # IR
    assert ratios.settings_for(t7, "nuscenes")["cross_ratio"] == 0.5  # S-5: the default


def test_dataset_entry_beats_group_beats_default():
    t = {"default": {"cross_ratio": 0.5, "bias": 1.0}, "groups": {"S-1": {"cross_ratio": 0.2, "bias": 2.0}},
         "datasets": {"TQA": {"cross_ratio": 0.7}}}
    assert ratios.settings_for(t, "TQA") == {"cross_ratio": 0.7, "bias": 2.0}
    assert ratios.settings_for(t, "WebQA") == {"cross_ratio": 0.2, "bias": 2.0}
    assert ratios.settings_for(t, "DocVQA") == {"cross_ratio": 0.5, "bias": 1.0}


@pytest.mark.parametrize("bad, message", [
    ({"datasets": {"WebQa": {"cross_ratio": 0.1}}}, "unknown dataset 'WebQa'"),
    ({"groups": {"S-9": {"cross_ratio": 0.1}}}, "unknown task group 'S-9'"),
    ({"datasets": {"WebQA": {"cross_ratio": 1.2}}}, "ratios.datasets.WebQA.cross_ratio=1.2 is out of [0, 1]"),
    ({"default": {"bias": 0}}, "ratios.default.bias=0 must be > 0"),
    ({"default": {"ratio": 0.1}}, "unknown field 'ratio'"),
])
def test_bad_ratio_tables_name_the_entry(bad, message):
    with pytest.raises(ratios.RatioTableError, match=message.replace(".", r"\.").replace("[", r"\[")):
        ratios.validate(bad, "ratios")


# -- datasets and run names ----------------------------------------------------------------

def test_dataset_selection():
    assert select_datasets("all") == catalog.NAMES
    assert select_datasets("T-1") == ("ActionLocalization", "ActionPrediction", "ActionSequence")
    assert select_datasets(["NH", "WebQA", "TextNeedleInAHaystack"]) == (
        "TextNeedleInAHaystack", "ImageNeedleInAHaystack", "WebQA")
    assert select_datasets("WebQA,TQA") == ("WebQA", "TQA")
    with pytest.raises(RunConfigError, match="unknown dataset or group 'webqa'"):
        select_datasets(["webqa"])


def test_run_names_separate_sweep_jobs():
    cfg = OmegaConf.create({"budget": 0.2, "budget_tokens": None})
    assert derive_run_name("full", cfg) == "full"
    assert derive_run_name("csp", cfg) == "csp_b0.2"
    assert derive_run_name("csp", cfg, ["method=csp", "method.decompose=false", "method.score_fn=softmax",
                                         "datasets=[WebQA]", "limit=3", "budget=0.2"]) \
        == "csp_b0.2,decompose=false,score_fn=softmax"
    assert derive_run_name("h2o", OmegaConf.create({"budget": 0.2, "budget_tokens": 128})) == "h2o_t128"


# -- composed configs ----------------------------------------------------------------------

def test_default_config_composes_with_the_documented_fields():
    cfg = compose_cfg()
    assert cfg.model.name and cfg.budget == 0.2 and cfg.recent_ratio == 0.1 and cfg.budget_tokens is None
    assert cfg.datasets == "all" and cfg.limit is None and cfg.output_dir == "results"
    assert cfg.batch_size == "auto" and cfg.on_error == "raise" and cfg.combine_image is False
    assert cfg.ratios.datasets.WebQA.cross_ratio == 0.9
    assert compose_cfg("model=llava-1.5-7b").max_new_tokens == 512  # MileBench's setting
    assert compose_cfg("max_new_tokens=7").max_new_tokens == 7


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded although the config is invalid")


@pytest.mark.parametrize("overrides, message", [
    (["budget=1.5"], r"budget=1.5 is out of range"),
    (["method=h2o", "budget=0"], r"budget=0 is out of range"),
    (["recent_ratio=0.3"], r"recent_ratio=0.3 is out of range"),
    (["method=csp", "method.cross_ratio=1.5"], r"cross_ratio=1.5 must lie in \[0, 1\]"),
    (["method=csp", "ratios.datasets.WebQA.cross_ratio=-0.1"], r"ratios.datasets.WebQA.cross_ratio=-0.1 is out"),
    (["data_dir=/nonexistent/milebench"], r"data_dir='/nonexistent/milebench' does not exist"),
    (["datasets=[WebQA,Nope]"], r"unknown dataset or group 'Nope'"),
    (["batch_size=0"], r"batch_size=0 must be >= 1"),
    (["limit=0"], r"limit=0 must be >= 1"),
    (["on_error=ignore"], r"on_error='ignore'"),
    (["dtype=fp8"], r"dtype='fp8'"),
    (["device=tpu"], r"device='tpu'"),
    (["attn_implementation=flash"], r"attn_implementation='flash'"),
    (["model=mobilevlm-v2-3b", "model.encoding=processor"], r"family 'mobilevlm' is encoded as its authors"),
    (["model=internvl-chat-1.0", "model.chat_template=vicuna"], r"unknown chat_template 'vicuna'"),
    (["model=llava-1.5-7b", "model.path=/nonexistent/llava"], r"model.path='/nonexistent/llava' does not exist"),
])
def test_invalid_config_fails_before_the_model_loads(tmp_path, overrides, message):
    cfg = compose_cfg(f"output_dir={tmp_path}", *overrides)
    with pytest.raises(RunConfigError, match=message):
        run(cfg, generate_fn=_never, load_adapter=_never)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("override, message", [
    ("model=llava-9b", "Could not find 'model/llava-9b'"),
    ("method=nope", "Could not find 'method/nope'"),
])
def test_unknown_model_or_method_is_a_composition_error(override, message):
    with pytest.raises(MissingConfigException, match=message):
        compose_cfg(override)


def _cli_error(tmp_path, *args: str) -> str:
    """Run the command line, expect exit status 2 and exactly one stderr line; return it."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    proc = subprocess.run([sys.executable, "-m", "milebench.run", *args, f"output_dir={tmp_path}/out",
                           f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr.strip()


def test_command_line_reports_a_config_error_in_one_line(tmp_path):
    assert _cli_error(tmp_path, "method=csp", "budget=2") == "error: budget=2 is out of range: a kept fraction in (0, 1]"


def test_command_line_reports_an_unknown_method_with_the_known_ones(tmp_path):
    """Hydra's own composition error, which it would print over several lines with exit 1."""
    known = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
    assert _cli_error(tmp_path, "method=cps") == \
        f"error: method=cps: no such method config; available: {', '.join(known)}"


def test_command_line_reports_a_bad_dataset_file_in_one_line(tmp_path):
    bad = tmp_path / "data" / "WebQA" / "WebQA.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"meta_data": {"dataset": "WebQA"}, "data": []}')
    assert _cli_error(tmp_path, "datasets=[WebQA]", f"data_dir={tmp_path / 'data'}") == \
        f"error: {bad}: dataset WebQA, meta_data: required field 'task_instruction' is missing"
