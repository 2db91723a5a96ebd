"""`compare`: the grid it builds, the runs it reads instead of training, and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

import src.tools as tools
import src.tools.compare as compare
from src.errors import ConfigurationError


def held_out(best: float, base: float | None) -> dict:
    return {"base": base, "best": best, "count": 4, "base_per_kind": {} if base is None else {"add": base},
            "best_per_kind": {"add": best}}


def write_run(log_dir: Path, seed: int, lr: float, best: float, base: float | None = None) -> Path:
    """A finished run as `fit` leaves it: LightningCLI's config.yaml, RunReport's metrics.json beside the adapters."""
    log_dir.mkdir(parents=True)
    config = {"seed_everything": seed, "model": {"optimizer": {"learning_rate": lr}, "lora": {"r": 16}},
              "trainer": {"default_root_dir": str(log_dir), "max_steps": 5}}
    (log_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (log_dir / "adapters").mkdir()
    summary = {"held_out": {"val": held_out(best, base)}, "train_time_s": 12.0, "train_tokens_seen": 300, "total_steps": 5}
    path = log_dir / "adapters" / "metrics.json"
    path.write_text(json.dumps({"history": [], "summary": summary}), encoding="utf-8")
    return path


def test_set_values_are_parsed_into_a_grid_of_every_combination_for_every_seed() -> None:
    sets = compare.parse_sets(["model.optimizer.learning_rate=1e-3,2e-3", "--data.batch_size=2"])
    assert sets == [("model.optimizer.learning_rate", ["1e-3", "2e-3"]), ("data.batch_size", ["2"])]
    points = compare.grid(sets, compare.parse_seeds("42,1"))
    assert points == [
        ({"model.optimizer.learning_rate": "1e-3", "data.batch_size": "2"}, 42),
        ({"model.optimizer.learning_rate": "1e-3", "data.batch_size": "2"}, 1),
        ({"model.optimizer.learning_rate": "2e-3", "data.batch_size": "2"}, 42),
        ({"model.optimizer.learning_rate": "2e-3", "data.batch_size": "2"}, 1),
    ]
    assert compare.grid([], [None]) == [({}, None)]


def test_a_list_or_mapping_is_one_set_value() -> None:
    sets = compare.parse_sets(["model.lora.layers=[28, 29],null", "data.extra_math_files={a: x.jsonl, b: y.jsonl},{}"])
    assert sets == [("model.lora.layers", ["[28, 29]", "null"]), ("data.extra_math_files", ["{a: x.jsonl, b: y.jsonl}", "{}"])]


def test_bad_set_syntax_names_each_mistake_and_the_expected_form() -> None:
    with pytest.raises(ConfigurationError) as raised:
        compare.parse_sets([
            "model.optimizer.learning_rate", "learning_rate=1e-3", "model.optimizer.learning_rate=1e-3,", "seed_everything=1",
            "trainer.default_root_dir=x", "data.batch_size=2,2", "model.lora.r=8", "model.lora.r=16",
        ])
    lines = str(raised.value).splitlines()
    assert lines[0] == (
        "--set 'model.optimizer.learning_rate': expected --set SECTION.KEY=VALUE[,VALUE...], "
        "e.g. --set model.optimizer.learning_rate=1e-3,2e-3 (SECTION is model, data or trainer)"
    )
    assert lines[1].startswith("--set 'learning_rate=1e-3': expected --set SECTION.KEY=VALUE")
    assert lines[2] == "--set 'model.optimizer.learning_rate=1e-3,': an empty value; expected " + compare.SET_SYNTAX
    assert "seed_everything is set by the comparison for each run; give seeds with --seeds" in lines[3]
    assert "trainer.default_root_dir is set by the comparison" in lines[4]
    assert lines[5] == "--set 'data.batch_size=2,2': a value is repeated"
    assert lines[6] == "--set 'model.lora.r=16': model.lora.r is given twice; list all its values in one --set"
    assert len(lines) == 7


def test_bad_seeds_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"--seeds '42,x': expected comma-separated integers"):
        compare.parse_seeds("42,x")
    with pytest.raises(ConfigurationError, match="a seed is repeated"):
        compare.parse_seeds("1,1")
    assert compare.parse_seeds(None) == [None]


def test_a_runs_fit_options_carry_its_setting_seed_and_own_folder(tmp_path: Path) -> None:
    args = compare.fit_arguments(["--config", "c.yaml"], {"model.optimizer.learning_rate": "2e-3"}, 7, tmp_path, False)
    assert args == [
        "--config", "c.yaml", "--model.optimizer.learning_rate", "2e-3", "--seed_everything", "7",
        "--model.evaluate_base", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    assert compare.setting_folder({"model.optimizer.learning_rate": "1e-3", "data.batch_size": "2"}) == "learning_rate=1e-3_batch_size=2"
    assert compare.setting_folder({}) == "default"


def test_bad_set_syntax_fails_the_command_with_one_message_before_any_run(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(compare, "run_fit", lambda *a: pytest.fail("no run may start"))
    code = tools.run_tool("compare", ["--seeds", "1", "--set", "lr:1e-3", "--output_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: --set 'lr:1e-3': expected --set SECTION.KEY=VALUE")


def test_finished_runs_are_read_grouped_by_what_differs_and_by_seed(tmp_path: Path) -> None:
    write_run(tmp_path / "a" / "lightning_logs" / "version_0", 42, 1e-3, 0.5, base=0.25)
    write_run(tmp_path / "b" / "lightning_logs" / "version_0", 1, 1e-3, 0.75)
    write_run(tmp_path / "c" / "lightning_logs" / "version_0", 42, 2e-3, 1.0, base=0.25)
    runs = compare.read_runs([str(tmp_path)])
    assert [(r.seed, r.setting, r.summary["held_out"]["val"]["best"]) for r in runs] == [
        (42, {"model.optimizer.learning_rate": "0.001"}, 0.5),
        (1, {"model.optimizer.learning_rate": "0.001"}, 0.75),
        (42, {"model.optimizer.learning_rate": "0.002"}, 1.0),
    ]
    assert all(r.reused for r in runs)
    config = tmp_path / "a" / "lightning_logs" / "version_0" / "config.yaml"
    assert runs[0].command == ["python", "-m", "src.cli", "fit", "--config", str(config)]


def test_reading_runs_writes_the_comparison_without_training(tmp_path: Path, monkeypatch) -> None:
    write_run(tmp_path / "runs" / "x", 42, 1e-3, 0.5, base=0.25)
    write_run(tmp_path / "runs" / "y", 1, 1e-3, 0.75)
    monkeypatch.setattr(compare.subprocess, "run", _no_training(subprocess.run))
    out = tmp_path / "results" / "two-seeds"
    assert compare.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    data = json.loads((tmp_path / "results" / "two-seeds.json").read_text())
    table = data["settings"][0]["held_out"]["val"]
    assert table["overall"] == {"mean": 0.625, "worst": 0.5}
    assert data["cpu_kind"] == compare.cpu_kind()
    page = (tmp_path / "results" / "two-seeds.md").read_text()
    assert "| 42 | 50.00% | 50.00% | 12.0 s | 300 |" in page and "| 1 | 75.00% | 75.00% | 12.0 s | 300 |" in page


def test_runs_cannot_be_read_and_trained_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--runs reads finished runs: give it alone"):
        compare.main(["--runs", str(tmp_path), "--seeds", "1"])
    with pytest.raises(ConfigurationError, match="no metrics.json under it"):
        compare.main(["--runs", str(tmp_path)])


def test_a_finished_grid_run_is_read_not_rerun(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "default" / "seed_1"
    write_run(folder / "lightning_logs" / "version_0", 1, 1e-3, 0.75)
    command = ["python", "-m", "src.cli", "fit", "--seed_everything", "1"]
    (folder / compare.COMMAND_FILE).write_text(json.dumps({"command": command, "setting": {}, "seed": 1, "commit": "c0ffee"}))
    monkeypatch.setattr(compare.subprocess, "run", _no_training(subprocess.run))
    result = compare.run_fit(command, {}, 1, folder, commit="123abc")
    assert result.reused and result.summary["held_out"]["val"]["best"] == 0.75
    assert result.commit == "c0ffee", "the commit the run was trained at, not today's"


def test_a_grid_folder_holding_another_commands_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / compare.COMMAND_FILE).write_text(json.dumps({"command": ["python", "-m", "src.cli", "fit", "--a", "1"]}))
    with pytest.raises(ConfigurationError, match="holds a run of another command") as raised:
        compare.run_fit(["python", "-m", "src.cli", "fit", "--a", "2"], {}, 1, tmp_path, commit=None)
    assert "give another --output_dir, or remove that folder" in str(raised.value)


def test_a_crashed_run_is_recorded_as_failed_with_its_log(tmp_path: Path) -> None:
    result = compare.run_fit(["python", "-m", "src.cli", "fit", "--no_such_option", "1"], {}, 3, tmp_path, commit=None)
    assert result.summary is None and result.failure == f"exit code 2; see {tmp_path / compare.LOG_FILE}"
    assert "no_such_option" in (tmp_path / compare.LOG_FILE).read_text()


@pytest.mark.parametrize(
    ("flags", "kind"),
    [("fpu avx2 avx512f avx512_bf16", "AVX512-BF16"), ("fpu avx2 fma", "AVX2-only"), ("fpu sse4_2", "no AVX2")],
)
def test_the_cpu_kind_is_read_from_the_cpus_flags(tmp_path: Path, flags: str, kind: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert compare.cpu_kind(cpuinfo) == kind


def test_the_commit_and_dirty_flag_come_from_git(tmp_path: Path) -> None:
    commit, dirty = compare.git_state()
    assert commit is not None and len(commit) == 40 and isinstance(dirty, bool)
    assert compare.git_state(tmp_path) == (None, None)


def _no_training(real_run):
    """subprocess.run that lets git answer and fails the test on anything else (a training run)."""

    def run(command, *args, **kwargs):
        if command[0] != "git":
            pytest.fail(f"a run was started: {command}")
        return real_run(command, *args, **kwargs)

    return run
