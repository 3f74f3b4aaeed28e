"""The 29 MileBench datasets, declared once as data.

Every other module (loader, prompt builder, scorer, runner, table builder) asks this one
for names, groups, metrics and batch sizes; no other file lists the datasets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scoring = Literal["choice", "rouge", "needle", "substring"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # exact directory name under the data dir
    group: str  # T-1 .. T-4, S-1 .. S-5, NH, IR
    question_type: Literal["multi-choice", "open-ended"]
    scoring: Scoring  # how MileBench's evaluation routes this dataset
    num_samples: int
    batch_size: int  # the paper's batch size
    lettered_choices: bool = True  # GPR1200 lists its options bare, without "A. " letters

    @property
    def metric(self) -> str:
        """The key MileBench writes in eval.json."""
        return "Rouge-L f" if self.scoring == "rouge" else "Accuracy"


GROUPS: dict[str, str] = {
    "T-1": "Action understanding and prediction",
    "T-2": "Object and scene understanding",
    "T-3": "Visual navigation and spatial localization",
    "T-4": "Counterfactual reasoning and state change",
    "S-1": "Knowledge-grounded QA",
    "S-2": "Text-rich images QA",
    "S-3": "Visual relation inference",
    "S-4": "Dialogue",
    "S-5": "Space understanding",
    "NH": "Needle in a haystack",
    "IR": "Image retrieval",
}
REALISTIC_GROUPS = ("T-1", "T-2", "T-3", "T-4", "S-1", "S-2", "S-3", "S-4", "S-5")
DIAGNOSTIC_GROUPS = ("NH", "IR")


def _mc(name: str, group: str, n: int = 200, bs: int = 24, letters: bool = True) -> DatasetInfo:
    return DatasetInfo(name, group, "multi-choice", "choice", n, bs, letters)


def _open(name: str, group: str, scoring: Scoring, n: int = 200, bs: int = 24) -> DatasetInfo:
    return DatasetInfo(name, group, "open-ended", scoring, n, bs)


DATASETS: tuple[DatasetInfo, ...] = (
    _mc("ActionLocalization", "T-1"),
    _mc("ActionPrediction", "T-1"),
    _mc("ActionSequence", "T-1"),
    _mc("ObjectExistence", "T-2"),
    _mc("ObjectInteraction", "T-2"),
    _mc("MovingAttribute", "T-2"),
    _mc("ObjectShuffle", "T-2"),
    _mc("EgocentricNavigation", "T-3"),
    _mc("MovingDirection", "T-3"),
    _mc("CounterfactualInference", "T-4"),
    _mc("StateChange", "T-4"),
    _mc("CharacterOrder", "T-4"),
    _mc("SceneTransition", "T-4"),
    _mc("WebQA", "S-1"),
    _mc("TQA", "S-1"),
    _mc("MultiModalQA", "S-1"),
    _mc("WikiVQA", "S-1"),
    _mc("SlideVQA", "S-2"),
    _mc("OCR-VQA", "S-2"),
    _mc("DocVQA", "S-2"),
    _open("Spot-the-Diff", "S-3", "rouge"),
    _open("CLEVR-Change", "S-3", "rouge"),
    _open("IEdit", "S-3", "rouge"),
    _open("MMCoQA", "S-4", "substring", bs=1),
    _open("ALFRED", "S-4", "rouge"),
    _mc("nuscenes", "S-5"),
    _open("TextNeedleInAHaystack", "NH", "needle", n=320, bs=1),
    _open("ImageNeedleInAHaystack", "NH", "needle", n=320, bs=1),
    _mc("GPR1200", "IR", n=600, bs=1, letters=False),
)
NAMES: tuple[str, ...] = tuple(d.name for d in DATASETS)

# The proxy task set (milebench/proxy.py): generated tasks that a tiny trained model solves,
# so that pruning methods separate offline. Kept out of DATASETS, NAMES and GROUPS, so the 29
# datasets, their task groups and every table built on them stay exactly as they are; the
# names are known to BY_NAME and get(), hence to the loader, the runner and the scorer. A data
# dir holding PROXY_MARKER is a proxy copy: there `datasets=all` means PROXY_NAMES.
PROXY_GROUP = "proxy"
PROXY_MARKER = "PROXY.json"
PROXY_DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo("ProxyVisualNeedle", PROXY_GROUP, "multi-choice", "choice", 25, 8),
    DatasetInfo("ProxyCrossModal", PROXY_GROUP, "multi-choice", "choice", 25, 8),
    DatasetInfo("ProxyTemporal", PROXY_GROUP, "multi-choice", "choice", 25, 8),
    DatasetInfo("ProxyMultiTurn", PROXY_GROUP, "multi-choice", "choice", 25, 8),
    DatasetInfo("ProxyTextNeedle", PROXY_GROUP, "open-ended", "rouge", 25, 8),
    DatasetInfo("ProxyImageDiff", PROXY_GROUP, "open-ended", "rouge", 25, 8),
)
PROXY_NAMES: tuple[str, ...] = tuple(d.name for d in PROXY_DATASETS)
BY_NAME: dict[str, DatasetInfo] = {d.name: d for d in (*DATASETS, *PROXY_DATASETS)}


def get(name: str) -> DatasetInfo:
    """Look a dataset up by its exact name; an unknown name lists the valid ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown MileBench dataset {name!r}; valid names: {', '.join(NAMES)}") from None


def in_group(group: str) -> tuple[DatasetInfo, ...]:
    if group == PROXY_GROUP:
        return PROXY_DATASETS
    if group not in GROUPS:
        raise KeyError(f"unknown task group {group!r}; valid groups: {', '.join(GROUPS)}")
    return tuple(d for d in DATASETS if d.group == group)


def image_quantity_level(num_images: int) -> str:
    """MileBench's buckets: Few (< 6), Medium (6 to 31), Many (> 31)."""
    if num_images < 6:
        return "Few"
    return "Medium" if num_images <= 31 else "Many"
