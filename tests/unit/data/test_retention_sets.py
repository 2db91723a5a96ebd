"""The bundled retention sets: the generated set rebuilds byte for byte, the hand-written independent set
asks other questions, and no replay prompt (bundled or self-written) comes near an evaluation prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.data.conversation import DataFormatError
from src.data.retention import CHECKABLE_FILE, DEFAULT_DIR, OPEN_FILE, REPLAY_FILE, load_checkable, load_open, write_all
from src.evaluation.self_prompts import NEAR_DUPLICATE, jaccard, keep_general_prompts, words
from src.training.base_model_pass import retention_prompts

INDEPENDENT = DEFAULT_DIR / "independent"


def prompts(folder: Path) -> list[str]:
    return [i["prompt"] for i in (*load_checkable(folder / CHECKABLE_FILE), *load_open(folder / OPEN_FILE))]


def test_the_generated_set_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    write_all(tmp_path)
    for name in (CHECKABLE_FILE, OPEN_FILE, REPLAY_FILE):
        assert (tmp_path / name).read_bytes() == (DEFAULT_DIR / name).read_bytes(), name


def test_the_independent_set_repeats_no_question_of_the_generated_set() -> None:
    generated = {words(p) for p in prompts(DEFAULT_DIR)}
    independent = prompts(INDEPENDENT)
    assert len(load_checkable(INDEPENDENT / CHECKABLE_FILE)) >= 80 and len(load_open(INDEPENDENT / OPEN_FILE)) >= 20
    assert not [p for p in independent if words(p) in generated]


def test_bundled_replay_prompts_stay_apart_from_both_evaluation_sets() -> None:
    evaluation = [words(p) for p in prompts(DEFAULT_DIR) + prompts(INDEPENDENT)]
    replay = [i["prompt"] for i in load_open(DEFAULT_DIR / REPLAY_FILE)]
    assert not [p for p in replay if any(jaccard(words(p), e) >= NEAR_DUPLICATE for e in evaluation)]


def test_self_written_prompts_are_kept_apart_from_the_independent_set_too() -> None:
    excluded = retention_prompts(DEFAULT_DIR)
    assert set(prompts(INDEPENDENT)) <= set(excluded) and set(prompts(DEFAULT_DIR)) <= set(excluded)
    assert keep_general_prompts(["Who wrote Don Quixote, the novel?", "Who wrote Romeo and Juliet?"], excluded, 5) == [
        "Who wrote Don Quixote, the novel?"
    ]


def test_a_folder_without_a_retention_file_is_named_with_what_it_must_hold(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError) as refused:
        load_checkable(tmp_path / CHECKABLE_FILE)
    message = str(refused.value)
    assert str(tmp_path / CHECKABLE_FILE) in message and "file not found" in message
    assert f"holds {CHECKABLE_FILE} and {OPEN_FILE}" in message


def test_an_empty_open_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / OPEN_FILE).write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no rows; a retention folder holds"):
        load_open(tmp_path / OPEN_FILE)
