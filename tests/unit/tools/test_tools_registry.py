"""Commands after training run through `python -m src.cli <command>`; training commands stay LightningCLI's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import src.tools as tools
from src.data.conversation import DataFormatError

ROOT = Path(__file__).resolve().parents[3]


def test_every_command_names_a_module_under_src_tools() -> None:
    assert set(tools.TOOLS) == {"chat", "answer", "merge", "export", "check-gguf", "doctor", "lr-find", "lr-sweep", "compare"}
    assert all(module.startswith("src.tools.") for module in tools.TOOLS.values())
    assert not {"fit", "validate", "test", "predict"} & set(tools.TOOLS)


def test_a_command_whose_module_is_absent_says_which_file_is_missing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(tools.TOOLS, "export", "src.tools.not_installed_module")
    assert tools.run_tool("export", []) == 2
    assert "src/tools/not_installed_module.py is missing" in capsys.readouterr().err


def test_a_users_mistake_is_one_message_and_exit_code_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def main(argv):
        raise DataFormatError("q.jsonl", "line 3", "missing key 'question'")

    monkeypatch.setattr(tools, "load_tool", lambda name: type("M", (), {"main": staticmethod(main)}))
    assert tools.run_tool("answer", []) == 2
    assert capsys.readouterr().err == "error: q.jsonl:line 3: missing key 'question'\n"


def test_the_cli_dispatches_commands_and_leaves_training_commands_to_lightning() -> None:
    doctor = subprocess.run([sys.executable, "-m", "src.cli", "doctor", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert doctor.returncode == 0 and "doctor" in doctor.stdout and "fix" in doctor.stdout
    fit = subprocess.run([sys.executable, "-m", "src.cli", "fit", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert fit.returncode == 0 and "--trainer.max_steps" in fit.stdout
