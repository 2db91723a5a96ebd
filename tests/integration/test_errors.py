"""Bad input and configuration mistakes through the CLI: one message on stderr, a non-zero exit, no traceback,
and nothing already saved (an adapter folder, a checkpoint) touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import arithmetic_rows, write_jsonl
from src.cli import main
from src.models import quantization

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smollm2.yaml"
HELP = "run `python -m src.cli fit --help` for the accepted keys"


@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT adapter of the tiny model, as a finished run leaves it."""
    folder = tmp_path_factory.mktemp("saved") / "adapters" / "best"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.fixture
def run_dir(tmp_path: Path, saved_adapter: Path) -> Path:
    """A run folder that already holds an adapter and a checkpoint from an earlier run."""
    run = tmp_path / "run"
    shutil.copytree(saved_adapter.parent, run / "tb_logs" / "lightning_logs" / "version_0" / "adapters")
    (run / "checkpoints").mkdir()
    torch.save({"global_step": 6}, run / "checkpoints" / "last.ckpt")
    return run


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fit_args(model_dir: Path, run: Path, train: Path, val: Path) -> list[str]:
    return [
        "fit", "--config", str(CONFIG),
        "--model.model_name", str(model_dir),
        "--model.generation.max_new_tokens", "4",
        "--model.evaluate_base", "false",
        "--data.train_file", str(train),
        "--data.val_file", str(val),
        "--data.batch_size", "4",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.max_steps", "3",
        "--trainer.default_root_dir", str(run),
        "--trainer.logger.init_args.save_dir", str(run / "tb_logs"),
        "--trainer.enable_progress_bar", "false",
    ]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, the one `error:` line without its prefix, all of stderr)."""
    code = main(args)
    err = capsys.readouterr().err
    lines = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return code, lines[0], err


# Each case: (name, how to break the inputs, the exact message, exit code). `make` gets the tmp folder and
# the default arguments (a good fit on the tiny model) and returns the arguments to run.
Case = Callable[[Path, list[str]], list[str]]


def with_config(tmp: Path, text: str) -> str:
    path = tmp / "overlay.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def flag(args: list[str], key: str, value: str) -> list[str]:
    return [*args, key, value]


def bad_rows(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_bytes(text.encode("latin-1") if name.endswith(".latin1.jsonl") else text.encode("utf-8"))
    return str(path)


GOOD_CHAT = json.dumps(arithmetic_rows(1)[0])

CASES: list[tuple[str, Case, str, int]] = [
    (
        "unknown key in a config file",
        lambda tmp, args: [*args, "--config", with_config(tmp, "model:\n  lora_rr: 8\n")],
        "{tmp}/overlay.yaml:2: unknown key model.lora_rr (did you mean model.lora.r?); " + HELP,
        2,
    ),
    (
        "unknown key on the command line",
        lambda tmp, args: flag(args, "--trainer.max_stepz", "3"),
        "command line (--trainer.max_stepz): unknown key trainer.max_stepz (did you mean trainer.max_steps?); " + HELP,
        2,
    ),
    (
        "wrong type in a config file",
        lambda tmp, args: [*args, "--config", with_config(tmp, "data:\n  batch_size: four\n")],
        "{tmp}/overlay.yaml:2: data.batch_size: expected an int, got four; " + HELP,
        2,
    ),
    (
        "value outside the accepted choices",
        lambda tmp, args: flag(args, "--data.order", "random"),
        "command line (--data.order): data.order: expected one of 'length_grouped', 'shuffle', 'sequential', "
        "got random; " + HELP,
        2,
    ),
    (
        "config file that is not valid YAML",
        lambda tmp, args: [*args, "--config", with_config(tmp, "model:\n  seed: [1\n")],
        "{tmp}/overlay.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'; "
        "fix the syntax (indentation, brackets, quotes)",
        2,
    ),
    (
        "config file that does not exist",
        lambda tmp, args: [*args, "--config", str(tmp / "missing.yaml")],
        "--config: File does not exist: '{tmp}/missing.yaml' (relative paths start from {cwd})",
        2,
    ),
    (
        "model given as a pickle file",
        lambda tmp, args: flag(args, "--model.model_name", str(tmp / "pytorch_model.bin")),
        "model.model_name: {tmp}/pytorch_model.bin is a pickle file (.bin); loading one can run arbitrary code, so "
        "weights are read from safetensors only. Point model.model_name at a folder with *.safetensors weights "
        "(convert a trusted file once with transformers' save_pretrained(safe_serialization=True)).",
        2,
    ),
    (
        "adapter given as a Lightning checkpoint",
        lambda tmp, args: flag(args, "--model.adapter_path", str(tmp / "run" / "checkpoints" / "last.ckpt")),
        "model.adapter_path: {tmp}/run/checkpoints/last.ckpt is a pickle file (.ckpt); loading one can run arbitrary "
        "code, so weights are read from safetensors only. Point model.adapter_path at a folder with *.safetensors "
        "weights (convert a trusted file once with transformers' save_pretrained(safe_serialization=True)). A "
        "Lightning checkpoint (.ckpt) resumes a run with --ckpt_path instead.",
        2,
    ),
    (
        "adapter folder with pickled weights only",
        lambda tmp, args: flag(args, "--model.adapter_path", pickled_adapter(tmp)),
        "model.adapter_path: {tmp}/pickled holds only pickled weights (adapter_model.bin) and no *.safetensors; "
        "loading pickles can run arbitrary code, so weights are read from safetensors only. Convert a trusted "
        "folder once: load it and save_pretrained(folder, safe_serialization=True).",
        2,
    ),
    (
        "adapter folder that does not exist",
        lambda tmp, args: flag(args, "--model.adapter_path", str(tmp / "nope")),
        "model.adapter_path: {tmp}/nope does not exist; expected a PEFT adapter folder such as <run>/adapters/best",
        2,
    ),
    (
        "the folder above the adapters",
        lambda tmp, args: flag(args, "--model.adapter_path", str(adapters_of(tmp))),
        "model.adapter_path: {adapters} has no adapter_config.json, so it is not a PEFT adapter folder; the adapters "
        "inside it are best: use {adapters}/best",
        2,
    ),
    (
        "adapter trained on another base model",
        lambda tmp, args: flag(args, "--model.adapter_path", foreign_adapter(tmp)),
        "model.adapter_path: the adapter {tmp}/foreign was trained on HuggingFaceTB/SmolLM2-360M-Instruct, but "
        "model.model_name is {model}; an adapter only fits the base model it was trained on. Set model.model_name "
        "to HuggingFaceTB/SmolLM2-360M-Instruct, or use an adapter trained on {model}.",
        2,
    ),
    (
        "model folder that does not exist",
        lambda tmp, args: flag(args, "--model.model_name", "./models/nope"),
        "model.model_name: the folder ./models/nope does not exist (relative paths start from {cwd})",
        2,
    ),
    (
        "architecture file that does not exist",
        lambda tmp, args: [*args, "--model.random_init", "true", "--model.architecture", str(tmp / "arch.json")],
        "model.architecture: {tmp}/arch.json does not exist (expected a config.json-style file)",
        2,
    ),
    (
        "data file that does not exist",
        lambda tmp, args: flag(args, "--data.train_file", str(tmp / "train-missing.jsonl")),
        "{tmp}/train-missing.jsonl: file not found",
        2,
    ),
    (
        "truncated JSON line",
        lambda tmp, args: flag(args, "--data.train_file", bad_rows(tmp, "cut.jsonl", GOOD_CHAT + "\n" + GOOD_CHAT[:30] + "\n")),
        "{tmp}/cut.jsonl:line 2: invalid JSON: Expecting property name enclosed in double quotes at column 31; expected one JSON "
        "object per line",
        2,
    ),
    (
        "unknown role",
        lambda tmp, args: flag(args, "--data.train_file", bad_rows(tmp, "role.jsonl", GOOD_CHAT.replace('"user"', '"teacher"') + "\n")),
        "{tmp}/role.jsonl:line 1: messages[0].role: unknown role 'teacher'; accepted roles: system, user, assistant",
        2,
    ),
    (
        "file that is not UTF-8",
        lambda tmp, args: flag(args, "--data.train_file", bad_rows(tmp, "rows.latin1.jsonl", '{"question": "¿Cuánto es 2 + 2?", "answer": "4"}\n')),
        "{tmp}/rows.latin1.jsonl:line 1: byte 0xbf at byte offset 14 is not valid UTF-8; the file must be UTF-8 "
        "encoded (re-save it as UTF-8)",
        2,
    ),
    (
        "expected answer that is not a number",
        lambda tmp, args: flag(args, "--data.val_file", bad_rows(tmp, "val.jsonl", GOOD_CHAT.replace('"expected": "0"', '"expected": "cero"') + "\n")),
        '{tmp}/val.jsonl:line 1: \'expected\' must be a number such as "68", "-3", "2.5" or "3/4", got string "cero"',
        2,
    ),
    (
        "chat without an assistant turn",
        lambda tmp, args: flag(args, "--data.train_file", bad_rows(tmp, "noanswer.jsonl", json.dumps({"messages": [{"role": "user", "content": "hola"}]}) + "\n")),
        "{tmp}/noanswer.jsonl:line 1: the conversation has no assistant turn; at least one is needed to train on",
        2,
    ),
    (
        "fit without a training file",
        lambda tmp, args: flag(args, "--data.train_file", "null"),
        "data.train_file is required to fit (data.val_file alone is enough to validate)",
        2,
    ),
    (
        "validation fraction outside (0, 1)",
        lambda tmp, args: [*args, "--data.val_file", "null", "--data.val_fraction", "1.5"],
        "data.val_fraction: 1.5; expected a number in [0, 1) (set it in the config or with --<key> <value>)",
        2,
    ),
    (
        "learning rate that makes training diverge",
        # Validation (and so an adapter save) only after the step that diverges.
        lambda tmp, args: [*args, "--model.optimizer.learning_rate", "1e30", "--trainer.val_check_interval", "3"],
        "Training stopped at step 1: the training loss is nan. The likely cause is a learning rate too high for this "
        "model (model.optimizer.learning_rate=1e+30): lower it, e.g. tenfold, and keep trainer.gradient_clip_val set. Adapters "
        "saved before this step were not touched.",
        1,
    ),
]


def pickled_adapter(tmp: Path) -> str:
    folder = tmp / "pickled"
    shutil.copytree(adapters_of(tmp) / "best", folder)
    (folder / "adapter_model.safetensors").unlink()
    torch.save({}, folder / "adapter_model.bin")
    return str(folder)


def foreign_adapter(tmp: Path) -> str:
    folder = tmp / "foreign"
    shutil.copytree(adapters_of(tmp) / "best", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


def adapters_of(tmp: Path) -> Path:
    return tmp / "run" / "tb_logs" / "lightning_logs" / "version_0" / "adapters"


@pytest.mark.parametrize(("name", "make", "message", "code"), CASES, ids=[case[0] for case in CASES])
def test_a_mistake_gives_one_message_and_touches_nothing_saved(
    name: str, make: Case, message: str, code: int, tiny_model_dir: Path, run_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TUTOR_TUNE_TRACEBACK", raising=False)
    args = make(tmp_path, good_args(tiny_model_dir, run_dir, tmp_path))
    expected = message.format(tmp=tmp_path, cwd=Path.cwd(), model=tiny_model_dir, adapters=adapters_of(tmp_path))
    assert_fails_cleanly(args, expected, code, run_dir, capsys)


def good_args(model_dir: Path, run: Path, tmp: Path) -> list[str]:
    train = write_jsonl(tmp / "train.jsonl", arithmetic_rows(12))
    val = write_jsonl(tmp / "good-val.jsonl", arithmetic_rows(4, start=40))
    return fit_args(model_dir, run, train, val)


def assert_fails_cleanly(args: list[str], message: str, code: int, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = files(run)
    exit_code, shown, stderr = run_cli(args, capsys)
    assert shown == message
    assert exit_code == code
    assert "Traceback" not in stderr
    after = files(run)
    assert {path: after.get(path) for path in before} == before, "files saved before the run are unchanged"
    assert not [p for p in set(after) - set(before) if p.endswith((".safetensors", ".ckpt"))], "no adapter or checkpoint written"


def test_4bit_where_bitsandbytes_cannot_run(tiny_model_dir: Path, run_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    args = [*good_args(tiny_model_dir, run_dir, tmp_path), "--model.quantization", "nf4"]
    message = (
        f"model.quantization: nf4 needs the bitsandbytes package, which is not installed. Install it "
        f"(pip install {quantization.BITSANDBYTES_PIN}) or set model.quantization: null."
    )
    assert_fails_cleanly(args, message, 2, run_dir, capsys)


def test_the_traceback_is_shown_on_request(tiny_model_dir: Path, run_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(4))
    args = [*fit_args(tiny_model_dir, run_dir, train, train), "--model.adapter_path", str(tmp_path / "nope")]
    for flag_args, env in (([*args, "--traceback"], None), (args, "1")):
        if env:
            monkeypatch.setenv("TUTOR_TUNE_TRACEBACK", env)
        code, shown, stderr = run_cli(flag_args, capsys)
        assert code == 2 and shown.startswith("model.adapter_path: ")
        assert "Traceback (most recent call last)" in stderr and "src/sources/checks.py" in stderr


def test_bugs_keep_their_traceback(capsys) -> None:
    def broken(argv):
        raise KeyError("not a user mistake")

    from src.cli import run_reporting_errors

    with pytest.raises(KeyError):
        run_reporting_errors(broken, [])


def test_a_hub_model_without_network_names_the_offline_choices(tmp_path: Path) -> None:
    """Through a real process: the exit code, stderr, and no traceback, with the hub switched off."""
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUTOR_TUNE_CACHE": str(tmp_path / "cache")}
    env.pop("TUTOR_TUNE_TRACEBACK", None)
    name = "acme-nonexistent/tiny-model-xyz"
    result = subprocess.run(
        [sys.executable, "-m", "src.cli", "validate", "--config", str(CONFIG), "--model.model_name", name,
         "--data.val_file", str(val), "--trainer.default_root_dir", str(tmp_path / "run"),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "run")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: model.model_name: {name} is not a local folder, and this machine is offline (HF_HUB_OFFLINE=1 is "
        "set) so the Hugging Face Hub cannot be reached. Use the offline default, which needs no network: "
        "model.model_name=offline:SmolLM2-135M-Instruct; or random weights of the configured architecture: add "
        f"--config configs/overlays/random_init.yaml; or download {name} once while online."
    ]


def test_out_of_range_settings_are_refused_together_and_leave_no_log_folder(
    tiny_model_dir: Path, run_dir: Path, tmp_path: Path, capsys
) -> None:
    args = [*good_args(tiny_model_dir, run_dir, tmp_path), "--model.lora.r", "-4", "--data.batch_size", "0"]
    args[0] = "validate"
    before = versions(run_dir)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: 2 settings are out of range" in err
    assert "  model.lora.r: -4; expected an integer >= 1" in err and "  data.batch_size: 0; expected an integer >= 1" in err
    assert versions(run_dir) == before


def test_a_validate_refused_after_the_logger_started_removes_its_empty_version_folder(
    tiny_model_dir: Path, run_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    args = [*good_args(tiny_model_dir, run_dir, tmp_path), "--model.quantization", "nf4"]
    args[0] = "validate"
    before = versions(run_dir)
    assert main(args) == 2
    assert "bitsandbytes package" in capsys.readouterr().err
    assert versions(run_dir) == before  # Lightning had created version_N/ with an empty event file


def versions(run: Path) -> set[Path]:
    return set((run / "tb_logs").glob("**/version_*"))
