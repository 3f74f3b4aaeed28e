"""The runner in-process on the tiny model: what generation receives per dataset, reruns with a
larger limit, the adversarial variant through scoring, and resumes across devices refused.

The model is loaded once for the module (through the run's own loader), and where only the
plumbing is under test the generation is replaced by a spy that answers a fixed text.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

import csp.engine.decode
from milebench.data import load_dataset
from milebench.runner import settings
from milebench.runner.loop import run
from milebench.runner.settings import RunConfigError
from milebench.score import main as score_main
from milebench.synthetic import DEFAULT_DIR, ensure_synthetic

ROOT = Path(__file__).resolve().parent.parent


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def load_once():
    """The run's own model loader, called once for the whole module."""
    from milebench.runner.models import adapter_from_config

    ensure_synthetic(DEFAULT_DIR)
    cache = {}

    def load(model_cfg, dtype, device, attn):
        key = (str(model_cfg.name), dtype, device, attn)
        if key not in cache:
            cache[key] = adapter_from_config(model_cfg, dtype, device, attn)
        return cache[key]

    return load


class Spy:
    """Stands in for csp.engine.decode.greedy_generate: records the method and batch size of every
    call and answers `answer` for every sample, or with `answer=None` each prompt's length in
    tokens (an answer that differs between samples, at no model cost)."""

    def __init__(self, answer: str | None = "A"):
        self.answer = answer
        self.calls: list[tuple[object, int]] = []

    def __call__(self, adapter, inputs, method, **kw):
        if isinstance(inputs, list):  # prefill=per_sample: one unpadded input per prompt
            lengths = [int(x["input_ids"].shape[1]) for x in inputs]
        else:
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
        self.calls.append((method, len(lengths)))
        texts = [self.answer if self.answer is not None else f"{n} tokens" for n in lengths]
        tok = adapter.processor.tokenizer
        return SimpleNamespace(tokens=[tok.encode(t, add_special_tokens=False) for t in texts])


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


def test_generation_receives_each_datasets_cross_ratio_and_bias(tmp_path, monkeypatch, load_once):
    """The ratio table (configs/ratios/reference.yaml) reaches the method generation is called
    with, not only the record saved in gen_kwargs."""
    spy = Spy()
    monkeypatch.setattr(csp.engine.decode, "greedy_generate", spy)
    names = ["ActionPrediction", "EgocentricNavigation", "WebQA", "GPR1200"]
    run(compose_cfg("method=csp", f"datasets=[{','.join(names)}]", "limit=1", f"output_dir={tmp_path}"),
        method_name="csp", load_adapter=load_once)
    got = [(m.cross_ratio, m.bias) for m, _ in spy.calls]
    assert got == [(0.0, 1.0), (0.5, 1.5), (0.9, 1.0), (0.5, 1.0)]  # in dataset order, one batch each
    # an explicit method.cross_ratio wins over the table everywhere
    spy.calls.clear()
    run(compose_cfg("method=csp", "method.cross_ratio=0.3", "datasets=[ActionPrediction,WebQA]", "limit=1",
                    "run_name=fixed", f"output_dir={tmp_path}"), method_name="csp", load_adapter=load_once)
    assert [(m.cross_ratio, m.bias) for m, _ in spy.calls] == [(0.3, 1.0), (0.3, 1.0)]


def test_rerun_with_a_larger_limit_appends_the_missing_samples(tmp_path, monkeypatch, load_once):
    """limit=2 then limit=4 into one folder equals limit=4 at once, file for file; the rerun
    generates only the batch of the new samples."""
    spy = Spy(answer=None)
    monkeypatch.setattr(csp.engine.decode, "greedy_generate", spy)
    args = ["method=snapkv", "datasets=[WebQA,MMCoQA]", "batch_size=2", "max_new_tokens=3"]
    direct = run(compose_cfg(*args, "limit=4", f"output_dir={tmp_path}/direct"), method_name="snapkv",
                 load_adapter=load_once)
    run(compose_cfg(*args, "limit=2", f"output_dir={tmp_path}/grown"), method_name="snapkv", load_adapter=load_once)
    spy.calls.clear()
    grown = run(compose_cfg(*args, "limit=4", f"output_dir={tmp_path}/grown"), method_name="snapkv",
                load_adapter=load_once)
    assert [n for _, n in spy.calls] == [2, 2]  # WebQA [2, 3] and MMCoQA [2, 3]; [0, 1] were done
    preds = json.loads((grown / "WebQA" / "pred.json").read_text())
    assert [p["sample_id"] for p in preds] == [0, 1, 2, 3]
    assert len({p["pred_response"] for p in preds}) == 4  # each sample's own answer
    assert json.loads((grown / "WebQA" / "eval.json").read_text())["image_quantity_level-Result"] \
        == json.loads((direct / "WebQA" / "eval.json").read_text())["image_quantity_level-Result"]
    assert files_of(grown) == files_of(direct)


def test_adversarial_run_reads_the_adv_file_and_scores_it(tmp_path, monkeypatch, load_once):
    """adversarial=true: <D>-adv.json (options rotated, gold unchanged) is what the prompt shows
    and what the answer is scored against. Every answer is "A": right exactly where the adv
    file puts the gold first, which is not where the test file puts it."""
    monkeypatch.setattr(csp.engine.decode, "greedy_generate", Spy("A"))
    overrides = ["datasets=[WebQA]", "limit=3", "adversarial=true", f"output_dir={tmp_path}"]
    run_dir = run(compose_cfg(*overrides), method_name="full", overrides=overrides, load_adapter=load_once)
    assert run_dir.name == "full,adversarial=true"
    adv = load_dataset(DEFAULT_DIR, "WebQA", adversarial=True).samples[:3]
    test = load_dataset(DEFAULT_DIR, "WebQA").samples[:3]
    want = [str(int(s.choices[0] == s.response)) for s in adv]
    assert want != [str(int(s.choices[0] == s.response)) for s in test]  # the two files disagree here
    folder = run_dir / "WebQA-adv"
    assert not (run_dir / "WebQA").exists()
    preds = json.loads((folder / "pred.json").read_text())
    for p, s in zip(preds, adv):
        assert p["pred_response"] == "A" and p["gt_response"] == s.response
        assert p["question"].endswith("Choice list: \n" + "\n".join(f"{k}. {c}" for k, c in zip("ABCD", s.choices))
                                      + "\nYour answer is: ")
    assert [e["score"] for e in json.loads((folder / "eval_score.json").read_text())] == want
    written = (folder / "eval.json").read_bytes()
    # the scoring CLI finds the adv file from the folder name and writes the same numbers
    (folder / "eval.json").unlink()
    assert score_main([str(run_dir), "--data-dir", str(DEFAULT_DIR), "--predicted-only"]) == 0
    assert (folder / "eval.json").read_bytes() == written
    assert json.loads(written)["Accuracy"] == pytest.approx(want.count("1") / 3)


def as_on_cuda(monkeypatch, field: str) -> None:
    """Make `auto` resolve as it would on a CUDA machine, for one field."""
    if field == "dtype":
        real = settings.resolve_dtype
        monkeypatch.setattr(settings, "resolve_dtype", lambda d, dev: "bfloat16" if d == "auto" else real(d, dev))
    else:
        real = settings.resolve_prefill
        monkeypatch.setattr(settings, "resolve_prefill", lambda p, dev: "batched" if p == "auto" else real(p, dev))


def never(*a, **k):
    raise AssertionError("the model was loaded although the resume is refused")


@pytest.mark.parametrize("field, before, after", [("dtype", "float32", "bfloat16"),
                                                  ("prefill", "per_sample", "batched")])
def test_resume_on_another_device_is_refused_by_resolved_dtype_and_prefill(tmp_path, monkeypatch, load_once,
                                                                          field, before, after):
    """`device` may change on a resume, but `dtype=auto` and `prefill=auto` follow it: a folder
    begun on the CPU must not be continued in bfloat16 (or batched) on a GPU without a word."""
    monkeypatch.setattr(csp.engine.decode, "greedy_generate", Spy())
    args = ["datasets=[WebQA]", "limit=1", f"output_dir={tmp_path}"]
    run_dir = run(compose_cfg(*args), method_name="full", load_adapter=load_once)
    saved = (run_dir / "config.yaml").read_text()
    assert f"\ndtype: float32\n" in saved and f"\nprefill: per_sample\n" in saved  # resolved, not `auto`
    as_on_cuda(monkeypatch, field)
    with pytest.raises(RunConfigError, match=rf"(?s){field}: '{before}' in the folder, '{after}' now.*compared as resolved"):
        run(compose_cfg(*args, "limit=2"), method_name="full", load_adapter=never, generate_fn=never)
    assert (run_dir / "config.yaml").read_text() == saved


def test_explicit_values_equal_to_the_resolved_auto_resume(tmp_path, monkeypatch, load_once):
    monkeypatch.setattr(csp.engine.decode, "greedy_generate", Spy())
    args = ["datasets=[WebQA]", f"output_dir={tmp_path}"]
    run(compose_cfg(*args, "limit=1", "dtype=float32", "prefill=per_sample"), method_name="full", load_adapter=load_once)
    run_dir = run(compose_cfg(*args, "limit=2"), method_name="full", load_adapter=load_once)  # auto on the CPU
    assert len(json.loads((run_dir / "WebQA" / "pred.json").read_text())) == 2
    with pytest.raises(RunConfigError, match="dtype: 'float32' in the folder, 'bfloat16' now"):
        run(compose_cfg(*args, "dtype=bfloat16"), method_name="full", load_adapter=never, generate_fn=never)


def test_a_kill_while_scoring_leaves_the_dataset_to_be_scored_again(tmp_path, monkeypatch, load_once):
    """The runner skips a dataset whose eval.json exists, so every other result file must be
    written before it: here the process "dies" after the first scoring file, and the rerun
    must complete the folder exactly as an uninterrupted run does."""
    import milebench.score

    monkeypatch.setattr(csp.engine.decode, "greedy_generate", Spy(answer=None))
    args = ["datasets=[ALFRED]", "limit=2", "run_name=r"]
    direct = run(compose_cfg(*args, f"output_dir={tmp_path}/direct"), load_adapter=load_once)

    class Killed(BaseException):
        pass

    real_write = milebench.score.write_atomic

    def write_then_die(path, text):
        real_write(path, text)
        raise Killed(path)

    monkeypatch.setattr(milebench.score, "write_atomic", write_then_die)
    with pytest.raises(Killed):
        run(compose_cfg(*args, f"output_dir={tmp_path}/killed"), load_adapter=load_once)
    monkeypatch.setattr(milebench.score, "write_atomic", real_write)
    killed = run(compose_cfg(*args, f"output_dir={tmp_path}/killed"), load_adapter=load_once)
    assert files_of(killed) == files_of(direct)
    assert {"eval.json", "eval_score.json", "eval_rouge_score.json"} <= {p.name for p in (killed / "ALFRED").iterdir()}


def test_two_nodes_write_one_partial_file_per_global_rank_and_merge_to_a_plain_run(tmp_path, monkeypatch, load_once):
    """Four processes on two nodes (LOCAL_RANK 0, 1 on each), run one after the other with
    torchrun's environment and the process group stubbed: each writes its share to its own
    partial file (named by the global rank: on a shared filesystem two nodes' LOCAL_RANK 0 must
    not append to one file), only global rank 0 writes the config and merges, and the merged
    folder equals a one-process run file for file."""
    import torch.distributed as td

    monkeypatch.setattr(csp.engine.decode, "greedy_generate", Spy(answer=None))
    args = ["datasets=[ALFRED]", "limit=5", "batch_size=1", "run_name=r"]
    plain = run(compose_cfg(*args, f"output_dir={tmp_path}/plain"), load_adapter=load_once)

    monkeypatch.setattr(td, "is_initialized", lambda: False)
    monkeypatch.setattr(td, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(td, "barrier", lambda: None)
    folder = tmp_path / "nodes" / "tiny-llava" / "r"
    for rank in (3, 2, 1, 0):  # rank 0 last: it merges once the others' files are complete
        for k, v in {"RANK": rank, "LOCAL_RANK": rank % 2, "WORLD_SIZE": 4, "GROUP_RANK": rank // 2}.items():
            monkeypatch.setenv(k, str(v))
        if rank == 1:
            partial = sorted(p.name for p in (folder / "ALFRED" / "partial").iterdir())
            assert partial == ["rank2.jsonl", "rank3.jsonl"]
            assert not (folder / "config.yaml").exists() and not (folder / "ALFRED" / "pred.json").exists()
            owned = [json.loads(line)["sample_id"] for line in (folder / "ALFRED" / "partial" / "rank3.jsonl").open()]
            assert len(owned) == 1  # batch 3 of five one-sample batches
        nodes = run(compose_cfg(*args, f"output_dir={tmp_path}/nodes"), load_adapter=load_once)
    assert files_of(nodes) == files_of(plain)
