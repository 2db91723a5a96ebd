"""jsonargparse's parse errors rewritten as one message naming the key, its file and line."""

from __future__ import annotations

from pathlib import Path

from src.config_errors import key_line, readable_parse_error
from src.data.datamodule import TutorDataModule
from src.training.tutor_module import TutorModule

SECTIONS = {"model": TutorModule, "data": TutorDataModule}


def test_key_line_finds_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# header\nmodel:\n  lora:\n    r: 8\ndata:\n  batch_size: 4\n", encoding="utf-8")
    assert key_line(path, "model.lora.r") == 4
    assert key_line(path, "data.batch_size") == 6
    assert key_line(path, "data.order") is None
    assert key_line(tmp_path / "missing.yaml", "model") is None


def test_the_last_file_that_sets_a_key_is_named(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("data:\n  batch_size: four\n", encoding="utf-8")
    second.write_text("model:\n  seed: 2\ndata:\n  batch_size: five\n", encoding="utf-8")
    message = 'Parser key "data.batch_size":\n  Expected a <class \'int\'>. Got value: five'
    args = ["fit", "--config", str(first), "-c", str(second)]
    assert readable_parse_error(message, args, SECTIONS) == (
        f"{second}:4: data.batch_size: expected an int, got five; run `python -m src.cli fit --help` for the accepted keys"
    )


def test_an_unknown_key_gets_the_closest_accepted_one() -> None:
    message = "Subcommand 'validate' does not accept option 'data.val_files'"
    assert readable_parse_error(message, ["validate", "--data.val_files", "x"], SECTIONS) == (
        "command line (--data.val_files): unknown key data.val_files (did you mean data.val_file?); "
        "run `python -m src.cli validate --help` for the accepted keys"
    )


def test_a_flat_key_of_an_earlier_config_names_its_grouped_key(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  seed: 1\n  lora_r: 8\n", encoding="utf-8")
    message = "Subcommand 'fit' does not accept option 'model.lora_r'"
    assert readable_parse_error(message, ["fit", "--config", str(path)], SECTIONS) == (
        f"{path}:3: model.lora_r is now model.lora.r; rename it (the model's settings are grouped)"
    )
    message = "Subcommand 'fit' does not accept option 'model.learning_rate'"
    assert readable_parse_error(message, ["fit", "--model.learning_rate", "1e-3"], SECTIONS) == (
        "command line (--model.learning_rate): model.learning_rate is now model.optimizer.learning_rate; "
        "rename it (the model's settings are grouped)"
    )


def test_an_optimizer_name_where_the_group_belongs_says_where_the_name_goes(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  optimizer: adamw_8bit\n", encoding="utf-8")
    message = 'Parser key "model.optimizer":\n  Expected a <class \'OptimizerSettings\'>. Got value: adamw_8bit'
    assert readable_parse_error(message, ["fit", "-c", str(path)], SECTIONS) == (
        f"{path}:2: model.optimizer is a group now: set its name as model.optimizer.name"
    )


def test_a_misspelt_field_of_a_group_gets_the_closest_field() -> None:
    message = "Subcommand 'fit' does not accept option 'model.lora.alpah'"
    assert readable_parse_error(message, ["fit", "--model.lora.alpah", "8"], SECTIONS).startswith(
        "command line (--model.lora.alpah): unknown key model.lora.alpah (did you mean model.lora.alpha?)"
    )
