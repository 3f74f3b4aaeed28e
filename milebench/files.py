"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half.

Every result the harness writes (predictions, scores, tables, figures) goes through here,
so durability is decided once: the new file is written beside its target, fsynced, renamed
over it, and the folder is fsynced so the rename itself survives a crash.

The names of a run's files are defined here too, once: the runner writes them and the
scorer, the tables and the scripts find a run's state by them, so a name spelt twice could
let one side stop seeing the other's files without any error.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# <output_dir>/<model>/<run_name>/
CONFIG_FILE = "config.yaml"  # the resolved config; a rerun into the folder must match it
ERRORS_FILE = "errors.jsonl"  # samples skipped with on_error=skip (its presence: a run of a subset)

# <run>/<D>/, in MileBench's formats where MileBench has the file
PRED_FILE = "pred.json"
EVAL_FILE = "eval.json"  # written last by the scorer: its presence marks a scored dataset
EVAL_SCORE_FILE = "eval_score.json"  # per-sample scores
EXTRACTED_FILE = "pred_with_extracted.json"  # multiple choice: the option each answer resolved to
ROUGE_SCORE_FILE = "eval_rouge_score.json"  # ROUGE-L datasets: Google's rouge-score, an extra figure
CONTENT_EM_FILE = "eval_content_em.json"  # ROUGE-L datasets: content-word exact match, an extra figure
FIDELITY_FILE = "fidelity.json"  # fidelity=true: the method against the full cache (csp/analysis/fidelity.py)
CORRECTED_SUFFIX = "_corrected"  # --corrected writes its own files and never touches the faithful ones


def corrected_name(name: str) -> str:
    """The corrected mode's file for a result file (`eval.json` -> `eval_corrected.json`)."""
    path = Path(name)
    return f"{path.stem}{CORRECTED_SUFFIX}{path.suffix}"


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that go by the extension, like
    matplotlib, still do); it replaces `path` when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` by `data` (text is written as UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def build_folder_atomic(target: Path | str, build: Callable[[Path], object],
                        installed: Callable[[Path], bool] = Path.exists) -> Path:
    """`build(tmp)` fills a temporary sibling of `target`, which is then renamed over it, so a
    reader never sees half a folder. Concurrent builders may race: the last rename wins, a
    lost race is no error when the winner's folder passes `installed` (by default: it exists),
    and every leftover is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    stale = target.parent / f"{tmp.name}-stale"
    try:
        build(tmp)
        if target.exists():
            try:
                os.replace(target, stale)
            except OSError:
                pass  # another process is already swapping it
        try:
            os.replace(tmp, target)
        except OSError:
            if not installed(target):  # a real failure, not a lost race
                raise
    finally:
        for leftover in (tmp, stale):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target
