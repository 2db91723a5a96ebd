"""jsonargparse's parse errors rewritten as one message naming the key, its file and line."""

from __future__ import annotations

from pathlib import Path

from src.config_errors import key_line, readable_parse_error
from src.data.datamodule import TutorDataModule
from src.training.tutor_module import TutorModule

SECTIONS = {"model": TutorModule, "data": TutorDataModule}


def test_key_line_finds_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# header\nmodel:\n  lora_r: 8\ndata:\n  batch_size: 4\n", encoding="utf-8")
    assert key_line(path, "model.lora_r") == 3
    assert key_line(path, "data.batch_size") == 5
    assert key_line(path, "data.order") is None
    assert key_line(tmp_path / "missing.yaml", "model") is None


def test_the_last_file_that_sets_a_key_is_named(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("data:\n  batch_size: four\n", encoding="utf-8")
    second.write_text("model:\n  lora_r: 2\ndata:\n  batch_size: five\n", encoding="utf-8")
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
