"""The packages' import order, read from the source (imports inside functions count too):
csp (engine, models, methods' base) knows nothing of MileBench; the trained stand-ins
(standins/) use MileBench's data and prompts but never the runner, which builds them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {name}"
            for p in sorted((ROOT / package).rglob("*.py"))
            for name in sorted(imported(p)) if name == forbidden or name.startswith(forbidden)]


@pytest.mark.parametrize("package, forbidden", [
    ("csp", ("milebench", "standins", "baselines")),
    ("baselines", ("milebench", "standins")),
    ("standins", ("milebench.runner",)),
])
def test_no_package_imports_one_above_it(package, forbidden) -> None:
    assert offenders(package, forbidden) == []


def test_the_check_sees_imports_inside_functions(tmp_path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from milebench.runner.loop import run\n    import milebench.data\n")
    assert imported(src) == {"milebench.runner.loop", "milebench.data"}
