"""Where a trained stand-in lives: its recipe beside its weights, and an atomic save.

Both trained stand-ins (proxy_llava.py, llava_standin.py) store the recipe that decided their
weights in a JSON file beside them, reuse a folder only when that recipe matches, and build a
new one beside the old and rename it into place (milebench.files.build_folder_atomic), so a
reader never sees half a checkpoint.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from milebench.files import build_folder_atomic


def recipe_json(recipe: Any) -> dict:
    """The recipe as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(asdict(recipe)))


def is_current(folder: Path, recipe: Any, recipe_file: str) -> bool:
    try:
        saved = json.loads((Path(folder) / recipe_file).read_text())
    except (OSError, ValueError):
        return False
    return saved.get("recipe") == recipe_json(recipe)


def save_trained(out: Path, recipe: Any, recipe_file: str, train: Callable[[], tuple[Any, Any, dict]]) -> Path:
    """Run `train` (-> model, processor, stats) and save its result atomically into `out`
    (milebench.files.build_folder_atomic); a concurrent build that wins the rename must hold
    this recipe."""

    def build(tmp: Path) -> None:
        model, processor, stats = train()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / recipe_file).write_text(json.dumps({"recipe": recipe_json(recipe), "stats": stats},
                                                  indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private

    return build_folder_atomic(out, build, installed=lambda folder: is_current(folder, recipe, recipe_file))
