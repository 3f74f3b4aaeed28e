"""LLaVA-1.5's own prompt encoding, for the HF model's forward.

The published LLaVA-1.5 numbers (MileBench's, hence the paper's full-cache rows) came from
LLaVA's original code, not from llava-hf's processor, and the two give different input ids
for the same prompt text:

- LLaVA cuts the prompt at every image placeholder and tokenizes each text chunk ON ITS OWN
  with the Llama SentencePiece tokenizer. Every chunk therefore gets SentencePiece's dummy
  prefix space: the "\\n" right after an image is ``▁`` ``\\n`` (29871, 13), not ``\\n``
  alone as in a whole-string encoding, and " Image2:" after an image starts ``▁`` ``▁Image``.
- The tokenizer adds BOS to every chunk; only the first chunk's is kept.
- One image token goes between consecutive chunks; the model turns it into the image's
  visual tokens. For transformers' LLaVA the input ids must hold ``tokens_per_image`` image
  token ids per image instead, so each is expanded here.
- LLaVA's tokenizer is SentencePiece's own (the slow tokenizer), which always adds the dummy
  prefix. transformers' fast Llama tokenizer does not when the text already starts with a
  space (" Hello" is ``▁Hello``, SentencePiece says ``▁`` ``▁Hello``). `follow_sentencepiece`
  switches a fast tokenizer to SentencePiece's rule, which also makes MileBench's truncation
  count fragments as LLaVA's tokenizer does.

Once a tokenizer follows SentencePiece's rule, tokenizing the whole string gives the same ids
as the chunks (tokenizers normalizes each text between special tokens on its own, prefix
included); the chunks are kept because they are LLaVA's definition and do not rest on that.

A byte-level BPE tokenizer (the tiny model's) has no dummy prefix; the encoding applies to it
unchanged (chunks, BOS handling, expansion) and gives the processor's ids there.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import normalizers, pre_tokenizers

ENCODINGS = ("llava", "processor")
SPIECE_SPACE = "\u2581"


def follow_sentencepiece(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` whose text pipeline is SentencePiece's: every text gets one
    dummy-prefix ``▁`` and spaces become ``▁`` (a normalizer, as in the original Llama
    ``tokenizer.json``), instead of a Metaspace pre-tokenizer that skips the prefix when the
    text starts with a space. Tokenizers without a Metaspace pre-tokenizer that prepends
    (byte-level BPE) are returned unchanged. Vocabulary, special tokens and decoding stay."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if not isinstance(pre, pre_tokenizers.Metaspace) or pre.prepend_scheme == "never":
        return tokenizer
    if pre.replacement != SPIECE_SPACE:
        raise ValueError(f"unexpected Metaspace replacement {pre.replacement!r} in {type(tokenizer).__name__}")
    converted = copy.deepcopy(tokenizer)
    converted.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPIECE_SPACE), normalizers.Replace(" ", SPIECE_SPACE)]
    )
    converted.backend_tokenizer.pre_tokenizer = None
    return converted


def llava_input_ids(prompt: str, tokenizer: Any, image_token: str, image_token_id: int) -> list[int]:
    """One prompt's ids as LLaVA builds them: one ``image_token_id`` per image (not expanded)."""
    chunks = prompt.split(image_token)
    encoded = [list(tokenizer(chunk).input_ids) for chunk in chunks]
    bos = tokenizer.bos_token_id
    # LLaVA decides from the first chunk whether the tokenizer adds BOS, then keeps only that one.
    drop = 1 if bos is not None and encoded[0][:1] == [bos] else 0
    ids = list(encoded[0])
    for piece in encoded[1:]:
        ids.append(image_token_id)
        ids.extend(piece[drop:])
    return ids


def expand_image_tokens(ids: Sequence[int], image_token_id: int, tokens_per_image: int) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.extend([t] * tokens_per_image if t == image_token_id else [t])
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a left-padded batch."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask
