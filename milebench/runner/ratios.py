"""Per-dataset method settings (CSP's cross ratio and bias) from a ratio table.

A table is data (`configs/ratios/*.yaml`): a `default`, overrides per task group and per
dataset, resolved in that order. Tables name datasets and groups, so they are checked against
the catalog: a typo would otherwise silently fall back to the default.
"""
from __future__ import annotations

from typing import Any, Mapping

from milebench import catalog

FIELDS = ("cross_ratio", "bias")


class RatioTableError(ValueError):
    """A ratio table with an unknown dataset, group or field, or a value out of range."""


def _check_entry(entry: Any, where: str) -> dict[str, float]:
    if entry is None:
        return {}
    if not isinstance(entry, Mapping):
        raise RatioTableError(f"{where} must be a mapping like {{cross_ratio: 0.5, bias: 1.0}}, got {entry!r}")
    out: dict[str, float] = {}
    for key, value in entry.items():
        if key not in FIELDS:
            raise RatioTableError(f"{where}: unknown field {key!r}; valid fields: {', '.join(FIELDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RatioTableError(f"{where}.{key} must be a number, got {value!r}")
        if key == "cross_ratio" and not 0.0 <= value <= 1.0:
            raise RatioTableError(f"{where}.cross_ratio={value} is out of [0, 1]")
        if key == "bias" and not value > 0:
            raise RatioTableError(f"{where}.bias={value} must be > 0")
        out[key] = float(value)
    return out


def validate(table: Mapping[str, Any], name: str = "ratios") -> None:
    """Raise RatioTableError naming the entry at fault; run before any model loads, so a
    misspelt dataset or group fails at once instead of falling back to the default."""
    unknown = set(table) - {"default", "groups", "datasets"}
    if unknown:
        raise RatioTableError(f"{name}: unknown keys {sorted(unknown)}; expected default, groups, datasets")
    _check_entry(table.get("default"), f"{name}.default")
    for group, entry in (table.get("groups") or {}).items():
        if group not in catalog.GROUPS:
            raise RatioTableError(f"{name}.groups: unknown task group {group!r}; valid: {', '.join(catalog.GROUPS)}")
        _check_entry(entry, f"{name}.groups.{group}")
    for dataset, entry in (table.get("datasets") or {}).items():
        if dataset not in catalog.BY_NAME:
            raise RatioTableError(
                f"{name}.datasets: unknown dataset {dataset!r}; valid: {', '.join(catalog.NAMES)}")
        _check_entry(entry, f"{name}.datasets.{dataset}")


def settings_for(table: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """The merged entry for one dataset: default, then its group, then the dataset itself."""
    group = catalog.get(dataset).group
    merged: dict[str, float] = {}
    merged.update(_check_entry(table.get("default"), "default"))
    merged.update(_check_entry((table.get("groups") or {}).get(group), f"groups.{group}"))
    merged.update(_check_entry((table.get("datasets") or {}).get(dataset), f"datasets.{dataset}"))
    return merged
