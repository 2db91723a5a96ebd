"""The CLI end to end on a tiny random model saved to disk: fit, adapter files, validate, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import arithmetic_rows, write_jsonl
from src.callbacks.run_report import RunReport
from src.training.lightning_cli import cli_main
import src.models.precision as precision

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "data" / "examples"


def common_args(model_dir: Path, run_dir: Path) -> list[str]:
    return [
        "--model.model_name", str(model_dir),
        "--model.generation.max_new_tokens", "6",
        "--data.batch_size", "4",
        "--data.eval_batch_size", "8",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir / "tb_logs"),
        "--trainer.enable_progress_bar", "false",
    ]


@pytest.fixture(scope="module")
def fitted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("fit")
    train = write_jsonl(run_dir / "train.jsonl", arithmetic_rows(48))
    val = write_jsonl(run_dir / "val.jsonl", arithmetic_rows(12, start=60))
    independent = write_jsonl(run_dir / "independent.jsonl", arithmetic_rows(6, start=80))
    cli = cli_main(
        [
            "fit",
            "--config", str(ROOT / "configs" / "smollm2.yaml"),
            *common_args(tiny_model_dir, run_dir),
            "--data.train_file", str(train),
            "--data.val_file", str(val),
            "--data.math_eval_size", "8",
            "--data.extra_math_files", f'{{"indep": "{independent}"}}',
            "--trainer.max_steps", "6",
            "--trainer.val_check_interval", "3",
            "--trainer.log_every_n_steps", "1",
        ]
    )
    return cli, run_dir


def test_fit_logs_to_tensorboard_and_keeps_the_best_adapter_by_math_accuracy(fitted) -> None:
    cli, run_dir = fitted
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(run_dir / "tb_logs")
    assert list(log_dir.glob("events.out.tfevents.*"))
    best = log_dir / "adapters" / "best"
    assert (best / "adapter_model.safetensors").is_file() and (best / "adapter_config.json").is_file()
    assert not (best / "model.safetensors").exists(), "the frozen base is never saved with the adapter"
    assert cli.model.base_math_metrics is not None and "val/math_acc" in cli.model.base_math_metrics
    for key in ("train/loss", "train/grad_norm", "train/lr", "val/loss", "val/ppl", "val/math_acc"):
        assert key in cli.trainer.callback_metrics, key
    report_files = {"metrics.json", "metrics.csv", "training_metrics.png"}
    assert report_files <= {p.name for p in (log_dir / "adapters").iterdir()}, "the report sits beside the adapters"


def test_both_held_out_sets_are_reported_for_the_base_model_and_the_kept_adapter(fitted) -> None:
    cli, _ = fitted
    assert {"val/math_acc", "indep/math_acc", "indep/math_acc/add_1d"} <= set(cli.trainer.callback_metrics)
    assert {"val/math_acc", "indep/math_acc"} <= set(cli.model.base_math_metrics)
    assert cli.trainer.callback_metrics["indep/math_acc_count"] == 6
    report = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RunReport))
    held_out = report.summary["held_out"]
    assert list(held_out) == ["val", "indep"]
    kept = next(r for r in report.history if r["kind"] == "val" and r["step"] == report.summary["best_math_acc_step"])
    assert held_out["indep"]["best"] == kept["indep/math_acc"]
    assert held_out["indep"]["base"] == cli.model.base_math_metrics["indep/math_acc"]
    assert held_out["indep"]["best_per_kind"] == {"add_1d": kept["indep/math_acc/add_1d"]}


def test_the_adapter_is_kept_on_the_tuning_set_only(fitted) -> None:
    cli, _ = fitted
    from src.callbacks.adapter_checkpoint import AdapterCheckpoint
    from lightning.pytorch.callbacks import EarlyStopping

    monitors = {cb.monitor for cb in cli.trainer.callbacks if isinstance(cb, (AdapterCheckpoint, EarlyStopping))}
    assert monitors == {"val/math_acc"}


def test_the_adapter_folder_renders_the_training_prompt_byte_for_byte(fitted) -> None:
    cli, _ = fitted
    best = Path(cli.trainer.log_dir) / "adapters" / "best"
    loaded = AutoTokenizer.from_pretrained(best)  # what a plain PEFT user loads
    item = cli.datamodule.math_items[0]
    conversation = [{"role": "user", "content": item["question"]}]
    text = loaded.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text == cli.datamodule.formatter.prompt_text(conversation)
    assert "You are a helpful AI assistant" not in text
    ids = loaded.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids == item["prompt_ids"], "the ids the model was validated and trained on"


def test_the_saved_adapter_loads_with_plain_peft_and_matches_the_trained_weights(fitted, tiny_model_dir) -> None:
    cli, _ = fitted
    last = Path(cli.trainer.log_dir) / "adapters" / "last"
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), last)
    trained = {n: p for n, p in cli.model.model.named_parameters() if "lora_" in n}
    reloaded = dict(loaded.named_parameters())
    assert trained and all(torch.equal(p.cpu(), reloaded[n]) for n, p in trained.items())


def test_resuming_from_the_lightning_checkpoint_continues_at_the_saved_step(fitted, tiny_model_dir) -> None:
    cli, run_dir = fitted
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 6
    assert state["state_dict"] and all("lora_" in key for key in state["state_dict"])
    resumed = cli_main(
        [
            "fit",
            "--config", str(ROOT / "configs" / "smollm2.yaml"),
            *common_args(tiny_model_dir, run_dir / "resumed"),
            "--data.train_file", str(run_dir / "train.jsonl"),
            "--data.val_file", str(run_dir / "val.jsonl"),
            "--data.math_eval_size", "4",
            "--trainer.max_steps", "8",
            "--trainer.max_epochs", "3",  # the checkpoint closed epoch 0 when max_steps stopped it
            "--trainer.log_every_n_steps", "1",
            "--ckpt_path", str(checkpoint),
        ]
    )
    assert resumed.trainer.global_step == 8
    report = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, RunReport))
    trained_steps = [r["step"] for r in report.history if r["kind"] == "train"]
    assert trained_steps == [7, 8], "only the two missing steps are trained after resuming"


@pytest.mark.parametrize("data_file", ["chat.jsonl", "sharegpt.jsonl", "instruction.json", "qa_blocks.txt"])
def test_validate_runs_on_every_format_with_and_without_an_adapter(fitted, tiny_model_dir, data_file, tmp_path) -> None:
    cli, _ = fitted
    adapter = Path(cli.trainer.log_dir) / "adapters" / "best"
    for extra in ([], ["--model.adapter_path", str(adapter)]):
        validated = cli_main(
            [
                "validate",
                "--config", str(ROOT / "configs" / "smollm2.yaml"),
                *common_args(tiny_model_dir, tmp_path),
                "--data.val_file", str(EXAMPLES / data_file),
                *extra,
            ]
        )
        assert "val/loss" in validated.trainer.callback_metrics


def test_validate_reports_math_accuracy_per_kind_in_one_table(fitted, tiny_model_dir, tmp_path, capsys) -> None:
    cli, run_dir = fitted
    validated = cli_main(
        ["validate", "--config", str(ROOT / "configs" / "smollm2.yaml"), *common_args(tiny_model_dir, tmp_path),
         "--data.val_file", str(run_dir / "val.jsonl"), "--data.math_eval_size", "12"]
    )
    metrics = validated.trainer.callback_metrics
    assert metrics["val/math_acc_count"] == 12
    assert {"val/math_acc", "val/math_acc_strict", "val/math_acc/add_1d", "indep/math_acc"} <= set(metrics)
    assert {"retain/kept", "retain/kl", "retain/repeat"} <= set(metrics), "validate reports retention too"
    printed = capsys.readouterr().out
    assert "DataLoader" not in printed, "one table, not one per validation loader"
    rows = [line.split()[0] for line in printed.splitlines() if line.startswith(("val/", "indep/", "retain/"))]
    assert sorted(rows) == sorted(metrics), "every metric exactly once"


def test_test_and_predict_answer_the_graded_validation_items(fitted, tiny_model_dir, tmp_path) -> None:
    cli, run_dir = fitted
    args = [*common_args(tiny_model_dir, tmp_path), "--data.val_file", str(run_dir / "val.jsonl")]
    tested = cli_main(["test", "--config", str(ROOT / "configs" / "smollm2.yaml"), *args, "--data.math_eval_size", "5"])
    assert tested.trainer.callback_metrics["val/math_acc_count"] == 5
    predicted = cli_main(["predict", "--config", str(ROOT / "configs" / "smollm2.yaml"), *args])
    replies = [reply for batch in predicted.trainer.predict_loop.predictions for reply in batch]
    assert len(replies) == 12 and all(isinstance(reply, str) for reply in replies)


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_is_resolved_for_this_machine(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    cli = cli_main(
        ["--config", str(ROOT / "configs" / "smollm2.yaml"), *common_args(tiny_model_dir, tmp_path)],
        run=False,
    )
    assert cli.trainer.precision == expected


def test_validate_grades_plain_answer_files(fitted, tiny_model_dir, tmp_path, caplog) -> None:
    rows = [{"question": f"What is {a} + 7?", "answer": str(a + 7)} for a in range(3)]
    rows.append({"question": "¿Y 2 + 3?", "answer": "Sumamos: la respuesta es 5"})
    rows.append({"question": "Say hi", "answer": "Hi!"})
    val = write_jsonl(tmp_path / "questions.jsonl", rows)
    args = ["validate", "--config", str(ROOT / "configs" / "smollm2.yaml"), *common_args(tiny_model_dir, tmp_path),
            "--data.val_file", str(val)]
    validated = cli_main(args)
    assert validated.trainer.callback_metrics["val/math_acc_count"] == 4
    assert (
        f"Math accuracy: grading 4 of 5 items of {val}; 0 with an 'expected' value, 4 read from the reference answers."
        in caplog.text
    )

    caplog.clear()
    cli_main([*args, "--data.grade_from_answers", "false"])
    assert (
        f"Math accuracy: no item of {val} can be graded: none of its 5 rows has an 'expected' value "
        "(data.grade_from_answers=false). Only loss and perplexity are reported."
    ) in caplog.text
