"""The real LLaVA-1.5 tokenizer (Llama-2's SentencePiece vocabulary), built offline.

No machine here reaches a model hub, but the token ids of a prompt decide what a model sees
and what MileBench's truncation keeps, so tests of our prompt encoding need the real
vocabulary, not the tiny model's byte-level BPE. The Llama SentencePiece vocabulary ships on
PyPI inside the source distribution of ``llama-cpp-python`` (llama.cpp's tokenizer test
files: a GGUF holding the 32,000 pieces, their scores and types, plus reference texts and
the ids the original tokenizer gives them). We fetch that sdist once with pip (no build),
keep only those three files under ``models/downloads/``, read the GGUF with the ``gguf``
package (llama.cpp's own reader) to check it is the vocabulary we expect, convert it with
transformers' GGUF tokenizer loading, and save a ``LlamaTokenizer`` that looks like
llava-hf's: ``<image>`` is special token 32000 and ``<pad>`` (the pad token) is 32001,
BOS is added, EOS is not, padding on the left.

    python -m csp.models.llava_tokenizer            # -> models/llava-1.5-tokenizer
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / "models"
FOLDER_NAME = "llava-1.5-tokenizer"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the sdist the vocabulary is taken from (never installed)
VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
MEMBER_DIR = "vendor/llama.cpp/models"
# The files we keep, with their sha256: the vocabulary and llama.cpp's reference texts and ids.
FILES = {
    VOCAB_FILE: "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
    VOCAB_FILE + ".inp": "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    VOCAB_FILE + ".out": "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
}
REFERENCE_SEPARATOR = "\n__ggml_vocab_test__\n"

IMAGE_TOKEN, IMAGE_TOKEN_ID = "<image>", 32000  # as in llava-hf's checkpoints
PAD_TOKEN, PAD_TOKEN_ID = "<pad>", 32001
RECIPE_VERSION = 1
RECIPE_FILE = "llava_tokenizer_recipe.json"
PIP_TIMEOUT_S = 900


class VocabUnavailable(RuntimeError):
    """The vocabulary could not be fetched (no package index, pip failed); says the command."""


def download_dir(root: Path | None = None) -> Path:
    root = Path(root) if root is not None else DEFAULT_ROOT
    return root / "downloads" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in FILES.items())


def fetch_vocab(root: Path | None = None) -> Path:
    """The folder holding the GGUF vocabulary and the reference files, downloading the
    pinned llama-cpp-python sdist once (about 75 MB; only three small files are kept)."""
    folder = download_dir(root)
    if _cached(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".llama-cpp-python-", dir=folder.parent))
    try:
        # --no-binary names the one package: ":all:" would also build pip's own build
        # dependencies (scikit-build-core, hatchling, ...) from source, ten minutes on 2 cores.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(scratch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise VocabUnavailable(f"`{' '.join(cmd)}` did not finish in {PIP_TIMEOUT_S} s") from None
        sdists = sorted(scratch.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise VocabUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
        staged = scratch / "files"
        staged.mkdir()
        with tarfile.open(sdists[0], "r:gz") as tar:
            prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/{MEMBER_DIR}/"
            for name in FILES:
                try:
                    member = tar.extractfile(prefix + name)
                except KeyError:
                    member = None
                if member is None:
                    raise VocabUnavailable(f"{sdists[0].name} holds no {prefix + name}")
                (staged / name).write_bytes(member.read())
        for name, digest in FILES.items():
            if _sha256(staged / name) != digest:
                raise VocabUnavailable(f"{prefix + name} in {sdists[0].name} is not the pinned file (sha256 differs)")
        os.chmod(staged, 0o755)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staged, folder)
        except OSError:
            if not _cached(folder):  # a concurrent fetch may have won the rename
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def check_vocab_file(path: Path) -> None:
    """Read the GGUF with llama.cpp's own reader and insist on Llama-2's SentencePiece
    vocabulary: 32,000 pieces, <unk>/<s>/</s> at 0/1/2, BOS added and EOS not."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key: str):
        if key not in fields:
            raise ValueError(f"{path}: GGUF field {key!r} is missing")
        return fields[key].contents()

    expected = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, want in expected.items():
        got = value(key)
        if got != want:
            raise ValueError(f"{path}: GGUF field {key!r} is {got!r}, expected {want!r}")
    tokens = value("tokenizer.ggml.tokens")
    if len(tokens) != 32000 or tokens[:3] != ["<unk>", "<s>", "</s>"] or tokens[13] != "<0x0A>":
        raise ValueError(f"{path}: not Llama-2's vocabulary ({len(tokens)} pieces, first {tokens[:3]})")


def reference_vectors(root: Path | None = None) -> list[tuple[str, list[int]]]:
    """llama.cpp's reference cases for this vocabulary: (text, ids without BOS), as the
    original SentencePiece tokenizer encodes them."""
    folder = fetch_vocab(root)
    texts = (folder / (VOCAB_FILE + ".inp")).read_text(encoding="utf-8").split(REFERENCE_SEPARATOR)
    lines = (folder / (VOCAB_FILE + ".out")).read_text(encoding="utf-8").split("\n")
    if len(lines) < len(texts):
        raise ValueError(f"{folder}: {len(texts)} reference texts but {len(lines)} id lines")
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


def build_llava_tokenizer(out: Path, root: Path | None = None) -> Path:
    """Write the tokenizer to ``out`` atomically (built beside it, then renamed)."""
    from transformers import AutoTokenizer, LlamaTokenizer

    folder = fetch_vocab(root)
    check_vocab_file(folder / VOCAB_FILE)
    converted = AutoTokenizer.from_pretrained(str(folder), gguf_file=VOCAB_FILE)
    model = json.loads(converted.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = LlamaTokenizer(
        vocab=model["vocab"],
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        model_specific_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    got = (tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id, len(tokenizer))
    if got != (IMAGE_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID + 1):
        raise RuntimeError(f"<image>, <pad> and the size came out as {got}, expected (32000, 32001, 32002)")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(_recipe(), sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists() and not _is_current(out):
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not _is_current(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _recipe() -> dict:
    return {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "vocab_sha256": FILES[VOCAB_FILE],
            "recipe_version": RECIPE_VERSION}


def _is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / RECIPE_FILE).read_text()) == _recipe()
    except (OSError, ValueError):
        return False


def default_folder(root: Path | None = None) -> Path:
    return (Path(root) if root is not None else DEFAULT_ROOT) / FOLDER_NAME


def ensure_llava_tokenizer(root: Path | None = None) -> Path:
    """The saved tokenizer folder under ``root`` (default <repo>/models), built once; raises
    VocabUnavailable when the vocabulary is neither cached nor downloadable."""
    folder = default_folder(root)
    if _is_current(folder) and _cached(download_dir(root)):
        return folder
    return build_llava_tokenizer(folder, root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the LLaVA-1.5 (Llama-2 SentencePiece) tokenizer offline.")
    parser.add_argument("--root", type=Path, default=None, help="models folder (default <repo>/models)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a current copy exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.force:
            out = build_llava_tokenizer(default_folder(args.root), args.root)
        else:
            out = ensure_llava_tokenizer(args.root)
    except VocabUnavailable as err:
        raise SystemExit(f"cannot obtain the vocabulary: {err}") from None
    print(f"LLaVA-1.5 tokenizer ready in {time.perf_counter() - start:.1f} s -> {out}")


if __name__ == "__main__":
    main()
