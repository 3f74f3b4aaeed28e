"""Per-sample metrics of MileBench's evaluation: routing, choice matching, needle and
substring matching, ROUGE-L.

Every function takes already-normalized strings (see `milebench.normalize`), because the
reference normalizes gold, prediction and options once and compares the results. Each
function has a faithful form (the reference's behaviour, quirks included, which produced the
published numbers) and, where a quirk exists, a `corrected=True` form.
"""
from __future__ import annotations

import contextlib
import re
import string
import sys
from collections.abc import Iterator, Sequence
from functools import lru_cache

from rouge import Rouge

from milebench.catalog import Scoring
from milebench.normalize import normalize

# The characters the reference escapes before building its regex alternations. Python's
# re.escape would also escape spaces, '#', '&', '~' and change which options can match.
_REGEX_SPECIAL = frozenset("\\.^$*+?{}[]|()")


def route(dataset: str, question_type: str) -> Scoring:
    """Which metric scores a dataset: by name first, then by question type."""
    if "NeedleInAHaystack" in dataset:
        return "needle"
    if "MMCoQA" in dataset:
        return "substring"
    if question_type == "open-ended":
        return "rouge"
    if question_type == "multi-choice":
        return "choice"
    raise ValueError(f"{dataset}: unknown question_type {question_type!r} (expected 'multi-choice' or 'open-ended')")


@lru_cache(maxsize=64)
def option_keys(n: int) -> tuple[str, ...]:
    """A..Z, then AA..AZ, BA..BZ, ... as many as there are options."""
    letters = string.ascii_uppercase
    keys = list(letters[:n])
    for first in letters:
        for second in letters:
            if len(keys) >= n:
                return tuple(keys)
            keys.append(first + second)
    if len(keys) < n:
        raise ValueError(f"{n} options is more than the {len(keys)} keys A..ZZ can name")
    return tuple(keys)


def regex_escape(text: str) -> str:
    """Escape the reference's set of regex characters (and nothing else, spaces included)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def gold_key(gold: str, options: Sequence[str]) -> str | None:
    """Key of the first option equal to the gold (all normalized); None when none is."""
    for key, option in zip(option_keys(len(options)), options):
        if option == gold:
            return key
    return None


def match_choice(pred: str, options: Sequence[str], *, corrected: bool = False) -> str:
    """The option key a normalized prediction names, MileBench's way.

    Faithful mode may return something that is no key at all ("AB", the prediction itself);
    such an answer is simply wrong. Corrected mode returns a key or "" (no answer).
    """
    if corrected:
        return _match_choice_corrected(pred, options)
    keys = option_keys(len(options))
    if pred == "":
        return "C"
    try:
        # 1. key and option together, e.g. "b blue"; the option is normalized a second time
        pattern = "|".join(regex_escape(normalize(f"{k} {v}")) for k, v in zip(keys, options))
        found = re.search(f"({pattern})", pred, re.S)
        if found:
            return found.group(0)[0].upper()
        # 2. the option alone, spaces ignored; the escaped text must equal the matched text
        squeezed = [regex_escape(v).replace(" ", "") for v in options]
        found = re.search(f"({'|'.join(squeezed)})", pred.replace(" ", ""), re.S)
        if found:
            for k, v in zip(keys, squeezed):
                if found.group(0).strip() == v:
                    return k
        # 3. the bare key
        if len(pred) in (1, 2) and pred.upper() in keys:
            return pred.upper()
    except re.error:
        return pred
    # 4. every letter that is a one-letter key ("answer: b" -> "AB")
    single = {k for k in keys if len(k) == 1}
    return "".join(c.upper() for c in pred if c.upper() in single)


def _first_longest(pred: str, candidates: Sequence[tuple[str, str]]) -> str | None:
    """Key of the leftmost match, the longest one at that position (so image12 beats image1)."""
    candidates = [(text, key) for text, key in candidates if text]
    if not candidates:
        return None
    by_length = sorted(candidates, key=lambda tk: -len(tk[0]))  # stable: ties keep option order
    found = re.search("|".join(re.escape(text) for text, _ in by_length), pred, re.S)
    if not found:
        return None
    return next(key for text, key in candidates if text == found.group(0))


def _match_choice_corrected(pred: str, options: Sequence[str]) -> str:
    keys = option_keys(len(options))
    if pred == "":
        return ""
    key = _first_longest(pred, [(normalize(f"{k} {v}", corrected=True), k) for k, v in zip(keys, options)])
    if key is None:
        key = _first_longest(pred.replace(" ", ""), [(v.replace(" ", ""), k) for k, v in zip(keys, options)])
    if key is not None:
        return key
    if len(pred) in (1, 2) and pred.upper() in keys:
        return pred.upper()
    named = {t.upper() for t in re.findall(r"\b[a-z]{1,2}\b", pred) if t.upper() in keys}
    return named.pop() if len(named) == 1 else ""


def needle_correct(pred: str, gold: str) -> bool:
    """The needle counts only as a whole whitespace-separated token."""
    return gold in pred.split()


def substring_correct(pred: str, gold: str) -> bool:
    return gold in pred


_ROUGE = Rouge(metrics=["rouge-l"])


@lru_cache(maxsize=1)
def _google_scorer():  # imported on first use: rouge-score pulls in nltk and scipy (seconds)
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


@contextlib.contextmanager
def _deep_recursion(limit: int = 20000) -> Iterator[None]:
    """The `rouge` package rebuilds its LCS recursively (depth = words of both sentences)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F of the `rouge` 1.0.1 package (summary-level union LCS over unique words).

    The integer 0 for an empty prediction, as the reference scores it (so eval_score.json
    says "0", not "0.0"), and for one the package finds no sentence in (only periods, which
    the 32-period cap can leave behind; the reference would stop with an error there).
    Periods reach the package as they are: it splits sentences on them.
    """
    if not gold.replace(".", "").strip():
        raise ValueError(f"gold answer {gold!r} has no words after normalization")
    if not pred.replace(".", ""):
        return 0
    with _deep_recursion():
        return float(_ROUGE.get_scores(pred, gold)[0]["rouge-l"]["f"])


# Function words dropped before the content-word match; everything else (colours, numbers,
# names, verbs) is content.
STOPWORDS = frozenset(
    "a an the and or but to of from in on at by for with as into onto is are was were be been being "
    "it its this that these those there here then than so".split())


def content_words(text: str) -> list[str]:
    return [w for w in text.split() if w not in STOPWORDS]


def content_exact_match(pred: str, gold: str) -> bool:
    """The normalized answers' content words, in order, are equal: "red to blue" against "red
    to green" is wrong here (ROUGE-L F gives it 0.67), "red and blue" against "the red, the
    blue" is right. An extra figure beside ROUGE-L for free-form answers, never instead of it."""
    return content_words(pred) == content_words(gold)


def rouge_l_google(pred: str, gold: str) -> float:
    """ROUGE-L F of Google's rouge-score (sentence-level LCS, its own tokenizer), on the same
    normalized strings; offered beside, never instead of, the reference column."""
    if not pred:
        return 0.0
    return float(_google_scorer().score(gold, pred)["rougeL"].fmeasure)
