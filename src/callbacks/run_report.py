"""A readable end-of-run report: metric history files, a 2x2 plot, a summary and sample answers.

TensorBoard holds the same curves, but a finished run should also leave plain files next to its
adapter (`metrics.json`, `metrics.csv`, `training_metrics.png`, and `held_out.png`: base against kept
adapter per kind, per worked-step type and on the retention set) and say in words whether the tuned
tutor actually does better arithmetic than the base model it started from.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from matplotlib.figure import Figure

from src.callbacks.adapter_checkpoint import AdapterCheckpoint
from src.callbacks.memory_monitor import MemoryMonitor
from src.callbacks.report_figures import save_held_out_figure
from src.evaluation.retention_eval import SECONDS_KEY
from src.evaluation.sample_grading import sample_verdict
from src.training.contracts import ReportedTutor

DEFAULT_SAMPLE_QUESTIONS = ("¿Cuánto es 12 + 7?", "What is 9 * 8?", "¿Cuánto es 45 - 18?")
TRAIN_KEYS = ("train/loss", "train/grad_norm", "train/lr")
ACC_KEY = "val/math_acc"
FIRST_COLUMNS = ["kind", "step", "epoch", "time_s"]


def _scalar(value: Any) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _held_out_table(
    names: list[str], base: dict[str, float], kept: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Per held-out set: base and kept-adapter accuracy, overall and per kind (None where not measured).

    The kept adapter is chosen on `val` alone; the other sets are read at the same step, so their
    numbers are what the shipped adapter scores on questions the choice never saw.
    """
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        key = f"{name}/math_acc"
        kinds = sorted({k.removeprefix(key + "/") for k in [*base, *(kept or {})] if k.startswith(key + "/")})
        table[name] = {
            "base": base.get(key),
            "best": kept.get(key) if kept else None,
            "count": (kept or base).get(f"{key}_count"),
            "base_per_kind": {k: base[f"{key}/{k}"] for k in kinds if f"{key}/{k}" in base},
            "best_per_kind": {k: kept[f"{key}/{k}"] for k in kinds if kept and f"{key}/{k}" in kept},
            "base_step_errors": _step_error_rates(base, name),
            "best_step_errors": _step_error_rates(kept or {}, name),
        }
    return table


def _retention(base: dict[str, Any], kept: dict[str, Any] | None, prefix: str = "retain") -> dict[str, Any] | None:
    """The base model's and the kept adapter's general ability (`<prefix>/*`), or None where not measured."""
    if f"{prefix}/acc" not in base and not (kept and f"{prefix}/kept" in kept):
        return None
    kept = kept or {}
    return {"base_acc": base.get(f"{prefix}/acc"), "base_count": base.get(f"{prefix}/count"),
            "base_repeat": base.get(f"{prefix}/repeat"), "kept": kept.get(f"{prefix}/kept"),
            "graded": kept.get(f"{prefix}/count"), "kl": kept.get(f"{prefix}/kl"), "repeat": kept.get(f"{prefix}/repeat")}


def _further_retention(base: dict[str, Any], kept: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`_retention` of each further retention set (`retain/<name>/*`, `model.retention.extra_dirs`) by name."""
    names = sorted({key.split("/")[1] for key in (*base, *(kept or {}))
                    if key.startswith("retain/") and key.count("/") == 2})
    return {name: table for name in names if (table := _retention(base, kept, f"retain/{name}")) is not None}


def _retention_cost(base: dict[str, Any], history: list[dict[str, Any]], duration: float) -> dict[str, Any] | None:
    """What measuring general ability cost this run: the base model once, the adapter at each validation."""
    adapter = [r[SECONDS_KEY] for r in history if r["kind"] == "val" and SECONDS_KEY in r]
    base_s = base.get(SECONDS_KEY)
    if base_s is None and not adapter:
        return None
    total = (base_s or 0.0) + sum(adapter)
    return {"base_s": base_s, "adapter_s": sum(adapter), "validations": len(adapter),
            "total_s": total, "share_of_run": total / duration if duration > 0 else None}


def _retention_cost_line(cost: dict[str, Any] | None) -> list[str]:
    if cost is None:
        return []
    base = "n/a (not measured in this run)" if cost["base_s"] is None else f"{cost['base_s']:.0f} s"
    share = "" if cost["share_of_run"] is None else f" ({cost['share_of_run']:.1%} of the run's duration)"
    return [f"General-ability measurement: {cost['total_s']:.0f} s{share}: base model {base}, "
            f"adapter {cost['adapter_s']:.0f} s over {cost['validations']} validation(s)"]


def _retention_lines(retention: dict[str, Any] | None, passed_over: dict[str, Any] | None,
                     title: str = "retention set") -> list[str]:
    """What the tutor lost: the base's right general answers the kept adapter still gives, KL and repetition."""
    if retention is None:
        return []
    r = retention
    base = (f"base answers {_pct(r['base_acc'])} of {int(r['base_count'])} right" if r["base_acc"] is not None
            else "base not measured")
    kept = "n/a" if r["kept"] is None else f"{r['kept']:.1%} of {int(r['graded'] or 0)} base-right answers"
    kl = "n/a" if r["kl"] is None else f"{r['kl']:.3f} nats/token"
    repeat = "n/a" if r["repeat"] is None else f"{r['repeat']:.1%} (base {_pct(r['base_repeat'])})"
    lines = [f"General ability ({title}, never trained on): {base}; the kept adapter keeps {kept}",
             f"  KL(base || adapter) on open prompts {kl}; repeated 4-grams in open replies {repeat}"]
    if passed_over:
        lines.append(
            f"  Passed over for retention: the adapter of step {passed_over['step']} scored higher on math "
            f"({passed_over['score']:.1%}) but kept only {passed_over['retention']:.1%} of the base's general "
            f"answers (floor {passed_over['floor']:.0%})."
        )
    return lines


def _step_error_rates(metrics: dict[str, Any], name: str) -> dict[str, float]:
    """`{step type: share of its steps written wrong}` of one held-out set, from `<set>/steps/<type>/error_rate`."""
    prefix, suffix = f"{name}/steps/", "/error_rate"
    return {k[len(prefix) : -len(suffix)]: float(v) for k, v in metrics.items() if k.startswith(prefix) and k.endswith(suffix)}


def _step_lines(table: dict[str, dict[str, Any]], shown: int = 6) -> list[str]:
    """The step types the kept adapter gets wrong most often, per set, with the base model's rate beside."""
    lines = []
    for name, row in table.items():
        best, base = row.get("best_step_errors") or {}, row.get("base_step_errors") or {}
        worst = sorted((k for k, v in best.items() if v > 0), key=lambda k: -best[k])[:shown]
        if best:
            listed = ", ".join(f"{k} {_pct(base.get(k))} -> {best[k]:.1%}" for k in worst) or "none wrong"
            lines.append(f"  {name:<6} {listed}")
    return (["Wrong worked steps by type, base -> kept adapter (what to practise next):"] + lines) if lines else []


def _held_out_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    """`val  base 15.5% -> 91.0%  (add_1d 100%, ...)`: one line per held-out set and per model."""
    lines = []
    for name, row in table.items():
        for model in ("base", "best"):
            kinds = ", ".join(f"{k} {v:.0%}" for k, v in row[f"{model}_per_kind"].items())
            label = "base" if model == "base" else "kept adapter"
            lines.append(f"  {name:<6} {label:<12} {_pct(row[model]):>6}" + (f"  ({kinds})" if kinds else ""))
    return (["Held-out sets (the adapter is kept on val only):"] + lines) if lines else []


class RunReport(Callback):
    """Record train/val metrics during fit; at fit end write files, print a summary and sample answers.

    Writes into `dirpath`: `metrics.json` (history + summary), `metrics.csv` (one row per record) and
    `training_metrics.png` (loss, gradient norm, learning rate, math accuracy against the base model).
    The summary is also kept in `self.summary`, the sample answers in `self.samples`.

    Args:
        dirpath: Output folder. None uses the AdapterCheckpoint's folder when one is among the
            trainer's callbacks, else `trainer.log_dir`.
        sample_questions: Questions the tuned tutor answers at the end (greedy). None uses a few
            Spanish and English arithmetic questions; an empty list skips this step.
    """

    def __init__(self, dirpath: str | None = None, sample_questions: list[str] | None = None) -> None:
        self._dirpath_arg = dirpath
        self.dirpath: Path | None = Path(dirpath) if dirpath is not None else None
        self.sample_questions = list(DEFAULT_SAMPLE_QUESTIONS if sample_questions is None else sample_questions)
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.samples: list[dict[str, str]] = []
        self._t0 = time.perf_counter()
        self._duration_s: float | None = None
        self._last_train_step: int | None = None

    # ----------------------------------------------------------------------------- recording
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = time.perf_counter()

    def _record(self, trainer: Trainer, kind: str, values: dict[str, float]) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        return {"kind": kind, "step": trainer.global_step, "epoch": trainer.current_epoch, "time_s": elapsed, **values}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        metrics = trainer.callback_metrics
        # A key logged with on_epoch=True as well shows up as "<key>_step" for the step value.
        found = {k: metrics.get(k, metrics.get(f"{k}_step")) for k in TRAIN_KEYS}
        values = {k: _scalar(v) for k, v in found.items() if v is not None}
        if not values:
            return
        record = self._record(trainer, "train", values)
        # Gradient accumulation: several batches end on one optimizer step; keep the latest.
        if self._last_train_step == trainer.global_step:
            last = max(i for i, r in enumerate(self.history) if r["kind"] == "train")
            self.history[last] = record
        else:
            self.history.append(record)
            self._last_train_step = trainer.global_step

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        sets = pl_module.math_sets if isinstance(pl_module, ReportedTutor) else []
        prefixes = tuple(f"{name}/" for name in {"val", "retain", *sets})
        values = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefixes)}
        if values:
            self.history.append(self._record(trainer, "val", values))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._duration_s = time.perf_counter() - self._t0

    # ----------------------------------------------------------------------------- report
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, AdapterCheckpoint)), None)
        monitor = next((c for c in trainer.callbacks if isinstance(c, MemoryMonitor)), None)
        if self._dirpath_arg is None:
            log_dir = Path(trainer.log_dir or trainer.default_root_dir)
            self.dirpath = checkpoint.dirpath if checkpoint and checkpoint.dirpath else log_dir
        self.summary = self._summarize(trainer, pl_module, checkpoint, monitor)
        self._write_and_print(trainer, pl_module, checkpoint)

    def _summarize(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        checkpoint: AdapterCheckpoint | None,
        monitor: MemoryMonitor | None,
    ) -> dict[str, Any]:
        losses = [r["train/loss"] for r in self.history if r["kind"] == "train" and "train/loss" in r]
        duration = self._duration_s if self._duration_s is not None else time.perf_counter() - self._t0
        # A module without the ReportedTutor contract gets a summary of what Lightning itself knows.
        tutor = pl_module if isinstance(pl_module, ReportedTutor) else None
        examples = tutor.progress.examples if tutor else None
        tokens = tutor.progress.tokens if tutor else None
        model = tutor.model if tutor and tutor.model is not None else pl_module
        params = sum(p.numel() for p in model.parameters())

        # Base accuracy: what the module measured before training, else a step-0 validation.
        base_metrics = (tutor.base_math_metrics if tutor else None) or {}
        vals = [r for r in self.history if r["kind"] == "val" and ACC_KEY in r]
        base = base_metrics.get(ACC_KEY, next((r[ACC_KEY] for r in vals if r["step"] == 0), None))
        # Best: the accuracy of the adapter the checkpoint kept, else the highest logged after step 0.
        tuned = [r for r in vals if r["step"] > 0]
        best, best_step = None, None
        if checkpoint is not None and checkpoint.best_step is not None:
            kept = next((r for r in reversed(tuned) if r["step"] == checkpoint.best_step), None)
            if kept is not None:
                best, best_step = kept[ACC_KEY], kept["step"]
            elif checkpoint.monitor == ACC_KEY:  # kept before a resume, so not in this run's history
                best, best_step = checkpoint.best_score, checkpoint.best_step
        elif tuned:
            kept = max(tuned, key=lambda r: r[ACC_KEY])
            best, best_step = kept[ACC_KEY], kept["step"]

        kept_record = next((r for r in reversed(tuned) if r["step"] == best_step), None) if best_step else None
        return {
            "held_out": _held_out_table(tutor.math_sets if tutor else ["val"], base_metrics, kept_record),
            "loss_initial": losses[0] if losses else None,
            "loss_final": losses[-1] if losses else None,
            "loss_min": min(losses) if losses else None,
            "loss_max": max(losses) if losses else None,
            "val_loss_final": next((r["val/loss"] for r in reversed(self.history) if "val/loss" in r), None),
            "loss_improvement_pct": (losses[0] - losses[-1]) / losses[0] * 100 if losses and losses[0] else None,
            "total_steps": trainer.global_step,
            "duration_s": duration,
            # Optimizer steps only: validation, generation and the base-model evaluation excluded.
            "train_time_s": tutor.progress.seconds if tutor else None,
            "samples_per_sec": examples / duration if examples is not None and duration > 0 else None,
            "steps_per_sec": trainer.global_step / duration if duration > 0 else None,
            "train_examples_seen": examples,
            "train_tokens_seen": tokens,
            "params_in_forward": params,
            # 6 FLOPs per parameter per token (forward + backward): the dense-training rule of thumb.
            # With a frozen base the weight gradients are skipped, so the true count is lower.
            "train_flops_estimate": 6 * params * tokens if tokens is not None else None,
            "peak_memory_mb": monitor.peak_mb(trainer) if monitor else None,
            "val_peak_memory_mb": monitor.val_peak_mb if monitor else None,
            "base_math_acc": base,
            "best_math_acc": best,
            "best_math_acc_step": best_step,
            "beat_base": best > base if best is not None and base is not None else None,
            "best_adapter_path": str(checkpoint.best_path) if checkpoint and checkpoint.best_path else None,
            "retention": _retention(base_metrics, kept_record),
            "retention_sets": _further_retention(base_metrics, kept_record),
            "retention_cost": _retention_cost(base_metrics, self.history, duration),
            "passed_over_for_retention": (
                {**checkpoint.best_passed_over, "floor": checkpoint.retention_floor}
                if checkpoint is not None and checkpoint.best_passed_over else None
            ),
            "last_adapter_path": str(checkpoint.last_path) if checkpoint and checkpoint.last_path else None,
        }

    @rank_zero_only
    def _write_and_print(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: AdapterCheckpoint | None
    ) -> None:
        assert self.dirpath is not None
        self.dirpath.mkdir(parents=True, exist_ok=True)
        report = {"history": self.history, "summary": self.summary}
        (self.dirpath / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        self._write_csv(self.dirpath / "metrics.csv")
        self._plot(self.dirpath / "training_metrics.png")
        save_held_out_figure(self.summary, self.dirpath / "held_out.png")
        print(self._summary_text(trainer))
        self._print_samples(trainer, pl_module, checkpoint)

    def _write_csv(self, path: Path) -> None:
        extra = sorted({k for r in self.history for k in r} - set(FIRST_COLUMNS))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIRST_COLUMNS + extra, restval="")
            writer.writeheader()
            writer.writerows(self.history)

    def _series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.history if r["kind"] == kind and key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def _plot(self, path: Path) -> None:
        # A bare Figure renders with Agg and leaves pyplot's global backend alone.
        fig = Figure(figsize=(12, 8))
        (loss_ax, grad_ax), (lr_ax, acc_ax) = fig.subplots(2, 2)
        panels = [
            (loss_ax, "Loss", [("train", "train/loss", "train", "-"), ("val", "val/loss", "validation", "o-")]),
            (grad_ax, "Gradient norm", [("train", "train/grad_norm", "train/grad_norm", "-")]),
            (lr_ax, "Learning rate", [("train", "train/lr", "train/lr", "-")]),
            (acc_ax, "Math accuracy", [("val", ACC_KEY, "tuned", "o-"), ("val", f"{ACC_KEY}_strict", "strict", "s--")]),
        ]
        for ax, title, curves in panels:
            drawn = False
            for kind, key, label, style in curves:
                steps, values = self._series(kind, key)
                if steps:
                    ax.plot(steps, values, style, label=label, markersize=4)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if self.summary.get("base_math_acc") is not None:
            acc_ax.axhline(self.summary["base_math_acc"], color="gray", linestyle=":", label="base model")
        if self.summary.get("best_math_acc") is not None:
            best = (self.summary["best_math_acc_step"], self.summary["best_math_acc"])
            acc_ax.plot(*best, "*", color="gold", markersize=14, label="best adapter")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        for ax in (loss_ax, acc_ax):
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    def _summary_text(self, trainer: Trainer) -> str:
        s = self.summary

        def num(key: str, fmt: str, unit: str = "") -> str:
            return "n/a" if s.get(key) is None else f"{s[key]:{fmt}}{unit}"

        save_dir = trainer.logger.save_dir if isinstance(trainer.logger, TensorBoardLogger) else "tb_logs"
        flops = s["train_flops_estimate"]
        lines = [
            "=" * 60,
            "TRAINING METRICS SUMMARY",
            "=" * 60,
            f"Initial loss: {num('loss_initial', '.4f')}",
            f"Final loss: {num('loss_final', '.4f')}",
            f"Minimum loss: {num('loss_min', '.4f')}",
            f"Improvement: {num('loss_improvement_pct', '.2f', '%')}",
            f"Total steps: {s['total_steps']}",
            f"Duration: {num('duration_s', '.2f', ' s')} (training steps alone: {num('train_time_s', '.2f', ' s')})",
            f"Samples/s: {num('samples_per_sec', '.3f')}   Steps/s: {num('steps_per_sec', '.3f')}",
            "Training FLOPs (estimate, 6 x parameters x tokens): "
            + ("n/a" if flops is None else f"{flops:.3e} ({flops / 1e9:,.1f} GFLOPs)"),
            f"Peak memory: {num('peak_memory_mb', '.2f', ' MB')}   "
            + f"Validation peak: {num('val_peak_memory_mb', '.2f', ' MB')}",
            f"Final validation loss: {num('val_loss_final', '.4f')}",
            f"Math accuracy: base {_pct(s['base_math_acc'])} -> best {_pct(s['best_math_acc'])}"
            + (f" (step {s['best_math_acc_step']})" if s["best_math_acc_step"] is not None else ""),
        ]
        if s["best_math_acc"] is None:
            lines.append(
                "No math accuracy was measured after training started: compare with the base model before shipping."
            )
        elif s["beat_base"] is False:
            lines.append(
                f"The fine-tuned adapter never beat the base model (base {_pct(s['base_math_acc'])} vs best "
                f"{_pct(s['best_math_acc'])}): keep the base model."
            )
        lines.extend(_held_out_lines(s.get("held_out") or {}))
        lines.extend(_step_lines(s.get("held_out") or {}))
        lines.extend(_retention_lines(s.get("retention"), s.get("passed_over_for_retention")))
        for name, table in (s.get("retention_sets") or {}).items():
            lines.extend(_retention_lines(table, None, f"retention set {name}"))
        lines.extend(_retention_cost_line(s.get("retention_cost")))
        lines.append(f"Best adapter: {s['best_adapter_path'] or 'not saved (no AdapterCheckpoint)'}")
        lines.append(f"Report files: {self.dirpath}")
        lines.append(f"TensorBoard: tensorboard --logdir {save_dir}")
        lines.append("=" * 60)
        return "\n".join(lines)

    def _print_samples(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: AdapterCheckpoint | None
    ) -> None:
        if not self.sample_questions or not isinstance(pl_module, ReportedTutor):
            return
        conversations = [[{"role": "user", "content": q}] for q in self.sample_questions]
        was_training = pl_module.training
        pl_module.eval()
        try:
            # The trainer's autocast, as validation answers: the samples are the held-out sets' kind of answer.
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                replies = pl_module.answerer.reply(conversations)
        except Exception as err:  # noqa: BLE001 (a failed demo must not fail a finished, saved run)
            rank_zero_warn(
                f"RunReport could not generate sample answers ({type(err).__name__}: {err}); "
                "set sample_questions=[] to skip them."
            )
            return
        finally:
            pl_module.train(was_training)
        self.samples = [{"question": q, "answer": a, "verdict": sample_verdict(q, a)}
                        for q, a in zip(self.sample_questions, replies)]
        print("=== SAMPLE ANSWERS FROM THE TUNED TUTOR ===")
        if checkpoint is not None and checkpoint.best_step is not None and checkpoint.best_step != trainer.global_step:
            print(
                f"(Answered by the current weights from the last step, {trainer.global_step}; "
                f"the best adapter is from step {checkpoint.best_step}, in {checkpoint.best_path}.)"
            )
        for sample in self.samples:
            verdict = f"\n({sample['verdict']})" if sample["verdict"] else ""
            print(f"Q: {sample['question']}\nA: {sample['answer']}{verdict}\n")
