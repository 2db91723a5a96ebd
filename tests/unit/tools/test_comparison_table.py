"""The comparison's arithmetic on hand-made run summaries: per seed, mean, worst, overall and per kind."""

from __future__ import annotations

import pytest

from src.tools.comparison_table import Context, RunResult, comparison, markdown, setting_label

CONTEXT = Context(
    date="2026-12-02 10:00 UTC", cpu_kind="AVX2-only", cpu_cores=2, commit="abc123", dirty=True,
    command=["python", "-m", "src.cli", "compare", "--seeds", "42,1"],
)


def summary(val: dict[str, float], indep: dict[str, float], train_time_s: float, tokens: int, base: bool) -> dict:
    """A RunReport summary for sets `val` and `indep` of kinds add and sub; overall = the mean of the kinds."""

    def held(per_kind: dict[str, float]) -> dict:
        return {
            "base": 0.25 if base else None,
            "best": sum(per_kind.values()) / len(per_kind),
            "count": 8,
            "base_per_kind": {"add": 0.5, "sub": 0.0} if base else {},
            "best_per_kind": per_kind,
        }

    return {"held_out": {"val": held(val), "indep": held(indep)}, "train_time_s": train_time_s,
            "train_tokens_seen": tokens, "total_steps": 10, "duration_s": train_time_s + 30}


def run(seed: int, setting: dict[str, str] | None = None, **kwargs) -> RunResult:
    return RunResult(setting=setting or {}, seed=seed, folder=f"runs/seed_{seed}",
                     command=["python", "-m", "src.cli", "fit", "--seed_everything", str(seed)], **kwargs)


@pytest.fixture
def two_seeds() -> list[RunResult]:
    return [
        run(42, summary=summary({"add": 1.0, "sub": 0.5}, {"add": 0.75, "sub": 0.75}, 100.0, 1000, base=True)),
        run(1, summary=summary({"add": 0.5, "sub": 0.5}, {"add": 1.0, "sub": 0.25}, 140.0, 1000, base=False)),
    ]


def test_each_held_out_set_has_per_seed_rows_then_mean_and_worst(two_seeds) -> None:
    table = comparison(two_seeds, CONTEXT)["settings"][0]
    val = table["held_out"]["val"]
    assert [(r["seed"], r["overall"]) for r in val["per_seed"]] == [(42, 0.75), (1, 0.5)]
    assert val["overall"] == {"mean": 0.625, "worst": 0.5}
    assert val["per_kind"] == {"add": {"mean": 0.75, "worst": 0.5}, "sub": {"mean": 0.5, "worst": 0.5}}
    indep = table["held_out"]["indep"]
    assert indep["overall"] == {"mean": 0.6875, "worst": 0.625}
    assert indep["per_kind"]["sub"] == {"mean": 0.5, "worst": 0.25}
    assert list(table["held_out"]) == ["val", "indep"]


def test_the_base_model_is_read_from_the_run_that_measured_it(two_seeds) -> None:
    val = comparison(two_seeds, CONTEXT)["settings"][0]["held_out"]["val"]
    assert val["base"] == {"overall": 0.25, "per_kind": {"add": 0.5, "sub": 0.0}}
    assert val["count"] == 8


def test_training_time_worst_is_the_longest_and_tokens_are_kept(two_seeds) -> None:
    table = comparison(two_seeds, CONTEXT)["settings"][0]
    assert table["train_time_s"] == {"mean": 120.0, "worst": 140.0}
    assert table["train_tokens_seen"]["mean"] == 1000
    assert [r["train_time_s"] for r in table["per_seed"]] == [100.0, 140.0]


def test_settings_are_grouped_in_order_of_first_appearance() -> None:
    low, high = {"model.optimizer.learning_rate": "1e-3"}, {"model.optimizer.learning_rate": "2e-3"}
    runs = [
        run(42, low, summary=summary({"add": 1.0, "sub": 1.0}, {"add": 1.0, "sub": 1.0}, 10.0, 5, base=True)),
        run(42, high, summary=summary({"add": 0.0, "sub": 0.0}, {"add": 0.0, "sub": 0.0}, 10.0, 5, base=True)),
        run(1, low, summary=summary({"add": 0.5, "sub": 0.5}, {"add": 0.5, "sub": 0.5}, 10.0, 5, base=False)),
    ]
    settings = comparison(runs, CONTEXT)["settings"]
    assert [s["label"] for s in settings] == ["model.optimizer.learning_rate=1e-3", "model.optimizer.learning_rate=2e-3"]
    assert [r["seed"] for r in settings[0]["held_out"]["val"]["per_seed"]] == [42, 1]
    assert settings[0]["held_out"]["val"]["overall"] == {"mean": 0.75, "worst": 0.5}
    assert settings[1]["held_out"]["val"]["overall"] == {"mean": 0.0, "worst": 0.0}


def test_a_failed_run_is_listed_and_left_out_of_mean_and_worst(two_seeds) -> None:
    runs = [*two_seeds, run(2, failure="exit code 1; see runs/seed_2/fit.log")]
    data = comparison(runs, CONTEXT)
    table = data["settings"][0]
    assert (table["runs"], table["finished"]) == (3, 2)
    assert table["failed"] == [{"seed": 2, "folder": "runs/seed_2", "why": "exit code 1; see runs/seed_2/fit.log"}]
    assert table["held_out"]["val"]["overall"] == {"mean": 0.625, "worst": 0.5}
    assert "2 of 3 runs finished" in markdown(data) and "seed 2 did not finish: exit code 1" in markdown(data)


def test_the_markdown_names_machine_commit_commands_and_every_row(two_seeds) -> None:
    two_seeds[1].reused = True
    page = markdown(comparison(two_seeds, CONTEXT), title="Comparison: batch2")
    assert page.startswith("# Comparison: batch2\n")
    assert "commit abc123 (with uncommitted changes), CPU AVX2-only, 2 cores" in page
    assert "**val**, 8 questions" in page
    assert "| seed | overall | add | sub | training steps | training tokens |" in page
    assert "| base model | 25.00% | 50.00% | 0.00% | — | — |" in page
    assert "| 42 | 75.00% | 100.00% | 50.00% | 100 s | 1,000 |" in page
    assert "| **mean** | 62.50% | 75.00% | 50.00% | 120 s | 1,000 |" in page
    assert "| **worst** | 50.00% | 50.00% | 50.00% | 140 s | 1,000 |" in page
    assert "| the config as given | indep | 25.00% | 42: 75.00%, 1: 62.50% | 68.75% | 62.50% | 120 s / 140 s | 1,000 |" in page
    assert "python -m src.cli fit --seed_everything 42\n" in page
    assert "python -m src.cli fit --seed_everything 1  # read, already finished" in page
    assert "python -m src.cli compare --seeds 42,1" in page


def test_a_setting_label_lists_its_keys_in_order() -> None:
    assert setting_label({"model.optimizer.learning_rate": "1e-3", "data.batch_size": "4"}) == "model.optimizer.learning_rate=1e-3, data.batch_size=4"
    assert setting_label({}) == "the config as given"


def with_retention(result: RunResult, kept: float, kl: float, repeat: float) -> RunResult:
    result.summary["retention"] = {"base_acc": 0.285, "base_count": 200.0, "base_repeat": 0.098, "kept": kept,
                                   "graded": 57.0, "kl": kl, "repeat": repeat}
    return result


def test_retention_has_per_seed_rows_then_mean_and_worst(two_seeds) -> None:
    runs = [with_retention(two_seeds[0], 0.9, 0.1, 0.05), with_retention(two_seeds[1], 0.7, 0.3, 0.15)]
    data = comparison(runs, CONTEXT)
    retention = data["settings"][0]["retention"]
    assert retention["base"] == {"acc": 0.285, "count": 200.0, "repeat": 0.098}
    assert [(r["seed"], r["kept"]) for r in retention["per_seed"]] == [(42, 0.9), (1, 0.7)]
    assert retention["kept"] == {"mean": pytest.approx(0.8), "worst": 0.7}  # worst: the least kept
    assert retention["kl"] == {"mean": pytest.approx(0.2), "worst": 0.3}  # worst: the furthest from the base
    assert retention["repeat"]["worst"] == 0.15
    page = markdown(data)
    assert ("| the config as given | retention | 28.50% of 200 | 42: 90.00%, 1: 70.00% | 80.00% | 70.00% "
            "| 0.200 / 0.300 | 10.00% (9.80%) |") in page


def test_a_further_retention_set_gets_its_own_rows_under_its_name(two_seeds) -> None:
    runs = [with_retention(two_seeds[0], 0.9, 0.1, 0.05), with_retention(two_seeds[1], 0.7, 0.3, 0.15)]
    for run, kept in zip(runs, (0.75, 0.5)):
        run.summary["retention_sets"] = {"indep": {"base_acc": 0.3, "base_count": 80.0, "base_repeat": 0.1,
                                                   "kept": kept, "graded": 24.0, "kl": 0.09, "repeat": 0.1}}
    data = comparison(runs, CONTEXT)
    indep = data["settings"][0]["retention_sets"]["indep"]
    assert indep["kept"] == {"mean": pytest.approx(0.625), "worst": 0.5}
    assert data["settings"][0]["retention"]["kept"]["worst"] == 0.7  # the main set's numbers stay its own
    page = markdown(data)
    assert "| the config as given | indep | 30.00% of 80 | 42: 75.00%, 1: 50.00% | 62.50% | 50.00% |" in page


def test_what_measuring_retention_cost_is_reported_per_setting(two_seeds) -> None:
    runs = [with_retention(two_seeds[0], 0.9, 0.1, 0.05), with_retention(two_seeds[1], 0.7, 0.3, 0.15)]
    for run, seconds, share in zip(runs, (30.0, 50.0), (0.05, 0.08)):
        run.summary["retention_cost"] = {"total_s": seconds, "share_of_run": share}
    data = comparison(runs, CONTEXT)
    assert data["settings"][0]["retention_cost_s"] == {"mean": pytest.approx(40.0), "worst": 50.0}
    assert data["settings"][0]["retention_cost_share"] == {"mean": pytest.approx(0.065), "worst": 0.08}
    assert "- the config as given: 40 s mean, 50 s worst; 6.50% of the run's duration (worst 8.00%)" in markdown(data)


def test_runs_without_retention_have_no_retention_table(two_seeds) -> None:
    data = comparison(two_seeds, CONTEXT)
    assert data["settings"][0]["retention"] is None
    assert "kept per seed" not in markdown(data)
