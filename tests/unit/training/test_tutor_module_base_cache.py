"""The base model's math answers are generated once: a second run of the same config grades the stored
answers (same metrics, no generation), and changing anything they depend on generates them again."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.evaluation.answers import Answerer
from src.training.base_model_pass import measure_base_model
from test_tutor_module import make_datamodule, make_module, make_trainer


def base_run(model_dir: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, **module_args) -> tuple[dict, int]:
    """The base metrics of a fresh run, and how many batches the base evaluation generated answers for."""
    calls = []
    original = Answerer.answer_batch

    def counting(self, batch):
        calls.append(len(batch["question"]))
        return original(self, batch)

    monkeypatch.setattr(Answerer, "answer_batch", counting)
    module = make_module(model_dir, **module_args)
    module.on_train_start = lambda: None  # measured below, alone
    make_trainer(folder, 1).fit(module, datamodule=make_datamodule(model_dir, folder))
    calls.clear()
    metrics = measure_base_model(module)
    return metrics, len(calls)


def test_the_second_run_reuses_the_base_answers_and_any_change_recomputes(tiny_model_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUTOR_TUNE_CACHE", str(tmp_path / "cache"))  # no answers from other tests
    first, generated = base_run(tiny_model_dir, tmp_path, monkeypatch)
    assert generated > 0
    second, generated = base_run(tiny_model_dir, tmp_path, monkeypatch)
    assert generated == 0 and second == first
    _, generated = base_run(tiny_model_dir, tmp_path, monkeypatch, generation={"max_new_tokens": 5})  # another budget
    assert generated > 0
    _, generated = base_run(tiny_model_dir, tmp_path, monkeypatch, system_prompt="Be brief.")  # another prompt format
    assert generated > 0
