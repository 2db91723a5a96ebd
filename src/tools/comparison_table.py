"""Pure tables for `compare`: finished runs' `metrics.json` summaries in, per-seed/mean/worst out.

Nothing here runs or reads anything: `src/tools/compare.py` gathers the runs and the machine facts,
these functions turn them into the comparison's JSON and markdown, so the arithmetic is tested on
hand-made summaries.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any


@dataclass
class RunResult:
    """One run of the grid: its setting and seed, where it lives, how it was started, what it measured.

    `summary` is the `summary` of the run's `metrics.json` (see `src/callbacks/run_report.py`); None
    for a run that did not finish, whose `failure` says why.
    """

    setting: dict[str, str]
    seed: int | None
    folder: str
    command: list[str]
    summary: dict[str, Any] | None = None
    failure: str | None = None
    commit: str | None = None
    reused: bool = False
    """True when the run was found finished and read, not trained by this comparison."""


@dataclass
class Context:
    """What makes the numbers reproducible: machine, code version, the comparison's own command."""

    date: str
    cpu_kind: str
    cpu_cores: int | None
    commit: str | None
    dirty: bool | None
    command: list[str]
    notes: list[str] = field(default_factory=list)


def setting_label(setting: dict[str, str]) -> str:
    """`model.optimizer.learning_rate=1e-3, data.batch_size=2`; the config as given when nothing is varied."""
    return ", ".join(f"{key}={value}" for key, value in setting.items()) or "the config as given"


def _stats(values: Sequence[float | None], worst_is_max: bool = False) -> dict[str, float | None]:
    """Mean and worst over the measured values; worst is the lowest accuracy or the longest time."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "worst": None}
    return {"mean": fmean(present), "worst": max(present) if worst_is_max else min(present)}


def _held_out_names(runs: Sequence[RunResult]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for name in (run.summary or {}).get("held_out", {}):
            if name not in names:
                names.append(name)
    return names


def _set_table(runs: Sequence[RunResult], name: str) -> dict[str, Any]:
    """One held-out set across a setting's finished runs: per seed, mean and worst, overall and per kind."""
    rows = [(run, (run.summary or {}).get("held_out", {}).get(name)) for run in runs]
    rows = [(run, row) for run, row in rows if row is not None]
    kinds = sorted({kind for _, row in rows for kind in [*row.get("best_per_kind", {}), *row.get("base_per_kind", {})]})
    # The base model answers greedily: the same for every seed of a setting, so it is measured once (or
    # where a run measured it) and shown once.
    base_row = next((row for _, row in rows if row.get("base") is not None), None)
    per_seed = [
        {
            "seed": run.seed,
            "overall": row.get("best"),
            "per_kind": {kind: row.get("best_per_kind", {}).get(kind) for kind in kinds},
            "count": row.get("count"),
        }
        for run, row in rows
    ]
    return {
        "kinds": kinds,
        "count": next((row.get("count") for _, row in rows if row.get("count") is not None), None),
        "base": None if base_row is None else {
            "overall": base_row.get("base"),
            "per_kind": {kind: base_row.get("base_per_kind", {}).get(kind) for kind in kinds},
        },
        "per_seed": per_seed,
        "overall": _stats([r["overall"] for r in per_seed]),
        "per_kind": {kind: _stats([r["per_kind"][kind] for r in per_seed]) for kind in kinds},
    }


def setting_table(setting: dict[str, str], runs: Sequence[RunResult]) -> dict[str, Any]:
    """A setting's runs: every held-out set's table, training time and tokens, the runs that failed."""
    finished = [run for run in runs if run.summary is not None]
    return {
        "setting": dict(setting),
        "label": setting_label(setting),
        "runs": len(runs),
        "finished": len(finished),
        "failed": [{"seed": run.seed, "folder": run.folder, "why": run.failure} for run in runs if run.summary is None],
        "held_out": {name: _set_table(finished, name) for name in _held_out_names(finished)},
        "per_seed": [
            {
                "seed": run.seed,
                "train_time_s": run.summary.get("train_time_s"),
                "train_tokens_seen": run.summary.get("train_tokens_seen"),
                "total_steps": run.summary.get("total_steps"),
                "duration_s": run.summary.get("duration_s"),
            }
            for run in finished
        ],
        "train_time_s": _stats([run.summary.get("train_time_s") for run in finished], worst_is_max=True),
        "train_tokens_seen": _stats([run.summary.get("train_tokens_seen") for run in finished], worst_is_max=True),
        "retention": _retention_table(finished),
        # What measuring general ability cost: seconds per run and their share of the run's duration.
        "retention_cost_s": _stats([(run.summary.get("retention_cost") or {}).get("total_s") for run in finished],
                                   worst_is_max=True),
        "retention_cost_share": _stats([(run.summary.get("retention_cost") or {}).get("share_of_run")
                                        for run in finished], worst_is_max=True),
        "retention_sets": {name: table for name in _further_sets(finished)
                           if (table := _retention_table(finished, name)) is not None},
    }


def _further_sets(runs: Sequence[RunResult]) -> list[str]:
    """The further retention sets (`summary["retention_sets"]`) any run measured, in the order first seen."""
    return list(dict.fromkeys(name for run in runs for name in (run.summary or {}).get("retention_sets") or {}))


def _retention_table(runs: Sequence[RunResult], set_name: str | None = None) -> dict[str, Any] | None:
    """What the kept adapters kept of the base model's general ability (`summary["retention"]`, or the further
    set `set_name`), per seed, mean and worst: the lowest share kept, the highest KL and repetition. None where
    no run measured it."""
    rows = [(run, (run.summary or {}).get("retention") if set_name is None
             else ((run.summary or {}).get("retention_sets") or {}).get(set_name)) for run in runs]
    rows = [(run, row) for run, row in rows if row]
    if not rows:
        return None
    base = rows[0][1]
    per_seed = [{"seed": run.seed, "kept": row.get("kept"), "graded": row.get("graded"), "kl": row.get("kl"),
                 "repeat": row.get("repeat")} for run, row in rows]
    return {
        "base": {"acc": base.get("base_acc"), "count": base.get("base_count"), "repeat": base.get("base_repeat")},
        "per_seed": per_seed,
        "kept": _stats([r["kept"] for r in per_seed]),
        "kl": _stats([r["kl"] for r in per_seed], worst_is_max=True),
        "repeat": _stats([r["repeat"] for r in per_seed], worst_is_max=True),
    }


def group_by_setting(runs: Sequence[RunResult]) -> list[tuple[dict[str, str], list[RunResult]]]:
    """Runs grouped by setting, settings in the order they first appear, seeds in run order."""
    groups: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[RunResult]]] = {}
    for run in runs:
        key = tuple(run.setting.items())
        groups.setdefault(key, (run.setting, []))[1].append(run)
    return list(groups.values())


def comparison(runs: Sequence[RunResult], context: Context) -> dict[str, Any]:
    """The whole comparison as JSON-ready data: the context, every setting's tables and every run."""
    return {
        "date": context.date,
        "cpu_kind": context.cpu_kind,
        "cpu_cores": context.cpu_cores,
        "commit": context.commit,
        "dirty": context.dirty,
        "command": context.command,
        "notes": context.notes,
        "settings": [setting_table(setting, group) for setting, group in group_by_setting(runs)],
        "runs": [
            {
                "setting": run.setting,
                "seed": run.seed,
                "folder": run.folder,
                "command": run.command,
                "commit": run.commit,
                "reused": run.reused,
                "finished": run.summary is not None,
                "failure": run.failure,
                "summary": run.summary,
            }
            for run in runs
        ],
    }


# ----------------------------------------------------------------------------------------------- markdown
def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 100 else f"{value:,.0f} s"


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _summary_lines(settings: Sequence[dict[str, Any]]) -> list[str]:
    """One line per setting and held-out set: the numbers a recipe decision reads first."""
    lines = [
        _row(["setting", "held-out set", "base", "per seed", "mean", "worst", "training steps (mean / worst)", "training tokens"]),
        _row(["---"] * 8),
    ]
    for table in settings:
        for name, held in table["held_out"].items():
            seeds = ", ".join(f"{r['seed']}: {_pct(r['overall'])}" for r in held["per_seed"])
            time = table["train_time_s"]
            lines.append(_row([
                table["label"], name, _pct(held["base"]["overall"] if held["base"] else None), seeds,
                _pct(held["overall"]["mean"]), _pct(held["overall"]["worst"]),
                f"{_seconds(time['mean'])} / {_seconds(time['worst'])}", _count(table["train_tokens_seen"]["mean"]),
            ]))
    return lines


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _retention_summary_lines(settings: Sequence[dict[str, Any]]) -> list[str]:
    """One line per setting and retention set: the share of the base model's right general answers the kept
    adapters keep (`retention` is `model.retention.dir`'s set; the others are named as in `extra_dirs`)."""
    measured = [(table, name, r) for table in settings
                for name, r in [("retention", table.get("retention")), *(table.get("retention_sets") or {}).items()]
                if r]
    if not measured:
        return []
    lines = [
        "What the tutor kept of the base model's general ability (retention sets, never trained on): the share "
        "of the base's right answers still right, KL(base || adapter) in nats per token on the base's open "
        "replies, and repeated 4-grams in the adapter's open replies.",
        "",
        _row(["setting", "set", "base right", "kept per seed", "kept mean", "kept worst", "KL mean / worst",
              "repeat mean (base)"]),
        _row(["---"] * 8),
    ]
    for table, name, r in measured:
        base = r["base"]
        right = "—" if base["acc"] is None else f"{_pct(base['acc'])} of {_count(base['count'])}"
        seeds = ", ".join(f"{row['seed']}: {_pct(row['kept'])}" for row in r["per_seed"])
        lines.append(_row([
            table["label"], name, right, seeds, _pct(r["kept"]["mean"]), _pct(r["kept"]["worst"]),
            f"{_number(r['kl']['mean'])} / {_number(r['kl']['worst'])}",
            f"{_pct(r['repeat']['mean'])} ({_pct(base['repeat'])})",
        ]))
    costs = [table for table in settings if (table.get("retention_cost_s") or {}).get("mean") is not None]
    if costs:
        lines += ["", "Measuring general ability (base model once, adapter at each validation), per run:", ""]
        lines += [f"- {t['label']}: {t['retention_cost_s']['mean']:.0f} s mean, {t['retention_cost_s']['worst']:.0f} s "
                  f"worst; {_pct(t['retention_cost_share']['mean'])} of the run's duration "
                  f"(worst {_pct(t['retention_cost_share']['worst'])})" for t in costs]
    return lines + [""]


def _set_lines(table: dict[str, Any], name: str, held: dict[str, Any]) -> list[str]:
    kinds = held["kinds"]
    times = {r["seed"]: r for r in table["per_seed"]}
    count = f", {held['count']:.0f} questions" if held["count"] is not None else ""
    lines = [f"**{name}**{count}", "", _row(["seed", "overall", *kinds, "training steps", "training tokens"]), _row(["---"] * (len(kinds) + 4))]
    if held["base"] is not None:
        base = held["base"]
        lines.append(_row(["base model", _pct(base["overall"]), *(_pct(base["per_kind"][k]) for k in kinds), "—", "—"]))
    for row in held["per_seed"]:
        run = times.get(row["seed"], {})
        lines.append(_row([
            str(row["seed"]), _pct(row["overall"]), *(_pct(row["per_kind"][k]) for k in kinds),
            _seconds(run.get("train_time_s")), _count(run.get("train_tokens_seen")),
        ]))
    for stat, time_key in (("mean", "mean"), ("worst", "worst")):
        lines.append(_row([
            f"**{stat}**", _pct(held["overall"][stat]), *(_pct(held["per_kind"][k][stat]) for k in kinds),
            _seconds(table["train_time_s"][time_key]), _count(table["train_tokens_seen"][time_key]),
        ]))
    return lines + [""]


def markdown(data: dict[str, Any], title: str = "Comparison") -> str:
    """The comparison as a markdown page: context, a summary table, then per setting one table per set."""
    commit = data["commit"] or "unknown commit"
    if data["dirty"]:
        commit += " (with uncommitted changes)"
    cores = f", {data['cpu_cores']} cores" if data["cpu_cores"] else ""
    lines = [
        f"# {title}",
        "",
        f"{data['date']}, commit {commit}, CPU {data['cpu_kind']}{cores}. "
        "Accuracy is that of the kept adapter (chosen on `val` alone); the base model is measured once per setting; "
        "training steps are the optimizer steps' seconds (validation and generation excluded); worst is the lowest "
        "accuracy and the longest time.",
        "",
        *(f"- {note}" for note in data["notes"]),
        *([""] if data["notes"] else []),
        "## Summary",
        "",
        *_summary_lines(data["settings"]),
        "",
        *_retention_summary_lines(data["settings"]),
    ]
    for table in data["settings"]:
        lines += [f"## {table['label']}", ""]
        if table["finished"] < table["runs"]:
            lines.append(f"{table['finished']} of {table['runs']} runs finished; mean and worst are over the finished ones.")
            lines += [f"- seed {f['seed']} did not finish: {f['why']} ({f['folder']})" for f in table["failed"]] + [""]
        for name, held in table["held_out"].items():
            lines += _set_lines(table, name, held)
    lines += ["## Commands", "", "```"]
    lines += [shlex.join(run["command"]) + ("  # read, already finished" if run["reused"] else "") for run in data["runs"]]
    lines += ["```", "", "Comparison written by:", "", "```", shlex.join(data["command"]), "```", ""]
    return "\n".join(lines)
