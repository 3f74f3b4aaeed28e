"""Durable, resumable prediction files.

While a dataset runs, each process appends its predictions to `<D>/partial/rank<r>.jsonl`,
one JSON line per sample, flushed and fsynced before the next batch starts: a SIGKILL loses
at most the batch in flight. A torn last line (killed mid-write) is ignored when read and cut
off before the file is appended again. When every sample is done, `pred.json` is written
atomically (temp file, fsync, rename) in sample order and the partial files are removed.
A later run reads `pred.json` and the partial files to skip what is done.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from milebench.files import PRED_FILE, write_atomic

PARTIAL_DIR = "partial"


def read_complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON records of a JSONL file, stopping at a torn (unterminated) last line."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    for n, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not a JSON record ({e.msg}); "
                                 "the file was edited by hand or by another program") from None


class JsonlAppender:
    """Append-only JSONL with durability: every `append` is flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # cut a torn tail left by a kill, so new lines start clean
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
        self._file = open(path, "ab")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write `records` as one block and fsync before returning, so a kill after this call
        never loses them; an empty batch writes nothing."""
        blob = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        if not blob:
            return
        self._file.write(blob)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file; every appended line is already on disk, so this only frees the handle."""
        self._file.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionStore:
    """The predictions of one dataset of one run, across processes and reruns."""

    def __init__(self, dataset_dir: Path) -> None:
        self.dir = dataset_dir
        self.pred_path = dataset_dir / PRED_FILE
        self.partial_dir = dataset_dir / PARTIAL_DIR

    def is_final(self) -> bool:
        """Whether pred.json has been written: the merge ran at least once (a rerun with a larger
        `limit` may still add partial files beside it)."""
        return self.pred_path.is_file()

    def load(self) -> dict[int, dict[str, Any]]:
        """Every prediction recorded so far, by sample id (pred.json first, then partial files)."""
        done: dict[int, dict[str, Any]] = {}
        if self.pred_path.is_file():
            try:
                records = json.loads(self.pred_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.pred_path}: invalid JSON ({e.msg}); remove it to regenerate") from None
            for r in records:
                done.setdefault(int(r["sample_id"]), r)
        if self.partial_dir.is_dir():
            for part in sorted(self.partial_dir.glob("*.jsonl")):
                for r in read_complete_lines(part):
                    done.setdefault(int(r["sample_id"]), r)
        return done

    def appender(self, rank: int) -> JsonlAppender:
        """The partial file of process `rank`: one file per process, so no two ever append to
        the same file."""
        return JsonlAppender(self.partial_dir / f"rank{rank}.jsonl")

    def finalize(self, order: list[int], done: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """Write pred.json in `order` (the dataset's sample order) and drop the partial files.
        Samples absent from `done` (skipped on error) are left out."""
        records = [done[sid] for sid in order if sid in done]
        write_atomic(self.pred_path, json.dumps(records, ensure_ascii=False, indent=2) + "\n")
        if self.partial_dir.is_dir():
            shutil.rmtree(self.partial_dir)
        return records
