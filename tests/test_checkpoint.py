"""standins.checkpoint: a trained stand-in is saved with its recipe, atomically, and a build
that loses the rename race accepts only a winner trained from the same recipe."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from milebench import files
from standins import checkpoint


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    steps: tuple[int, ...] = (1, 2)


class Saves:
    def __init__(self, name: str):
        self.name = name

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / self.name).write_text(self.name)


def trained() -> tuple[Saves, Saves, dict]:
    return Saves("model.bin"), Saves("processor.json"), {"final_loss": 0.5}


def test_saved_folder_holds_weights_and_recipe(tmp_path: Path) -> None:
    out = checkpoint.save_trained(tmp_path / "m", Recipe(), "recipe.json", trained)
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "processor.json", "recipe.json"]
    assert json.loads((out / "recipe.json").read_text()) == {"recipe": {"seed": 0, "steps": [1, 2]},
                                                           "stats": {"final_loss": 0.5}}
    assert checkpoint.is_current(out, Recipe(), "recipe.json")
    assert not checkpoint.is_current(out, Recipe(seed=1), "recipe.json")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("winner_seed, lost_is_fine", [(0, True), (1, False)])
def test_a_lost_race_is_fine_only_to_the_same_recipe(tmp_path: Path, monkeypatch, winner_seed, lost_is_fine) -> None:
    """Another builder installs its folder just before ours is renamed into place."""
    out = tmp_path / "m"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out and not out.exists():
            out.mkdir()
            (out / "recipe.json").write_text(json.dumps({"recipe": checkpoint.recipe_json(Recipe(seed=winner_seed))}))
            raise OSError("Directory not empty")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    if lost_is_fine:
        assert checkpoint.save_trained(out, Recipe(), "recipe.json", trained) == out
    else:
        with pytest.raises(OSError, match="not empty"):
            checkpoint.save_trained(out, Recipe(), "recipe.json", trained)
    assert checkpoint.is_current(out, Recipe(seed=winner_seed), "recipe.json")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
