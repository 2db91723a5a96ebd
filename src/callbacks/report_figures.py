"""`held_out.png`: the base model against the kept adapter, kind by kind, on every held-out set.

A line chart of math accuracy holds one point per validation and, with one look at the end, says
nothing; bars per kind (and per worked-step type) for each held-out set say what the tutor learnt,
where it still fails, and what it kept of the base model's general answers. Drawn from the run
summary alone (`metrics.json`'s `summary`), so a finished run can be drawn again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

BASE_COLOUR, KEPT_COLOUR = "#9e9e9e", "#1f77b4"


def held_out_figure(summary: Mapping[str, Any]) -> Figure:
    """One row per held-out set: accuracy per kind and wrong-step rate per step type, base beside kept;
    a last row with the retention set's share kept, when it was measured."""
    held_out: Mapping[str, Mapping[str, Any]] = summary.get("held_out") or {}
    retention = summary.get("retention")
    rows = max(len(held_out) + (1 if retention else 0), 1)
    fig = Figure(figsize=(14, 3.6 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    for (kind_ax, step_ax), (name, table) in zip(axes, held_out.items()):
        _paired_bars(kind_ax, table.get("base_per_kind") or {}, table.get("best_per_kind") or {},
                     f"{name}: accuracy per kind (overall {_pct(table.get('base'))} -> {_pct(table.get('best'))})")
        _paired_bars(step_ax, table.get("base_step_errors") or {}, table.get("best_step_errors") or {},
                     f"{name}: worked steps written wrong, per step type (lower is better)")
    if retention:
        ret_ax, empty_ax = axes[len(held_out)]
        _retention_bars(ret_ax, retention)
        empty_ax.set_axis_off()
    if not held_out and not retention:
        axes[0][0].text(0.5, 0.5, "no held-out set measured", ha="center", va="center")
    fig.tight_layout()
    return fig


def save_held_out_figure(summary: Mapping[str, Any], path: Path) -> None:
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    held_out_figure(summary).savefig(path, dpi=90)


def _paired_bars(ax: Axes, base: Mapping[str, float], kept: Mapping[str, float], title: str) -> None:
    labels = sorted({*base, *kept})
    ax.set_title(title, fontsize=10)
    if not labels:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    positions = range(len(labels))
    width = 0.4
    # NaN draws no bar: a kind or step type one side never met is "not measured", not 0%.
    ax.bar([p - width / 2 for p in positions], [100 * base.get(k, math.nan) for k in labels], width,
           label="base model", color=BASE_COLOUR)
    ax.bar([p + width / 2 for p in positions], [100 * kept.get(k, math.nan) for k in labels], width,
           label="kept adapter", color=KEPT_COLOUR)
    ax.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _retention_bars(ax: Axes, retention: Mapping[str, Any]) -> None:
    """The share of the base model's right general answers the kept adapter still gives (the base: 100%)."""
    ax.bar([0], [100 * (retention.get("kept") or 0.0)], 0.5, color=KEPT_COLOUR, label="kept adapter")
    ax.axhline(100, color=BASE_COLOUR, linestyle="--", label="base model")
    ax.set_xticks([0], ["kept adapter"])
    ax.set_xlim(-1, 1)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_ylabel("% of the base's right answers")
    ax.set_title(f"General ability kept (retention set, {int(retention.get('graded') or 0)} base-right answers; "
                 f"KL {_number(retention.get('kl'))} nats/token)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
