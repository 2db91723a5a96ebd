"""Replay: before the first step the base model answers the replay prompts (once: the reply cache serves
the next run), and the data module mixes those replies into training at the configured ratio."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from src.data.replay import REPLAY_KIND
from src.sources.offline_default import cache_root
from test_tutor_module import make_datamodule, make_module, make_trainer

PROMPTS = ["Describe a river.", "Name three fruits.", "Explain what rain is.", "List two colours."]


def replay_datamodule(model_dir: Path, folder: Path, ratio: float):
    prompts = folder / "replay_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "lang": "en", "kind": "describe", "prompt": p}) + "\n"
                               for i, p in enumerate(PROMPTS)), encoding="utf-8")
    data = make_datamodule(model_dir, folder)
    data.hparams.replay_ratio, data.hparams.replay_file = ratio, str(prompts)
    return data


def cached_reply_files() -> set[Path]:
    return set((cache_root() / "replies").glob("*.json"))


def stored(files: set[Path]) -> list[dict]:
    """The cache entries in `files`: replay replies, self-written prompts, and any base math replies."""
    return [json.loads(path.read_text(encoding="utf-8")) for path in files]


def test_replay_rows_are_the_base_models_replies_mixed_in_at_the_ratio(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = cached_reply_files()
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=0.5)
    make_trainer(tmp_path, 1).fit(make_module(tiny_model_dir), datamodule=data)
    task_rows = len(data._train_records)
    assert data.replay_rows == round(task_rows * 0.5)
    assert len(data.train_dataset) == task_rows + data.replay_rows
    first_run = cached_reply_files() - before
    (replies,) = [entry for entry in stored(first_run) if entry["prompts"] == PROMPTS]  # generated once and stored
    assert len(replies["replies"]) == len(PROMPTS)

    # The same base model again: the cache answers, nothing new is stored.
    (tmp_path / "again").mkdir()
    again = replay_datamodule(tiny_model_dir, tmp_path / "again", ratio=0.5)
    make_trainer(tmp_path / "again", 1).fit(make_module(tiny_model_dir), datamodule=again)
    assert cached_reply_files() - before == first_run
    assert again.replay_rows == data.replay_rows


def test_training_steps_through_the_replay_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=1.0)
    trainer = make_trainer(tmp_path, -1, max_epochs=1)
    trainer.fit(make_module(tiny_model_dir), datamodule=data)
    assert data.replay_rows > 0
    # The loader the trainer stepped through is the one with the replay rows (twice the task rows here).
    assert trainer.num_training_batches == len(data.train_dataloader()) > len(data._train_records) // data.hparams.batch_size


def test_no_replay_leaves_the_training_set_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=0.0)
    make_trainer(tmp_path, 1).fit(make_module(tiny_model_dir), datamodule=data)
    assert data.replay_rows == 0 and len(data.train_dataset) == len(data._train_records)
    assert REPLAY_KIND not in {r["kind"] for r in data._train_records}


def test_the_base_model_writes_further_replay_prompts_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = cached_reply_files()
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=0.5)
    data.hparams.replay_self_prompts = 3
    make_trainer(tmp_path, 1).fit(make_module(tiny_model_dir), datamodule=data)
    assert data.replay_rows == round(len(data._train_records) * 0.5)
    entries = stored(cached_reply_files() - before)
    (writing,) = [entry for entry in entries if "self_prompts" in entry["key"]]
    assert len(writing["prompts"]) == 2 * 3  # two tries per prompt asked for: filtering drops some
    # Replies to the file's prompts, then to any the model wrote (a random tiny model may write none usable).
    assert any(entry["prompts"][: len(PROMPTS)] == PROMPTS for entry in stored(cached_reply_files()))


def logged_at_each_step(name: str, module, data, folder: Path, steps: int = 6) -> list[float]:
    """`name`'s logged value after each of `steps` training steps of `module` on `data`."""
    logged: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            logged.append(float(trainer.callback_metrics[name]))

    make_trainer(folder, steps, callbacks=[Record()]).fit(module, datamodule=data)
    return logged


def test_replay_kl_adds_the_base_models_distribution_on_replay_rows_to_the_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=1.0)
    logged = logged_at_each_step("train/replay_kl", make_module(tiny_model_dir, replay_kl=1.0), data, tmp_path)
    assert len(logged) == 6 and all(kl >= 0 for kl in logged)
    assert logged[0] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the base model
    assert max(logged) > 0  # once the adapter has moved, replay rows pull it back


def test_target_masked_kl_regularises_the_task_rows_of_a_run_without_replay(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=0.0)
    module = make_module(tiny_model_dir, target_masked_kl=1.0)
    logged = logged_at_each_step("train/target_masked_kl", module, data, tmp_path)
    assert len(logged) == 6 and all(kl >= 0 for kl in logged)
    assert logged[0] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the base model
    assert max(logged) > 0  # once the adapter has moved, the task rows' other tokens pull it back


def test_the_task_system_turn_marks_task_rows_and_leaves_replay_rows_unmarked(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = replay_datamodule(tiny_model_dir, tmp_path, ratio=0.5)
    data.hparams.task_system_prompt = "Math tutor."
    make_trainer(tmp_path, 1).fit(make_module(tiny_model_dir), datamodule=data)
    rows = [(data.tokenizer.decode(ids), replay) for ids, replay in
            zip(data.train_dataset["input_ids"], data.train_dataset["replay"])]
    assert {replay for _, replay in rows} == {True, False}
    for text, replay in rows:
        assert ("Math tutor." in text) is not replay
