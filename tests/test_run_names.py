"""Derived run names against what decides a run's predictions.

The truth is the method object a run builds from the composed config (Hydra's `_target_`,
as `milebench.run` does) and the budget it splits for a prompt: two command lines whose
methods differ, or whose budgets split any prompt differently, must never share a derived
run folder; sweeps and reports rely on it. The name is never compared with a second copy of
its own rule.
"""
from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from csp.engine.method import ConfigError
from csp.engine.registry import CONFIGS, instantiate_method, method_config, method_names
from milebench.runner.settings import derive_run_name

BUDGET_FIELDS = ("budget", "recent_ratio", "budget_tokens")
# another valid value for each string field of a method config
OTHER_STRING = {"pooling": "max", "combine": "union", "score_fn": "softmax", "rank": "all", "heads": "group"}
OTHER_NONE = {"window": 3, "cross_ratio": 0.3, "bias": 1.5}
LENGTHS = range(1, 400)


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def other_value(field: str, value):
    """A different value of the same kind, valid for the method (checked by building it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2  # kernels stay odd
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if value is None:
        return OTHER_NONE[field]
    if field == "merge":
        return "weighted" if value == "average" else "average"
    return OTHER_STRING[field]


def method_fields(name: str) -> dict:
    return {k: v for k, v in method_config(name).items() if k != "_target_" and k not in BUDGET_FIELDS}


def command_lines(name: str) -> list[list[str]]:
    """Budget settings (with their fractional and degenerate cases) and one change of every
    method field, each a command line a sweep could run."""
    budgets = [[], ["budget=0.1"], ["budget=0.3"], ["recent_ratio=0.05"], ["recent_ratio=0"],
               ["budget_tokens=64"], ["budget_tokens=64", "budget=0.4"], ["budget_tokens=64", "recent_ratio=0.05"],
               ["budget_tokens=1"], ["budget=0.3", "recent_ratio=0.2"]]
    fields = [[f"method.{k}={v2}"] for k, v in method_fields(name).items()
              for v2 in [other_value(k, v)]]
    return [[f"method={name}", *b] for b in budgets] + [[f"method={name}", *f] for f in fields]


def built(base, overrides: list[str]):
    """The composed config with the overrides merged (plain values, as Hydra merges them) and
    the method a run instantiates from it."""
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([o for o in overrides if not o.startswith("method=")]))
    return cfg, instantiate_method(cfg.method)


def budget_signature(method) -> tuple:
    """What the budget fields decide: the (selected, recent) split of every prompt length."""
    return tuple((b.selected, b.recent) for b in map(method.split_budget, LENGTHS))


@pytest.mark.parametrize("name", [n for n in method_names() if n != "full"])
def test_commands_that_build_different_methods_get_different_run_names(name) -> None:
    base = compose_cfg(f"method={name}")
    seen: dict[str, tuple] = {}
    for overrides in command_lines(name):
        try:
            cfg, method = built(base, overrides)
        except ConfigError:  # refused before any run folder is named (SnapKV without a window)
            continue
        run = derive_run_name(name, cfg, overrides)
        truth = (method, budget_signature(method))
        if run in seen:
            assert seen[run] == truth, f"{overrides} shares run folder {run!r} with a different method"
        seen[run] = truth
    # and each change of a method field shows its field and value in the name
    for key, value in method_fields(name).items():
        new = other_value(key, value)
        overrides = [f"method={name}", f"method.{key}={new}"]
        cfg, method = built(base, overrides)
        assert method != built(base, [f"method={name}"])[1], key  # the field reaches the method
        assert f",{key}={new}" in derive_run_name(name, cfg, overrides) or f"{key}={new}," in derive_run_name(
            name, cfg, overrides)


def test_the_recent_share_with_budget_tokens_is_named() -> None:
    # budget_tokens 64: R = int(64 * 0.1 / 0.2) = 32, but int(64 * 0.1 / 0.4) = 16 with budget 0.4
    cfg_a, a = built(compose_cfg("method=h2o"), ["budget_tokens=64"])
    cfg_b, b = built(compose_cfg("method=h2o"), ["budget_tokens=64", "budget=0.4"])
    assert a.split_budget(500).recent == 32 and b.split_budget(500).recent == 16
    assert derive_run_name("h2o", cfg_a, ["budget_tokens=64"]) == "h2o_t64"
    assert derive_run_name("h2o", cfg_b, ["budget_tokens=64", "budget=0.4"]) == "h2o_t64,budget=0.4"


@pytest.mark.parametrize("overrides, expected", [
    (["ratios=paper-7b"], "csp_b0.2,ratios=paper-7b"),
    (["adversarial=true"], "csp_b0.2,adversarial=true"),
    (["combine_image=true"], "csp_b0.2,combine_image=true"),
    (["budget=0.1", "recent_ratio=0.05"], "csp_b0.1,recent_ratio=0.05"),
    (["limit=3", "datasets=[WebQA]", "output_dir=x", "budget=0.2"], "csp_b0.2"),  # no effect on a prediction
])
def test_run_level_settings_that_change_predictions_are_named(overrides, expected) -> None:
    cfg = compose_cfg("method=csp", *overrides)
    assert derive_run_name("csp", cfg, ["method=csp", *overrides]) == expected


def test_two_fields_never_merge_into_one_name() -> None:
    # every pair of single-field changes of CSP gives a name of its own
    names = [derive_run_name("csp", compose_cfg("method=csp"), ["method=csp", f"method.{k}={other_value(k, v)}"])
             for k, v in method_fields("csp").items()]
    assert all(a != b for a, b in itertools.combinations(names, 2))
