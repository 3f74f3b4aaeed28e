"""The run: check the config, load the data, load the model, then for each dataset run the
batches this process owns, append predictions durably, merge, and score.

Order matters: every check that can fail (config, method, ratio table, data dir, the run
folder's saved config, the dataset files) runs before the model is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from csp.engine.method import ConfigError
from milebench.data import DataError, DatasetFile, Sample, load_dataset
from milebench.prompt import prepare_sample
from milebench.runner import dist as dist_mod
from milebench.score import score_dataset
from milebench.runner.settings import RESOLVED_FIELDS, RunConfigError, RunPlan, check_budget, fingerprint, make_plan
from milebench.files import CONFIG_FILE, ERRORS_FILE, EVAL_FILE, FIDELITY_FILE, write_atomic
from milebench.runner.store import JsonlAppender, PredictionStore, read_complete_lines

log = logging.getLogger("milebench.run")

MIN_NEW_TOKENS = 1

# generate(adapter, inputs, method, *, max_new_tokens, min_new_tokens) -> object with .tokens
GenerateFn = Callable[..., Any]


def instantiate_method(method_cfg: DictConfig) -> Any:
    """Build the method object from its yaml; a bad value is a RunConfigError, before any model."""
    from csp.engine.registry import instantiate_method as build

    try:
        return build(method_cfg)
    except ConfigError as e:
        raise RunConfigError(str(e)) from None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def check_run_folder(run_dir: Path, resolved: dict[str, Any]) -> None:
    """A rerun may only continue a run made with the same prediction-deciding config."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
    old, new = _flatten(fingerprint(saved)), _flatten(fingerprint(resolved))
    diff = [f"  {k}: {old.get(k, '<absent>')!r} in the folder, {new.get(k, '<absent>')!r} now"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        hint = ""
        if any(old.get(k) != new.get(k) for k in RESOLVED_FIELDS):
            hint = ("\n(dtype and prefill are compared as resolved: `auto` is bfloat16 / batched on CUDA, "
                    "float32 / per_sample on the CPU; resume on the same kind of device, or set them explicitly)")
        raise RunConfigError(
            f"{run_dir} holds a run made with a different config ({saved_path}):\n" + "\n".join(diff) + hint
            + "\nuse another run_name=... (or output_dir=...), or remove the folder to start over")


def method_record(name: str, method: Any) -> dict[str, Any]:
    """The method's settings for one dataset, as saved in each prediction's gen_kwargs."""
    rec: dict[str, Any] = {"name": name}
    if dataclasses.is_dataclass(method):
        for f in dataclasses.fields(method):
            v = getattr(method, f.name)
            if v is None or isinstance(v, (bool, int, float, str)):
                rec[f.name] = v
    return rec


def batches_of(samples: Sequence[Sample], size: int) -> list[list[Sample]]:
    """Consecutive batches of `size` (the last one shorter). Fixed by the sample order alone,
    so every process and every rerun cuts the same batches and ownership by index holds."""
    return [list(samples[i:i + size]) for i in range(0, len(samples), size)]


@dataclass
class Runner:
    """State shared by the datasets of one run."""

    cfg: DictConfig
    plan: RunPlan
    method: Any
    method_name: str
    dist: dist_mod.Dist
    generate: GenerateFn
    load_adapter: Callable[..., Any]
    adapter: Any = None
    errors: JsonlAppender | None = None

    def ensure_model(self) -> None:
        """Load the model on first use: a rerun with nothing left to do never loads it."""
        if self.adapter is not None:
            return
        t0 = time.perf_counter()
        self.adapter = self.load_adapter(self.cfg.model, self.plan.dtype, self.dist.device_for(self.plan.device),
                                         str(self.cfg.attn_implementation))
        log.info("model %s loaded in %.1f s", self.cfg.model.name, time.perf_counter() - t0)

    # -- errors ----------------------------------------------------------------------------
    def fail(self, dataset: str, sample_id: int | None, err: Exception) -> None:
        """on_error=raise re-raises; skip logs the sample to errors.jsonl (once) and goes on."""
        if self.plan.on_error == "raise":
            raise err
        entry = {"dataset": dataset, "sample_id": sample_id, "error": type(err).__name__, "message": str(err)}
        path = self.plan.run_dir / ERRORS_FILE
        if entry not in list(read_complete_lines(path)):
            if self.errors is None:
                self.errors = JsonlAppender(path)
            self.errors.append([entry])
        tqdm.write(f"[skip] {dataset} sample {sample_id}: {err}")

    # -- one batch ---------------------------------------------------------------------------
    def prepare(self, dataset: DatasetFile, batch: list[Sample]) -> list[tuple[Sample, Any, list]]:
        """The samples of `batch` with their prompt and images; one with bad input goes to `fail`
        and drops out, so it costs its own prediction, not the batch's."""
        ready = []
        for s in batch:
            try:
                built, images = prepare_sample(self.adapter, s, dataset, int(self.cfg.model.max_context_len),
                                               bool(self.cfg.combine_image))
            except DataError as e:
                self.fail(s.dataset, s.sample_id, e)
                continue
            ready.append((s, built, images))
        return ready

    def encode(self, ready: list[tuple[Sample, Any, list]]) -> Any:
        """The model inputs of prepared samples; the chat template is applied here, by the
        adapter (a processor's jinja template may hold braces that str.format would eat)."""
        prompts = [self.adapter.format_prompt(b.text) for _, b, _ in ready]
        images = [imgs for _, _, imgs in ready]
        device = self.adapter.model.device
        if self.plan.prefill == "per_sample":  # one input per prompt, decoded as one batch
            return [self.adapter.encode([p], [im]).to(device) for p, im in zip(prompts, images)]
        return self.adapter.encode(prompts, images).to(device)

    def run_batch(self, dataset: DatasetFile, batch: list[Sample], done: dict[int, Any], method: Any,
                  gen_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """Generate one batch and return its prediction records (MileBench's pred.json fields).
        Samples already in `done` are generated with the rest, so the batch keeps its shape and
        its predictions, but are not returned again."""
        self.ensure_model()
        ready = self.prepare(dataset, batch)
        if not ready:
            return []
        inputs = self.encode(ready)
        out = self.generate(self.adapter, inputs, method, max_new_tokens=self.plan.max_new_tokens,
                            min_new_tokens=MIN_NEW_TOKENS)
        records = []
        for (s, built, _), tokens in zip(ready, out.tokens):
            if s.sample_id in done:  # the rest of a batch cut short by a kill
                continue
            records.append({
                "sample_id": s.sample_id,
                "image": built.images,
                "question": built.question,
                "gt_response": s.response,
                "gen_model_id": str(self.cfg.model.name),
                "pred_response": self.adapter.decode(tokens).strip(),
                "gen_kwargs": gen_kwargs,
            })
        return records

    # -- one dataset -------------------------------------------------------------------------
    def run_dataset(self, dataset: DatasetFile, overall: tqdm) -> None:
        """Run the batches of `dataset` this process owns and still lacks, appending each one
        durably before the next; then the main process merges, scores and (fidelity=true)
        measures fidelity."""
        name = dataset.name
        plan = self.plan
        folder = plan.run_dir / (name + ("-adv" if self.cfg.adversarial else ""))
        store = PredictionStore(folder)
        samples = dataset.samples[: plan.limit] if plan.limit else dataset.samples
        batches = batches_of(samples, plan.batch_sizes[name])
        done = store.load()
        method = self.method.for_dataset(plan.dataset_settings[name])
        gen_kwargs = {"max_new_tokens": plan.max_new_tokens, "min_new_tokens": MIN_NEW_TOKENS,
                      "do_sample": False, "method": method_record(self.method_name, method)}
        mine = [b for i, b in enumerate(batches) if self.dist.owns(i)]
        todo = [b for b in mine if any(s.sample_id not in done for s in b)]
        n_mine = sum(len(b) for b in mine)
        n_todo = sum(len(b) for b in todo)
        overall.update(n_mine - n_todo)
        if todo:
            bar = tqdm(total=n_mine, initial=n_mine - n_todo, desc=name, unit="sample", leave=False,
                       dynamic_ncols=True, disable=not self.dist.is_main, position=1)
            with store.appender(self.dist.rank) as out:
                for batch in todo:
                    records = self.run_batch(dataset, batch, done, method, gen_kwargs)
                    out.append(records)
                    for r in records:
                        done[r["sample_id"]] = r
                    bar.update(len(batch))
                    overall.update(len(batch))
            bar.close()
        self.dist.barrier()
        if self.dist.is_main:
            self.finish_dataset(dataset, store, folder)
            if self.cfg.get("fidelity", False):
                self.write_fidelity(dataset, folder, method)

    def finish_dataset(self, dataset: DatasetFile, store: PredictionStore, folder: Path) -> None:
        """Merge every process's predictions into pred.json (sample order) and score it."""
        up_to_date = store.is_final() and not store.partial_dir.exists() and (folder / EVAL_FILE).is_file()
        if up_to_date:
            return
        done = store.load()
        records = store.finalize([s.sample_id for s in dataset.samples], done)
        if not records:
            tqdm.write(f"{dataset.name}: no prediction (every sample failed); not scored")
            return
        result = score_dataset(folder, dataset=dataset, predicted_only=True)
        tqdm.write(f"{dataset.name}: {result.metric} {100 * result.value:.1f} over {len(records)} samples")


    # -- label-free fidelity (fidelity=true) -------------------------------------------------
    def write_fidelity(self, dataset: DatasetFile, folder: Path, method: Any) -> None:
        """<D>/fidelity.json: the method against the full cache on the predicted samples
        (csp/analysis/fidelity.py); kept when it already covers exactly those samples."""
        from csp.analysis.fidelity import collect_fidelity, recorded_ids

        predicted = PredictionStore(folder).load()
        path = folder / FIDELITY_FILE
        if not predicted or recorded_ids(path) == set(predicted):
            return
        self.ensure_model()
        samples = [s for s in dataset.samples if s.sample_id in predicted]

        def batches():
            for batch in tqdm(batches_of(samples, self.plan.batch_sizes[dataset.name]), unit="batch",
                              desc=f"{dataset.name} fidelity", leave=False, dynamic_ncols=True, position=1):
                ready = self.prepare(dataset, batch)
                if ready:
                    yield [s.sample_id for s, _, _ in ready], self.encode(ready)

        record = collect_fidelity(self.adapter, batches(), method, max_new_tokens=self.plan.max_new_tokens,
                                  min_new_tokens=MIN_NEW_TOKENS, meta={"method": method_record(self.method_name, method)})
        write_atomic(path, json.dumps(record, indent=2) + "\n")
        summary = record["summary"]
        tqdm.write(f"{dataset.name}: fidelity KL {summary['kl']:.4f}, top-1 {100 * summary['top1']:.1f}%")


def load_datasets(runner: Runner) -> list[DatasetFile]:
    """Every planned dataset, loaded before the model is; a dataset that cannot be read is
    raised or, with on_error=skip, logged and left out. Images are checked up front only when
    a bad one would stop the run anyway (on_error=raise)."""
    plan = runner.plan
    loaded = []
    for name in plan.datasets:
        try:
            loaded.append(load_dataset(plan.data_dir, name, adversarial=bool(runner.cfg.adversarial),
                                       check_images=plan.on_error == "raise"))
        except DataError as e:
            runner.fail(name, None, e)
    return loaded


def resolved_config(cfg: DictConfig, plan: RunPlan) -> dict[str, Any]:
    """The config as saved in the run folder and compared on a rerun: dtype and prefill as
    resolved for this device (`auto` means bfloat16 and batched on CUDA, float32 and
    per_sample on the CPU), so a folder started on one device is not silently continued in
    another precision on the next."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    data["run_name"] = plan.run_name
    data["dtype"], data["prefill"] = plan.dtype, plan.prefill
    return data


def run(
    cfg: DictConfig,
    *,
    method_name: str | None = None,
    overrides: Iterable[str] = (),
    generate_fn: GenerateFn | None = None,
    load_adapter: Callable[..., Any] | None = None,
) -> Path:
    """Run the configured benchmark and return the run folder.

    method_name: the method's config name (`method=<name>`), used in the derived run name.
    overrides: the command-line overrides, so sweep jobs get distinct run names.
    generate_fn: the generation function; the engine's greedy decoding by default.
    load_adapter: (model_cfg, dtype, device, attn_implementation) -> adapter;
        `milebench.runner.models.adapter_from_config` by default.
    """
    check_budget(cfg)  # the top-level fields every method interpolates, named as the user wrote them
    method = instantiate_method(cfg.method)
    method_name = method_name or getattr(type(method), "name", type(method).__name__.lower())
    plan = make_plan(cfg, method, method_name, list(overrides))
    resolved = resolved_config(cfg, plan)
    check_run_folder(plan.run_dir, resolved)

    dist = dist_mod.init(plan.device)
    try:
        if plan.generate_data:
            if dist.is_main:
                if plan.generate_data == "learnable":
                    from milebench.learnable import ensure_learnable as ensure
                else:
                    from milebench.synthetic import ensure_synthetic as ensure
                ensure(plan.data_dir)
            dist.barrier()
        if dist.is_main:
            write_atomic(plan.run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(resolved)))
        if generate_fn is None:
            from csp.engine.decode import greedy_generate as generate_fn
        if load_adapter is None:
            from milebench.runner.models import adapter_from_config as load_adapter
        runner = Runner(cfg=cfg, plan=plan, method=method, method_name=method_name, dist=dist,
                        generate=generate_fn, load_adapter=load_adapter)
        datasets = load_datasets(runner)

        total = 0
        for d in datasets:
            n = len(d.samples[: plan.limit] if plan.limit else d.samples)
            bs = plan.batch_sizes[d.name]
            total += sum(min(bs, n - i * bs) for i in range((n + bs - 1) // bs) if dist.owns(i))
        with tqdm(total=total, desc=f"{cfg.model.name}/{plan.run_name}", unit="sample", dynamic_ncols=True,
                  disable=not dist.is_main, position=0) as overall:
            for d in datasets:
                runner.run_dataset(d, overall)
        dist.barrier()
        if runner.errors is not None:
            runner.errors.close()
    finally:
        dist_mod.shutdown()
    return plan.run_dir
