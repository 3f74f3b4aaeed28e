"""Methods by their config name, built the way a run builds them.

A run composes `configs/method/<name>.yaml` (whose defaults list pulls in the shared budget
node, `configs/shared/budget.yaml`, and for LOOK-M's variants `configs/shared/lookm.yaml`)
with the top-level budget fields through Hydra (`_target_` is the registry). Benchmarks,
analyses and tests build the same object from the same composition here, so they measure
exactly what a run uses, and a bad value is a ConfigError.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from csp.engine.method import ConfigError, KVPruner

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHOD_CONFIGS = CONFIGS / "method"


def method_names() -> list[str]:
    return sorted(p.stem for p in METHOD_CONFIGS.glob("*.yaml"))


def method_config_path(name: str) -> Path:
    path = METHOD_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return path


def method_config(name: str) -> dict[str, Any]:
    """The method node as `method=<name>` composes it (defaults list applied), with its
    interpolations of the top-level budget fields left unresolved."""
    method_config_path(name)  # an unknown name lists the known ones
    return _composed_methods()[name]


@lru_cache(maxsize=1)
def _composed_methods() -> dict[str, dict[str, Any]]:
    """Every method config composed once, in one Hydra context (a composition costs ~0.1 s)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def node(name: str) -> dict[str, Any]:
        return OmegaConf.to_container(compose("config", overrides=[f"method={name}"]).method, resolve=False)

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or a test's compose context
        return {name: node(name) for name in method_names()}
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return {name: node(name) for name in method_names()}


def method_class(name: str) -> type[KVPruner]:
    """The class a method's config instantiates (its `_target_`), without building it."""
    from hydra.utils import get_class

    path = method_config_path(name)
    target = method_config(name).get("_target_")
    if not target:
        raise ConfigError(f"{path}: no _target_")
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, KVPruner)):
        raise ConfigError(f"{path}: _target_ {target} is not a KVPruner")
    return cls


@dataclass(frozen=True)
class MethodInfo:
    """What tables and tests need to know about a method, from the method itself."""

    name: str
    display_name: str
    table_label: str | None
    budget_rule: str


@lru_cache(maxsize=None)
def method_info(name: str) -> MethodInfo:
    """Its class's (or, for variants of one class such as LOOK-M's, its configured object's)
    display name, paper row label and budget rule."""
    method = build_method(name)
    return MethodInfo(name, method.display_name or name, method.table_label, method.budget_rule)


def instantiate_method(method_cfg: Mapping[str, Any]) -> KVPruner:
    """Hydra's instantiate, with the method's own ConfigError (not Hydra's wrapper) on bad values."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if "_target_" not in method_cfg:
        raise ConfigError("method config has no _target_; choose a method with `method=<name>`")
    try:
        return instantiate(method_cfg)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"method {method_cfg['_target_']}: {cause}") from None


def build_method(name: str, budget: float = 0.2, recent_ratio: float = 0.1,
                 budget_tokens: int | None = None) -> KVPruner:
    """`method=<name> budget=... recent_ratio=... budget_tokens=...` as a run composes it."""
    cfg = OmegaConf.create({"budget": budget, "recent_ratio": recent_ratio, "budget_tokens": budget_tokens,
                            "method": method_config(name)})
    return instantiate_method(cfg.method)
