"""Check a composed run configuration and turn it into a plan, before any model is loaded.

Every value that can be wrong is checked here, so a typo costs a second, not a model load:
dataset names, budget, ratio table, batch size, dtype, device, data dir, on_error. Errors are
`RunConfigError` (a `csp.engine.method.ConfigError`) with the field name and the bad value.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from csp.engine.method import ConfigError, check_budget_fields
from milebench import catalog
from milebench.runner import ratios

# The generated copies, (re)built when named and absent: the default one (format edge cases,
# milebench/synthetic.py) and the learnable one (milebench/learnable.py, the stand-in's).
GENERATED_DATA = {"synthetic": Path("data/milebench-synthetic"), "learnable": Path("data/milebench-learnable")}
DEFAULT_DATA_DIR = GENERATED_DATA["synthetic"]
ON_ERROR = ("raise", "skip")
PREFILL = ("auto", "batched", "per_sample")

# Fields that may change between two runs into the same run folder: they select which
# samples run, or where, but never change a prediction. Every other field must match, dtype
# and prefill as RESOLVED (their `auto` depends on the device, which may change).
RESOLVED_FIELDS = ("dtype", "prefill")
RESUMABLE_FIELDS = ("datasets", "limit", "output_dir", "run_name", "on_error", "device", "fidelity")

# Overrides that name a run differently when `run_name` is not given (sweeps over them
# must not share a folder): every method field (by prefix) and these top-level fields.
NAMING_PREFIXES = ("method.",)
NAMING_FIELDS = ("budget", "recent_ratio", "budget_tokens", "ratios", "adversarial", "combine_image")


class RunConfigError(ConfigError):
    """A run configuration that cannot work; raised before any model loads."""


@dataclass(frozen=True)
class RunPlan:
    """Everything the loop needs, checked and resolved (`auto` already decided for this device),
    so nothing after `make_plan` can fail on a config value."""

    datasets: tuple[str, ...]
    data_dir: Path
    generate_data: str | None  # a generated copy (a key of GENERATED_DATA): (re)built when absent or stale
    run_name: str
    run_dir: Path
    batch_sizes: Mapping[str, int]
    dataset_settings: Mapping[str, Mapping[str, float]]  # ratio-table entry per dataset
    limit: int | None
    max_new_tokens: int
    on_error: str
    device: str
    dtype: str
    prefill: str  # batched | per_sample (resolved)


def select_datasets(spec: Any, all_names: Sequence[str] = catalog.NAMES) -> tuple[str, ...]:
    """`all` (`all_names`: the 29 datasets, or the proxy set in a proxy data dir), a task
    group, a dataset name, a comma-separated string or a list of those; duplicates removed,
    first mention wins."""
    if isinstance(spec, (ListConfig, list, tuple)):
        items = [str(x) for x in spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        raise RunConfigError(f"datasets={spec!r}: expected 'all', a task group, a name or a list of them")
    if not items:
        raise RunConfigError("datasets is empty: give 'all', a task group (T-1 .. S-5, NH, IR) or names")
    names: list[str] = []
    for item in items:
        if item == "all":
            names += all_names
        elif item in catalog.GROUPS:
            names += [d.name for d in catalog.in_group(item)]
        elif item in catalog.BY_NAME:
            names.append(item)
        else:
            raise RunConfigError(
                f"datasets: unknown dataset or group {item!r}; valid groups: {', '.join(catalog.GROUPS)}; "
                f"valid names: {', '.join(catalog.NAMES)}")
    return tuple(dict.fromkeys(names))


def _number(cfg: DictConfig, key: str, *, integer: bool = False, allow_none: bool = False) -> Any:
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or (not integer and not math.isfinite(value)):
        raise RunConfigError(f"{key}={value!r} must be {'an integer' if integer else 'a number'}")
    return value


def check_budget(cfg: DictConfig) -> None:
    """The top-level budget fields, checked before the method is built: every method
    interpolates them, so an error here names the field as the user wrote it."""
    budget = _number(cfg, "budget")
    recent = _number(cfg, "recent_ratio")
    tokens = _number(cfg, "budget_tokens", integer=True, allow_none=True)
    try:
        check_budget_fields(budget, recent, tokens)
    except ConfigError as e:
        raise RunConfigError(str(e)) from None


def resolve_device(device: str) -> str:
    """`auto` as CUDA when there is one, else the CPU; an explicit CUDA device that is absent
    fails here rather than at model load."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(device)):
        raise RunConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:N")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RunConfigError(f"device={device!r} but no CUDA device is available")
    return str(device)


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` as bfloat16 on CUDA and float32 on the CPU. The valid names are the model loader's
    (csp.models.adapters.DTYPES), so a name accepted here is one the loader knows."""
    from csp.models.adapters import DTYPES

    names = ("auto", *DTYPES)
    if dtype not in names:
        raise RunConfigError(f"dtype={dtype!r}: expected one of {', '.join(names)}")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def resolve_prefill(prefill: str, device: str) -> str:
    """`auto` as batched on a GPU and per_sample on the CPU, where attention over a padded batch
    is several times slower than plain causal attention; the predictions are the same."""
    if prefill not in PREFILL:
        raise RunConfigError(f"prefill={prefill!r}: expected one of {', '.join(PREFILL)}")
    if prefill == "auto":
        return "batched" if device.startswith("cuda") else "per_sample"
    return prefill


def derive_run_name(method_name: str, cfg: DictConfig, overrides: Iterable[str] = ()) -> str:
    """`<method>_b<budget>` (or `_t<tokens>`; the full cache is just `full`) plus every
    result-changing command-line override the head does not already say, so each job of a
    sweep gets its own folder: `csp_b0.2,cross_ratio=0.3`. With `budget_tokens` the fraction
    `budget` still sets the recent window's share, so `budget=` then stays in the name."""
    tokens = cfg.get("budget_tokens")
    if method_name == "full":
        name = "full"
    elif tokens is not None:
        name = f"{method_name}_t{tokens}"
    else:
        name = f"{method_name}_b{cfg.budget:g}"
    said = {"budget_tokens"} if tokens is not None else {"budget"}
    extra = []
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and key not in said and (key in NAMING_FIELDS or key.startswith(NAMING_PREFIXES)):
            extra.append(f"{key.removeprefix('method.')}={value}")
    name = ",".join([name, *sorted(extra)])
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def fingerprint(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides predictions; two runs may share a folder
    only when these are equal."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in data.items() if k not in RESUMABLE_FIELDS and k != "hydra"}


def check_model(model: DictConfig, dtype: str, device: str, attn_implementation: str) -> None:
    """What can be known about a model config without loading it (csp.models.adapters' own checks,
    plus the fields the runner itself reads)."""
    from milebench.runner.models import check_model_config

    name = model.get("name")
    for key in ("name", "family", "max_context_len"):
        if model.get(key) in (None, ""):
            raise RunConfigError(f"model config {name!r}: field {key!r} is missing")
    try:
        check_model_config(model, dtype, device, attn_implementation)
    except (ValueError, FileNotFoundError) as e:
        raise RunConfigError(str(e)) from None


def generated_kind(data_dir: Path) -> str | None:
    """Which generated copy `data_dir` names (relative to the working folder or the
    repository), or None for someone's own data."""
    from milebench.learnable import DEFAULT_DIR as LEARNABLE
    from milebench.synthetic import DEFAULT_DIR as SYNTHETIC

    where = data_dir.resolve()
    for kind, path in GENERATED_DATA.items():
        if where in (path.resolve(), (LEARNABLE if kind == "learnable" else SYNTHETIC).resolve()):
            return kind
    return None


def make_plan(cfg: DictConfig, method: Any, method_name: str, overrides: Sequence[str] = ()) -> RunPlan:
    """Validate every top-level field and the method's per-dataset settings; no model, no data read."""
    for key in ("model", "method", "ratios"):
        if not isinstance(cfg.get(key), DictConfig):
            raise RunConfigError(f"config group {key!r} is missing: choose one with `{key}=<name>`")
    device = resolve_device(str(cfg.device))
    dtype = resolve_dtype(str(cfg.dtype), device)
    check_model(cfg.model, dtype, device, str(cfg.attn_implementation))
    check_budget(cfg)
    proxy_dir = (Path(str(cfg.data_dir)) / catalog.PROXY_MARKER).is_file()
    datasets = select_datasets(cfg.datasets, catalog.PROXY_NAMES if proxy_dir else catalog.NAMES)

    limit = _number(cfg, "limit", integer=True, allow_none=True)
    if limit is not None and limit < 1:
        raise RunConfigError(f"limit={limit} must be >= 1 (or null for every sample)")
    max_new = _number(cfg, "max_new_tokens", integer=True)
    if max_new < 1:
        raise RunConfigError(f"max_new_tokens={max_new} must be >= 1")
    prefill = resolve_prefill(str(cfg.get("prefill", "auto")), device)
    if cfg.on_error not in ON_ERROR:
        raise RunConfigError(f"on_error={cfg.on_error!r}: expected raise or skip")
    if not isinstance(cfg.get("fidelity", False), bool):
        raise RunConfigError(f"fidelity={cfg.get('fidelity')!r}: expected true or false")

    if cfg.batch_size == "auto":
        batch_sizes = {d: catalog.get(d).batch_size for d in datasets}
    else:
        bs = _number(cfg, "batch_size", integer=True)
        if bs < 1:
            raise RunConfigError(f"batch_size={bs} must be >= 1 or 'auto'")
        batch_sizes = {d: bs for d in datasets}

    table = OmegaConf.to_container(cfg.ratios, resolve=True)
    try:
        ratios.validate(table, "ratios")
    except ratios.RatioTableError as e:
        raise RunConfigError(str(e)) from None
    settings = {d: ratios.settings_for(table, d) for d in datasets}
    for d in datasets:  # the method checks the values it takes (e.g. CSP's cross ratio)
        try:
            method.for_dataset(settings[d])
        except ConfigError as e:
            raise RunConfigError(f"method {method_name} on dataset {d}: {e}") from None

    data_dir = Path(str(cfg.data_dir))
    generated = generated_kind(data_dir)
    if not data_dir.is_dir() and generated is None:
        raise RunConfigError(
            f"data_dir={str(data_dir)!r} does not exist (only the generated copies "
            f"{', '.join(str(p) for p in GENERATED_DATA.values())} are made when absent)")

    run_name = cfg.run_name or derive_run_name(method_name, cfg, overrides)
    if "/" in run_name or run_name in (".", ".."):
        raise RunConfigError(f"run_name={run_name!r} must be a single folder name")
    run_dir = Path(str(cfg.output_dir)) / str(cfg.model.name) / run_name
    return RunPlan(datasets=datasets, data_dir=data_dir, generate_data=generated, run_name=run_name,
                   run_dir=run_dir, batch_sizes=batch_sizes, dataset_settings=settings, limit=limit,
                   max_new_tokens=max_new, on_error=str(cfg.on_error), device=device, dtype=dtype,
                   prefill=prefill)
