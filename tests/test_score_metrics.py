"""Choice matching, needle, substring and ROUGE-L: every quirk of MileBench's evaluation with
expectations worked out by hand, and what the corrected mode does instead."""
import pytest

from milebench import catalog
from milebench.metrics import (
    content_exact_match,
    gold_key,
    match_choice,
    needle_correct,
    option_keys,
    rouge_l,
    rouge_l_google,
    route,
    substring_correct,
)
from milebench.normalize import normalize

COLOURS = ["red", "blue", "green", "yellow"]  # keys A B C D; gold "blue" is B


def choose(pred, options=COLOURS, corrected=False):
    opts = [normalize(o, corrected=corrected) for o in options]
    return match_choice(normalize(pred, corrected=corrected), opts, corrected=corrected)


@pytest.mark.parametrize("pred, key", [
    ("B", "B"),  # bare key
    ("B.", "B"),  # period deleted -> "b"
    ("(B) blue", "B"),  # -> "b blue": key-and-option alternation
    ("blue", "B"),  # option text alone
    ("b)", "B"),  # ')' becomes a space, stripped
    ("The answer is blue", "B"),
    ("I think d yellow, not a red", "D"),  # leftmost key-and-option match wins
    ("Answer: B", "AB"),  # letter fallback concatenates the a of "answer" and the b
    ("none of them", ""),  # no letter a..d in it
    ("bad", "BAD"),  # b, a and d are keys: "BAD", no key, wrong
])
def test_match_choice_faithful(pred, key):
    assert choose(pred) == key


def test_empty_prediction_is_c():
    assert choose("") == "C"
    assert choose("...") == "C"  # normalizes to empty
    # so it is correct exactly when the gold is the third option
    assert choose("") == gold_key("green", COLOURS)


def test_corrected_letter_fallback_and_empty():
    assert choose("Answer: B", corrected=True) == "B"
    assert choose("", corrected=True) == ""
    assert choose("a or b", corrected=True) == ""  # two letters named: no answer


def test_escaped_options_never_map_by_text():
    options = ["4.5 million", "3 million", "2.1 million", "10 million"]
    # "4.5million" is found, but compared to the escaped "4\.5million" it differs; no letter
    # a..d is in "4.5 million" either
    assert choose("4.5 million", options) == ""
    assert choose("3 million", options) == "B"  # nothing to escape: maps
    assert choose("4.5 million", options, corrected=True) == "A"


def test_gpr1200_prefix_bug():
    options = [f"image{i}" for i in range(1, 13)]  # keys A..L, as in GPR1200 (unlettered)
    assert choose("image12", options) == "A"  # "image1" is tried first and matches
    assert choose("image7", options) == "G"
    assert choose("image12", options, corrected=True) == "L"


def test_keys_beyond_z():
    keys = option_keys(30)
    assert keys[:3] == ("A", "B", "C") and keys[25] == "Z"
    assert keys[26:] == ("AA", "AB", "AC", "AD")
    options = [f"opt{i}" for i in range(30)]
    assert choose("AC", options) == "AC"  # a two-character prediction that is a key
    assert choose("ac opt28", options) == "A"  # key-and-option match keeps the first letter only
    assert choose("ac opt28", options, corrected=True) == "AC"


def test_option_normalized_twice_in_key_alternation():
    # option "(x) y" normalizes to "x y"; the key string normalize("A x y") is "a x y"
    assert choose("a x y", ["(x) y", "z"]) == "A"


def test_gold_key_first_of_equal_options():
    assert gold_key("blue", ["Blue", "blue"]) == "B"  # compares as given: options come normalized
    assert gold_key("blue", [normalize("Blue!"), "blue"]) == "A"
    assert gold_key("purple", COLOURS) is None


def test_needle_whole_token():
    gold = normalize("7984462")
    assert needle_correct(normalize("The number is 7984462."), gold)
    assert not needle_correct(normalize("The number is 79844621"), gold)
    assert not needle_correct(normalize("number:7984462"), gold)  # ':' stays, token differs
    assert needle_correct(normalize("(7984462)"), gold)  # brackets become spaces


def test_mmcoqa_substring():
    assert substring_correct(normalize("It is Parisian food."), normalize("Paris"))
    assert not substring_correct(normalize("It is Lyon."), normalize("Paris"))


def test_rouge_l_reference_semantics():
    # unique words: hyp {the, cat} n=2, ref {the, cat, sat} m=3, union LCS {the, cat} = 2
    # P = 1, R = 2/3, F = 2PR / (P + R + 1e-8)
    p, r = 1.0, 2 / 3
    assert rouge_l("the the the cat", "the cat sat") == pytest.approx(2 * p * r / (p + r + 1e-8), abs=1e-12)
    assert rouge_l("the the the cat", "the cat sat") == pytest.approx(0.8, abs=1e-7)
    # Google's implementation counts tokens: LCS 2, P = 2/4, R = 2/3, F = 4/7
    assert rouge_l_google("the the the cat", "the cat sat") == pytest.approx(4 / 7)


def test_rouge_l_sentences_split_on_periods():
    # "3.5" keeps its period, so the package sees sentences "a 3" and "5 b" (words a 3 5 b)
    # against one sentence "a 3 5 b": LCS of "a 3 5 b" with each: "a 3" + "5 b" -> 4 of 4
    assert rouge_l("a 3.5 b", "a 3 5 b") == pytest.approx(1.0, abs=1e-7)


def f_score(p: float, r: float) -> float:
    return 2 * p * r / (p + r + 1e-8)


@pytest.mark.parametrize("pred, gold", [("b 1.2 a", "2 a b 1"), ("2 a b 1", "b 1.2 a")])
def test_rouge_l_periods_reach_the_package_as_sentence_breaks(pred, gold):
    """A period before a digit survives normalization and the `rouge` package splits
    sentences on it: "b 1.2 a" is the sentences "b 1" and "2 a", whose union LCS with "2 a b 1"
    covers all 4 words (F = 1). Turned into a space it would be one sentence, LCS "b 1" or
    "2 a": P = R = 2/4, F = 0.5. Either side: the prediction (hypothesis) or the gold."""
    assert normalize(pred.upper() + ".") == pred and normalize(gold.upper() + ".") == gold
    assert rouge_l(pred, gold) == pytest.approx(f_score(1.0, 1.0), abs=1e-12)
    assert rouge_l(pred.replace(".", " "), gold.replace(".", " ")) == pytest.approx(f_score(0.5, 0.5), abs=1e-12)


def test_rouge_score_column_has_no_stemmer():
    """The extra rouge-score column is documented as unstemmed (eval_rouge_score.json says so):
    "cats" and "cat" are different tokens, LCS 2 of 3 each way (F = 2/3); Porter stemming
    would make them equal (F = 1)."""
    assert rouge_l_google("the cats ran", "the cat ran") == pytest.approx(2 / 3, abs=1e-12)
    assert rouge_l_google("the cat ran", "the cat ran") == pytest.approx(1.0)


def test_rouge_l_empty_and_only_periods():
    assert rouge_l("", "the cat") == 0 and type(rouge_l("", "the cat")) is int  # str() gives "0"
    assert rouge_l(normalize("." * 40), "the cat") == 0.0  # 8 periods survive the cap
    with pytest.raises(ValueError, match="no words"):
        rouge_l("the cat", "")


def test_rouge_l_long_prediction_does_not_hit_recursion_limit():
    pred = " ".join(f"w{i}" for i in range(1200))
    gold = " ".join(f"w{i}" for i in range(0, 1200, 12))
    # every gold word is in the prediction, in order: R = 1, P = 100/1200
    p, r = 100 / 1200, 1.0
    assert rouge_l(pred, gold) == pytest.approx(2 * p * r / (p + r + 1e-8))


def test_routing_by_name_then_type():
    assert route("TextNeedleInAHaystack", "open-ended") == "needle"
    assert route("MMCoQA", "open-ended") == "substring"
    assert route("ALFRED", "open-ended") == "rouge"
    assert route("GPR1200", "multi-choice") == "choice"
    with pytest.raises(ValueError, match="question_type"):
        route("X", "yes-no")
    for d in catalog.DATASETS:  # the catalog agrees with the spec's routing for all 29
        assert route(d.name, d.question_type) == d.scoring, d.name


@pytest.mark.parametrize("pred,gold,expected", [
    ("red to blue", "red to blue", True),
    ("red to green", "red to blue", False),  # ROUGE-L F gives it 2/3
    ("the red and the blue", "red and blue", True),  # function words do not count
    ("blue and red", "red and blue", False),  # order counts
    ("red", "red and blue", False),
    ("", "red and blue", False),
    ("red blue green", "red and blue", False),
])
def test_content_exact_match(pred, gold, expected):
    assert content_exact_match(normalize(pred), normalize(gold)) is expected
