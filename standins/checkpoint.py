"""Where a trained stand-in lives: its recipe beside its weights, and an atomic save.

Both trained stand-ins (proxy_llava.py, llava_standin.py) store the recipe that decided their
weights in a JSON file beside them, reuse a folder only when that recipe matches, and build a
new one beside the old and rename it into place, so a reader never sees half a checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable


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
    (built beside it, then renamed), like csp.models.tiny."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        model, processor, stats = train()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / recipe_file).write_text(json.dumps({"recipe": recipe_json(recipe), "stats": stats},
                                                  indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{out.name}.stale-", dir=out.parent))
            try:
                os.rename(out, stale / "old")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_current(out, recipe, recipe_file):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
