"""MileBench's normalization, rule by rule, with expectations worked out by hand."""
import pytest

from milebench.normalize import normalize


@pytest.mark.parametrize("raw, expected", [
    ("Blue\n", "blue"),  # newline to space, stripped, lower-cased
    ("a\tb", "a b"),
    ("  'Paris'  ", "paris"),  # outer quotes stripped after whitespace
    ("km/h", "km h"),  # '/' touches no space: becomes a space
    ("left / right", "left  right"),  # '/' has a space beside it: deleted everywhere
    ("a,b (x)y", "a b x y"),  # '(' has ' (' -> deleted; ')' and ',' touch no space -> spaces
    ("e=mc", "e mc"),
    ("what?", "what"),  # '?' -> space, then stripped
    ("x:y*z", "x:y*z"),  # ':' and '*' are not punctuation here
    ("it's", "it's"),  # inner apostrophe stays
])
def test_punctuation_space_or_delete(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    # a digit-comma-digit anywhere makes every listed punctuation character vanish
    ("1,000 (approx)", "1000 approx"),
    ("3,000/month", "3000month"),
    ("a-b 1,2", "ab 12"),
    # without it the same characters become spaces
    ("3/month", "3 month"),
    ("a-b", "a b"),
    ("1, 2", "1 2"),  # ', ' -> comma deleted (no digit-comma-digit: there is a space)
])
def test_digit_comma_rule(raw, expected):
    assert normalize(raw) == expected


def test_decision_uses_the_text_before_the_step():
    # '_' comes first and turns "a_(b" into "a (b"; '(' is still decided on "a_(b", which has
    # no " (" or "( ", so it too becomes a space (deciding on the running text would delete it).
    assert normalize("a_(b") == "a  b"


@pytest.mark.parametrize("raw, expected", [
    ("The end.", "the end"),
    ("3.5 apples.", "3.5 apples"),  # a period before a digit stays
    ("v1.2.x", "v1.2x"),
])
def test_periods(raw, expected):
    assert normalize(raw) == expected


def test_period_cap_leaves_eight_of_forty():
    assert normalize("wait" + "." * 40) == "wait" + "." * 8
    assert normalize("." * 32) == ""
    assert normalize("." * 33) == "."


def test_corrected_mode_removes_every_period():
    assert normalize("wait" + "." * 40, corrected=True) == "wait"
    assert normalize("3.5 apples.", corrected=True) == "3.5 apples"
