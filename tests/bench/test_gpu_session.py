"""bench/gpu_session.sh runs on a machine where a mistake costs a whole call, so what can be checked
without a GPU is checked here: it is valid bash, every file it names exists, every `bench.train_speed`
command in it parses into a config the CLI accepts, and without CUDA it stops with a message."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.train_speed import build_cli, parse_args

SCRIPT = Path("bench/gpu_session.sh")


def bench_commands(text: str) -> list[list[str]]:
    """The `bench.train_speed` argument lists, with the script's arrays and variables filled in."""
    arrays = {name: shlex.split(body.replace("\n", " ")) for name, body in re.findall(r"^(\w+)=\((.*?)\)", text, re.S | re.M)}
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if "-m bench.train_speed" not in line:
            continue
        words = []
        for word in shlex.split(line.split("-m bench.train_speed", 1)[1]):
            array = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            words += arrays[array.group(1)] if array else [word]
        values = {"$TOKENIZER": "tests/assets/tiny-chatml-tokenizer", "$STEPS": "2", "$FRACTION": "0.03"}
        commands.append([values.get(word, word.replace("$OUT", "out")) for word in words])
    return commands


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_test_file_and_config_it_names_exists() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    named = re.findall(r"(?:tests|configs)/[\w/.-]+\.(?:py|yaml)", text)
    assert len(named) >= 8
    assert [path for path in named if not Path(path).is_file()] == []


def test_every_benchmark_command_builds_the_configured_run() -> None:
    commands = bench_commands(SCRIPT.read_text(encoding="utf-8"))
    assert len(commands) == 4
    four_gib, *anchors = commands
    options = parse_args(four_gib)
    hparams = build_cli(options).model.hparams
    assert options.memory_fraction == pytest.approx(0.03) and options.hf_compile == "no"
    assert (hparams.quantization, hparams.optimizer["name"], hparams.gradient_checkpointing) == ("nf4", "paged_adamw_8bit", True)
    for command in anchors:
        options = parse_args(command)
        assert options.random_init and options.precision == "bf16-mixed"
        hparams = build_cli(options).model.hparams
        assert hparams.quantization is None and hparams.lora["r"] == 16 and hparams.lora["target_modules"] == "all-linear"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_stops_with_a_message(tmp_path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "CARRY": str(tmp_path / "nothing carried")}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no CUDA device: nothing to measure" in result.stdout
    assert (tmp_path / "session.log").is_file()
