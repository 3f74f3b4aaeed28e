"""Fetch the real MileBench (six tarballs on the Hugging Face hub, about 17 GB) and unpack
it into the layout the loader reads: `<out>/<D>/<D>.json`, `<out>/<D>/images/...`.

Both halves resume: `huggingface_hub` continues a partial download, and unpacking skips
files already written in full (each file is written to a temporary name and renamed, so a
file with the right size is a finished one). A part is marked done only after it is fully
unpacked, so an interrupted run is simply started again.

    python -m milebench.download --out data/MileBench [--parts 0 1 2] [--delete-archives]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from milebench import catalog

REPO_ID = "FreedomIntelligence/MileBench"
PARTS = tuple(f"MileBench_part{i}.tar.gz" for i in range(6))
ARCHIVE_DIR = ".archives"
DONE_DIR = ".unpacked"


class UnpackError(RuntimeError):
    """An archive that cannot be unpacked safely (a member escaping the target, a broken file)."""


def target_path(member_name: str) -> PurePosixPath | None:
    """Where a tar member lands, relative to the output folder: everything before the first
    dataset folder (e.g. a leading `MileBench/`) is dropped. None for members outside any
    dataset folder, which are not part of the benchmark."""
    parts = PurePosixPath(member_name).parts
    if member_name.startswith("/") or ".." in parts:
        raise UnpackError(f"refusing tar member {member_name!r}: it would escape the output folder")
    for j, part in enumerate(parts):
        if part in catalog.BY_NAME:
            return PurePosixPath(*parts[j:])
    return None


def unpack(archive: Path | str, out: Path | str, progress: bool = True) -> int:
    """Unpack the benchmark files of one archive into `out`; return how many files were
    written (files already complete from an earlier, interrupted run are skipped)."""
    archive, out = Path(archive), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with tarfile.open(archive, mode="r|*") as tar:  # streamed: a 4 GB part is read once
            for member in tqdm(tar, desc=f"unpack {archive.name}", unit=" files", disable=not progress):
                rel = target_path(member.name)
                if rel is None or not (member.isfile() or member.isdir()):
                    continue  # links and devices are never part of the benchmark
                dest = out / rel
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if dest.is_file() and dest.stat().st_size == member.size:
                    continue  # finished by an earlier run
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part")
                source = tar.extractfile(member)
                if source is None:
                    raise UnpackError(f"{archive}: cannot read member {member.name!r}")
                with source, open(tmp, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 20)
                os.replace(tmp, dest)
                written += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UnpackError(f"{archive}: cannot unpack ({e}); delete it and run the download again") from e
    return written


def download(
    out: Path | str,
    *,
    repo_id: str = REPO_ID,
    parts: tuple[str, ...] | list[str] = PARTS,
    delete_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch and unpack each part not yet marked done; return `out`."""
    from huggingface_hub import hf_hub_download

    out = Path(out)
    done_dir = out / DONE_DIR
    done_dir.mkdir(parents=True, exist_ok=True)
    for part in parts:
        marker = done_dir / f"{part}.done"
        if marker.exists():
            continue
        archive = hf_hub_download(repo_id=repo_id, filename=part, repo_type="dataset",
                                  local_dir=out / ARCHIVE_DIR)
        unpack(archive, out, progress=progress)
        marker.write_text(f"{repo_id}/{part}\n", encoding="utf-8")
        if delete_archives:
            Path(archive).unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="data dir to fill, e.g. data/MileBench")
    parser.add_argument("--repo", default=REPO_ID, help="dataset repository on the hub")
    parser.add_argument("--parts", type=int, nargs="*", default=list(range(len(PARTS))),
                        help="which parts (0-5) to fetch; all by default")
    parser.add_argument("--delete-archives", action="store_true", help="remove each tarball once unpacked")
    args = parser.parse_args(argv)
    bad = [p for p in args.parts if not 0 <= p < len(PARTS)]
    if bad:
        parser.error(f"parts must be in 0..{len(PARTS) - 1}, got {bad}")
    download(args.out, repo_id=args.repo, parts=[PARTS[p] for p in args.parts],
             delete_archives=args.delete_archives)
    present = [d for d in catalog.NAMES if (args.out / d / f"{d}.json").is_file()]
    missing = sorted(set(catalog.NAMES) - set(present))
    print(f"{len(present)} of {len(catalog.NAMES)} datasets in {args.out}"
          + (f"; missing: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
