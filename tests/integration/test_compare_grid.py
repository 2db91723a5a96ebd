"""`compare` end to end: a real grid of two seeds on a tiny model, then the same command resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import arithmetic_rows, write_jsonl
from src.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def grid(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("compare")
    train = write_jsonl(folder / "train.jsonl", arithmetic_rows(24))
    val = write_jsonl(folder / "val.jsonl", arithmetic_rows(6, start=60))
    indep = write_jsonl(folder / "independent.jsonl", arithmetic_rows(4, start=80))
    argv = [
        "--config", str(ROOT / "configs" / "smollm2.yaml"),
        "--seeds", "42,1",
        "--set", "model.optimizer.learning_rate=2e-3",
        "--output_dir", str(folder / "runs"),
        "--out", str(folder / "results" / "tiny"),
        "--model.model_name", str(tiny_model_dir),
        "--model.generation.max_new_tokens", "4",
        "--data.train_file", str(train),
        "--data.val_file", str(val),
        "--data.extra_math_files", json.dumps({"indep": str(indep)}),
        "--data.batch_size", "4",
        "--data.eval_batch_size", "8",
        "--trainer.max_steps", "2",
        "--trainer.val_check_interval", "2",
        "--trainer.enable_progress_bar", "false",
    ]
    pytest.MonkeyPatch().setenv("OMP_NUM_THREADS", "1")  # tiny models gain nothing from threads
    assert run_tool("compare", argv) == 0
    return folder, argv


def test_each_seed_trains_in_its_own_folder_through_the_fit_command(grid) -> None:
    folder, _ = grid
    for seed in (42, 1):
        run = folder / "runs" / "learning_rate=2e-3" / f"seed_{seed}"
        recorded = json.loads((run / "command.json").read_text())
        assert recorded["command"][:4] == ["python", "-m", "src.cli", "fit"]
        assert recorded["command"][recorded["command"].index("--seed_everything") + 1] == str(seed)
        assert len(list(run.rglob("metrics.json"))) == 1 and list(run.rglob("adapter_model.safetensors"))


def test_the_comparison_has_a_row_per_seed_and_mean_and_worst_for_both_held_out_sets(grid) -> None:
    folder, _ = grid
    data = json.loads((folder / "results" / "tiny.json").read_text())
    assert [s["label"] for s in data["settings"]] == ["model.optimizer.learning_rate=2e-3"]
    table = data["settings"][0]
    assert list(table["held_out"]) == ["val", "indep"]
    for name, count in (("val", 6), ("indep", 4)):
        held = table["held_out"][name]
        assert [r["seed"] for r in held["per_seed"]] == [42, 1] and held["count"] == count
        accuracies = [r["overall"] for r in held["per_seed"]]
        assert held["overall"] == {"mean": sum(accuracies) / 2, "worst": min(accuracies)}
        assert held["base"] is not None and set(held["kinds"]) == {"add_1d"}
    assert all(r["train_tokens_seen"] > 0 and r["total_steps"] == 2 for r in table["per_seed"])
    assert data["cpu_kind"] in {"AVX512-BF16", "AVX2-only", "no AVX2"} and len(data["commit"]) == 12
    page = (folder / "results" / "tiny.md").read_text()
    assert page.count("| **mean** |") == 2 and page.count("| **worst** |") == 2
    assert page.count("--seed_everything 42") == 1 and "## model.optimizer.learning_rate=2e-3" in page


def test_the_base_model_is_measured_in_the_first_seed_only(grid) -> None:
    folder, _ = grid
    data = json.loads((folder / "results" / "tiny.json").read_text())
    base = [run["summary"]["held_out"]["val"]["base"] for run in data["runs"]]
    assert base[0] is not None and base[1] is None


def test_the_same_command_again_reads_the_finished_runs_without_training(grid, capsys) -> None:
    folder, argv = grid
    logs = sorted((folder / "runs").rglob("fit.log"))
    before = [log.stat().st_mtime_ns for log in logs]
    first = json.loads((folder / "results" / "tiny.json").read_text())
    capsys.readouterr()
    assert run_tool("compare", argv) == 0
    assert "(read, not re-run)" in capsys.readouterr().out
    assert [log.stat().st_mtime_ns for log in logs] == before
    again = json.loads((folder / "results" / "tiny.json").read_text())
    assert again["settings"] == first["settings"] and all(run["reused"] for run in again["runs"])


def test_a_key_fit_does_not_know_fails_before_any_run_starts(grid, capsys) -> None:
    folder, argv = grid
    bad = [*argv[:argv.index("--output_dir")], "--set", "model.learnin_rate=1", "--output_dir", str(folder / "other")]
    assert run_tool("compare", bad) == 2
    assert "unknown key model.learnin_rate (did you mean model.optimizer.learning_rate?)" in capsys.readouterr().err
    assert not (folder / "other").exists()
