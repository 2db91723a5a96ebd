"""`held_out.png`: per held-out set, the base model's and the kept adapter's accuracy per kind and wrong-step
rate per step type, as paired bars; the retention set's share kept below; drawn from the summary alone."""

from __future__ import annotations

import math
from pathlib import Path

from src.callbacks.report_figures import held_out_figure, save_held_out_figure


def held(base: dict[str, float], best: dict[str, float], base_steps: dict[str, float], best_steps: dict[str, float]):
    return {"base": 0.1, "best": 0.9, "count": 4, "base_per_kind": base, "best_per_kind": best,
            "base_step_errors": base_steps, "best_step_errors": best_steps}


SUMMARY = {
    "held_out": {
        "val": held({"add": 0.25, "sub": 0.0}, {"add": 1.0, "sub": 0.75}, {"add_1d": 0.5}, {"add_1d": 0.0}),
        "indep": held({"add": 0.5, "sub": 0.25}, {"add": 0.75, "sub": 0.5}, {}, {}),
    },
    "retention": {"base_acc": 0.3, "base_count": 200, "base_repeat": 0.1, "kept": 0.8, "graded": 57, "kl": 0.2,
                  "repeat": 0.05},
}


def bar_heights(ax) -> list[float | None]:
    """Heights of the drawn bars; None for a bar left out (a kind one side never met)."""
    return [None if math.isnan(patch.get_height()) else round(patch.get_height(), 6) for patch in ax.patches]


def test_each_set_has_base_and_kept_bars_per_kind_and_per_step_type() -> None:
    axes = held_out_figure(SUMMARY).axes
    assert len(axes) == 6  # val, indep, retention rows; two panels each
    val_kinds, val_steps, indep_kinds, indep_steps = axes[:4]
    assert bar_heights(val_kinds) == [25.0, 0.0, 100.0, 75.0]  # base add, base sub, kept add, kept sub
    assert [t.get_text() for t in val_kinds.get_xticklabels()] == ["add", "sub"]
    assert bar_heights(val_steps) == [50.0, 0.0]
    assert bar_heights(indep_kinds) == [50.0, 25.0, 75.0, 50.0]
    assert bar_heights(indep_steps) == [] and "not measured" in [t.get_text() for t in indep_steps.texts]
    assert "val" in val_kinds.get_title() and "10.0% -> 90.0%" in val_kinds.get_title()


def test_a_step_type_only_one_side_met_has_no_bar_on_the_other() -> None:
    summary = {"held_out": {"val": held({"add": 0.5}, {"add": 1.0}, {"compare": 0.4}, {"add_3d": 0.25})}}
    _, steps = held_out_figure(summary).axes
    assert [t.get_text() for t in steps.get_xticklabels()] == ["add_3d", "compare"]
    assert bar_heights(steps) == [None, 40.0, 25.0, None]


def test_the_retention_panel_shows_the_share_kept() -> None:
    retention_ax = held_out_figure(SUMMARY).axes[4]
    assert bar_heights(retention_ax) == [80.0]
    assert "57 base-right answers" in retention_ax.get_title()


def test_a_run_without_retention_or_held_out_sets_still_draws(tmp_path: Path) -> None:
    assert len(held_out_figure({"held_out": {"val": SUMMARY["held_out"]["val"]}}).axes) == 2
    save_held_out_figure({}, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
