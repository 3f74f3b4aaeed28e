"""Unpacking the released tarballs into the loader's layout, resumably, on a tarball built
here; the hub call itself is replaced by a local file."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from milebench import download as dl
from milebench.data import load_dataset
from milebench.synthetic import generate


def _tarball(src: Path, names: list[str], dest: Path, prefix: str = "MileBench") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for name in names:
            tar.add(src / name, arcname=f"{prefix}/{name}" if prefix else name)
    return dest


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("src") / "copy", samples=1, progress=False)


def test_target_path_strips_the_leading_folder_and_refuses_escapes():
    assert str(dl.target_path("MileBench/ALFRED/images/t/0.jpg")) == "ALFRED/images/t/0.jpg"
    assert str(dl.target_path("ALFRED/ALFRED.json")) == "ALFRED/ALFRED.json"
    assert dl.target_path("MileBench/README.md") is None
    with pytest.raises(dl.UnpackError, match="escape"):
        dl.target_path("MileBench/../../etc/ALFRED/x")
    with pytest.raises(dl.UnpackError, match="escape"):
        dl.target_path("/ALFRED/x")


def test_unpack_gives_the_loader_layout(tmp_path, source):
    archive = _tarball(source, ["ALFRED", "GPR1200"], tmp_path / "MileBench_part0.tar.gz")
    out = tmp_path / "out"
    written = dl.unpack(archive, out, progress=False)
    n_files = sum(1 for d in ("ALFRED", "GPR1200") for p in (source / d).rglob("*") if p.is_file())
    assert written == n_files
    for name in ("ALFRED", "GPR1200"):
        assert load_dataset(out, name).samples == load_dataset(source, name).samples
        assert (out / name / f"{name}.json").read_bytes() == (source / name / f"{name}.json").read_bytes()


def test_unpack_resumes_after_an_interruption(tmp_path, source):
    archive = _tarball(source, ["ALFRED"], tmp_path / "part.tar.gz", prefix="")
    out = tmp_path / "out"
    dl.unpack(archive, out, progress=False)
    done = out / "ALFRED" / "ALFRED.json"
    cut = out / "ALFRED" / "ALFRED-adv.json"
    os.utime(done, (1_000_000, 1_000_000))  # a file finished by the first run
    cut.write_bytes(cut.read_bytes()[:10])  # a file the interrupted run left short
    assert dl.unpack(archive, out, progress=False) == 1  # only the short one is rewritten
    assert done.stat().st_mtime == 1_000_000
    assert cut.read_bytes() == (source / "ALFRED" / "ALFRED-adv.json").read_bytes()
    assert not list(out.rglob(".*.part"))


def test_broken_archive_names_itself(tmp_path, source):
    archive = _tarball(source, ["ALFRED"], tmp_path / "MileBench_part3.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(dl.UnpackError, match=r"MileBench_part3\.tar\.gz: cannot unpack"):
        dl.unpack(archive, tmp_path / "out", progress=False)


def test_download_fetches_each_part_once(tmp_path, source, monkeypatch):
    archives = {part: _tarball(source, [name], tmp_path / part)
                for part, name in zip(dl.PARTS[:2], ["ALFRED", "IEdit"])}
    calls = []

    def fake_hub_download(repo_id, filename, repo_type, local_dir):
        calls.append((repo_id, filename, repo_type))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        return str(shutil.copy(archives[filename], Path(local_dir) / filename))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub_download)
    out = tmp_path / "MileBench"
    dl.download(out, parts=dl.PARTS[:2], delete_archives=True, progress=False)
    assert calls == [("FreedomIntelligence/MileBench", p, "dataset") for p in dl.PARTS[:2]]
    assert load_dataset(out, "IEdit").samples == load_dataset(source, "IEdit").samples
    assert not list((out / dl.ARCHIVE_DIR).iterdir())  # deleted once unpacked
    dl.download(out, parts=dl.PARTS[:2], progress=False)  # both marked done: nothing fetched
    assert len(calls) == 2
