"""`lr-sweep`: the same training budget at several learning rates, judged by math accuracy.

    python -m src.cli lr-sweep --config configs/smollm2.yaml --lrs 1e-5 1e-4 1e-3 1e-2 --trainer.max_steps 60

Each rate runs the config's `fit` (same data, seed, schedule and step budget; any `fit` option may
follow, e.g. `--trainer.max_steps` or `--data.math_eval_size` for a short sweep), then one
validation at the end of its budget. The base model is measured once, in the first run. A rate
whose loss or gradients become NaN/Inf is reported as diverged. Writes `lr_sweep.json`,
`lr_sweep.png` (accuracy against learning rate) and one run folder per rate with its adapters.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.tools.runs import training_cli, lenient_on_divergence

DEFAULT_LRS = (1e-5, 1e-4, 1e-3, 1e-2)


def tool_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m src.cli lr-sweep", allow_abbrev=False,
        description="Train the same budget at several learning rates; every `fit` option is accepted too.",
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="learning rates to train")
    parser.add_argument("--output_dir", default="runs/lr-sweep", help="lr_sweep.json, lr_sweep.png and the runs")
    return parser.parse_known_args(list(argv))


def run_one(rest: list[str], lr: float, folder: Path, evaluate_base: bool) -> dict[str, Any]:
    """Fit at `lr`, validate once at the end, and return what the sweep reports for it."""
    cli = training_cli(
        [
            *rest,
            "--model.optimizer.learning_rate", str(lr),
            "--model.evaluate_base", str(evaluate_base).lower(),
            "--trainer.default_root_dir", str(folder),
            "--trainer.logger.init_args.save_dir", str(folder),
        ]
    )
    lenient_on_divergence(cli.model, cli.trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_loss = cli.trainer.callback_metrics.get("train/loss")
    result: dict[str, Any] = {
        "lr": lr,
        "steps": cli.trainer.global_step,
        "train_loss": None if train_loss is None else float(train_loss),
        "diverged": cli.model.diverged_at is not None,
        "math_acc": None,
        "math_acc_strict": None,
        "val_loss": None,
        "log_dir": cli.trainer.log_dir,
        "base_math_acc": (cli.model.base_math_metrics or {}).get("val/math_acc"),
    }
    if result["diverged"]:
        step, what, value = cli.model.diverged_at
        result["diverged_at"] = f"step {step}: {what} {value}"
        return result
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = cli.trainer.callback_metrics  # one dict for both validation loaders (loss, math)
    for key, name in (("math_acc", "val/math_acc"), ("math_acc_strict", "val/math_acc_strict"), ("val_loss", "val/loss")):
        result[key] = float(metrics[name]) if name in metrics else None
    return result


def table(results: Sequence[dict[str, Any]], base: float | None) -> str:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.1%}"

    lines = ["| learning rate | steps | final train loss | val loss | math accuracy (lenient / strict) |", "|---|---|---|---|---|"]
    for r in results:
        if r["diverged"]:
            lines.append(f"| {r['lr']:.0e} | {r['steps']} | diverged ({r['diverged_at']}) | — | — |")
            continue
        loss = "—" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
        val = "—" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        lines.append(f"| {r['lr']:.0e} | {r['steps']} | {loss} | {val} | {pct(r['math_acc'])} / {pct(r['math_acc_strict'])} |")
    if base is not None:
        lines.append(f"\nBase model (no training): {pct(base)}")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], base: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    done = [r for r in results if r["math_acc"] is not None]
    axis.plot([r["lr"] for r in done], [100 * r["math_acc"] for r in done], "o-", label="math accuracy")
    diverged = [r["lr"] for r in results if r["diverged"]]
    if diverged:
        axis.plot(diverged, [0] * len(diverged), "rx", markersize=10, label="diverged")
    if base is not None:
        axis.axhline(100 * base, color="gray", linestyle="--", label="base model")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("math accuracy (%)")
    axis.set_ylim(0, 100)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main(argv: Sequence[str]) -> int:
    options, rest = tool_options(argv)
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for index, lr in enumerate(options.lrs):
        results.append(run_one(rest, lr, output / f"lr_{lr:.0e}", evaluate_base=index == 0))
    base = results[0]["base_math_acc"]
    finite = [r for r in results if r["math_acc"] is not None and math.isfinite(r["math_acc"])]
    best = max(finite, key=lambda r: r["math_acc"]) if finite else None
    summary = {"args": list(argv), "base_math_acc": base, "best_lr": best["lr"] if best else None, "runs": results}
    (output / "lr_sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(results, base, output / "lr_sweep.png")
    print(table(results, base))
    if best:
        print(f"Best: learning rate {best['lr']:.0e} ({best['math_acc']:.1%}); adapter: {best['log_dir']}/adapters/last")
    print(f"Written: {output / 'lr_sweep.json'}, {output / 'lr_sweep.png'}")
    return 0
