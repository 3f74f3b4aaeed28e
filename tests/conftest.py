"""Shared fixtures: the tiny checkpoints are built once under models/ and loaded the real way."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from csp.models.adapters import ModelAdapter, load_adapter
from csp.models.tiny import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_llava_path() -> Path:
    return ensure_tiny_model("llava")


@pytest.fixture(scope="session")
def tiny_internvl_path() -> Path:
    return ensure_tiny_model("internvl")


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_path: Path) -> ModelAdapter:
    return load_adapter("llava", str(tiny_llava_path), dtype="float32", device="cpu", attn_implementation="sdpa")


@pytest.fixture(scope="session")
def tiny_internvl(tiny_internvl_path: Path) -> ModelAdapter:
    return load_adapter("internvl", str(tiny_internvl_path), dtype="float32", device="cpu", attn_implementation="sdpa")


@pytest.fixture(scope="session")
def tiny_mobilevlm() -> ModelAdapter:
    """MobileVLM-V2's tiny twin, written in its authors' layout and loaded as the real one is."""
    return load_adapter("mobilevlm", str(ensure_tiny_model("mobilevlm")), attn_implementation="sdpa")


@pytest.fixture(scope="session")
def tiny_internvl_chat() -> ModelAdapter:
    """InternVL-Chat-1.0's tiny twin (InternViT tower in its own folder), loaded as the real one is."""
    return load_adapter("internvl-chat", str(ensure_tiny_model("internvl-chat")), attn_implementation="sdpa")


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py as a module, so tests call its functions and main()."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """`load_script("bench_efficiency")`: a script of scripts/ imported as a module."""
    return _load_script
