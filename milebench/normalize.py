"""MileBench's answer normalization, quirks included.

Gold answers, predictions and options all pass through `normalize` before any comparison,
so a single character of difference here moves published numbers. The faithful form keeps
the reference evaluation's 32-period cap (it passes a regex flag value as the count); the
corrected form removes every eligible period.
"""
from __future__ import annotations

import re

# The order matters only for documentation: each character is decided on the step's input.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
PERIOD_CAP = 32  # the value of re.UNICODE, which the reference passes as `count`


def _punctuation(text: str) -> str:
    """Delete a character when it sits next to a space (or the text has a digit-comma-digit
    anywhere), otherwise turn it into a space; decided on the text as it entered this step."""
    digit_comma = _DIGIT_COMMA.search(text) is not None
    out = text
    for c in PUNCTUATION:
        if c not in out:
            continue
        if digit_comma or (c + " ") in text or (" " + c) in text:
            out = out.replace(c, "")
        else:
            out = out.replace(c, " ")
    return out


def normalize(text: str, *, corrected: bool = False) -> str:
    """Normalize one answer string the way MileBench's evaluation does.

    `corrected=True` lifts the 32-period cap; everything else is identical.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _punctuation(text)
    text = _PERIOD.sub("", text, count=0 if corrected else PERIOD_CAP)
    text = text.strip("'").strip('"').strip()
    return text.lower()
