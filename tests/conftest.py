"""Shared fixtures: the tiny checkpoints are built once under models/ and loaded the real way."""
from __future__ import annotations

from pathlib import Path

import pytest

from csp.models import ModelAdapter, load_adapter
from csp.tiny import ensure_tiny_model


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
