"""The checkable-answer rule, retention accuracy and kept share, and the repeated n-gram measure."""

from __future__ import annotations

import pytest
import torch

from src.metrics.retention import (
    RepeatedNgrams, RetentionAccuracy, contains_words, is_correct, kept_share, normalize, repeated_ngram_share,
)

CAPITALS = ["amsterdam", "berlin", "lyon", "madrid", "roma"]


def test_normalize_drops_case_accents_punctuation_and_thousands_separators() -> None:
    assert normalize("¡Sí, 1.000 AÑOS!") == "si 1000 anos"
    assert normalize("Bogotá, 1,000 m; H₂O") == "bogota 1000 m h2o"
    assert normalize("twenty-four") == "twenty four"
    assert normalize("2.5 kg") == "2 5 kg"  # decimals are not thousands: the digits stay apart


def test_answers_match_as_whole_words_only() -> None:
    assert contains_words("There are 100 centimetres.", "100")
    assert not contains_words("There are 1000 millimetres.", "100")
    assert not contains_words("Parisian food", "paris")
    assert contains_words("Se llama «El Cairo».", "cairo")
    assert contains_words("The capital is Buenos Aires.", "buenos aires")
    assert not contains_words("anything", "")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The capital of France is Paris.", True),  # right
        ("PARÍS", True),  # case and accents
        ("France's capital city is the lovely Paris, on the Seine.", True),  # paraphrased
        ("The capital of France is Lyon.", False),  # wrong
        ("It is either Paris or Lyon.", False),  # contradicting candidate
        ("", False),  # empty
        ("Parisienne", False),  # not a whole word
    ],
)
def test_checkable_rule_on_hand_written_replies(reply: str, expected: bool) -> None:
    assert is_correct(reply, ["paris"], rejects=CAPITALS, prompt="What is the capital of France?") is expected


def test_a_reject_echoed_from_the_prompt_does_not_contradict() -> None:
    prompt = "Is the capital of Germany Madrid or Berlin?"
    assert is_correct("It is Berlin, not Madrid.", ["berlin"], rejects=["madrid"], prompt=prompt)
    assert not is_correct("It is Berlin, not Madrid.", ["berlin"], rejects=["madrid"], prompt="Capital of Germany?")


def test_any_accepted_variant_counts() -> None:
    assert is_correct("Hay mil gramos en un kilo.", ["1000", "mil"])
    assert is_correct("A kilogram has 1,000 grams.", ["1000", "thousand"])
    assert not is_correct("A kilogram has 100 grams.", ["1000", "thousand"])


def test_repeated_ngram_share() -> None:
    assert repeated_ngram_share("") == 0.0
    assert repeated_ngram_share("too short") == 0.0
    assert repeated_ngram_share("Cats sleep a lot and love warm places to rest.") == 0.0
    looping = "they love music and " * 10  # 40 words, 37 4-grams of which 4 are distinct
    assert repeated_ngram_share(looping) == pytest.approx(1 - 4 / 37)
    assert repeated_ngram_share("a b c d a b c d", n=4) == pytest.approx(1 - 4 / 5)


def test_repeated_ngrams_metric_is_the_mean_over_replies() -> None:
    metric = RepeatedNgrams(n=4)
    metric.update(["a b c d a b c d", "one two three four five"])
    assert metric.compute().item() == pytest.approx((1 - 4 / 5 + 0.0) / 2)


def test_retention_accuracy_keeps_per_item_results_for_the_kept_share() -> None:
    answers = [["paris"], ["cold"], ["100"], ["tuesday"]]
    base, adapter = RetentionAccuracy(num_items=4), RetentionAccuracy(num_items=4)
    # Two batches, out of order: the index places each result.
    base.update(["Paris.", "cold"], answers[:2], index=[0, 1])
    base.update(["It is 100.", "Monday"], answers[2:], index=[2, 3])
    adapter.update(["Tuesday", "Lyon", "100"], [answers[3], answers[0], answers[2]], index=[3, 0, 2])
    adapter.update(["cold"], [answers[1]], index=[1])

    assert base.per_item().tolist() == [True, True, True, False]
    assert adapter.per_item().tolist() == [False, True, True, True]
    assert base.compute()["acc"].item() == pytest.approx(0.75)
    assert adapter.compute() == {"acc": pytest.approx(0.75), "count": 4.0}
    # Same accuracy, but the adapter lost Paris: it keeps 2 of the base's 3 right answers.
    assert kept_share(base.per_item(), adapter.per_item()).item() == pytest.approx(2 / 3)


def test_kept_share_edge_cases() -> None:
    nothing = torch.zeros(3, dtype=torch.bool)
    assert kept_share(nothing, torch.ones(3, dtype=torch.bool)).item() == 1.0
    with pytest.raises(ValueError, match="same checkable set"):
        kept_share(torch.ones(3), torch.ones(4))


def test_retention_accuracy_rejects_bad_input() -> None:
    metric = RetentionAccuracy(num_items=2)
    with pytest.raises(ValueError, match=r"outside the checkable set's 0\.\.1"):
        metric.update(["x"], [["x"]], index=[2])
    with pytest.raises(ValueError, match="one entry per reply"):
        metric.update(["x", "y"], [["x"]], index=[0, 1])
    with pytest.raises(ValueError, match="at least one item"):
        RetentionAccuracy(num_items=0)
    assert metric.compute() == {"acc": 0.0, "count": 0.0}
