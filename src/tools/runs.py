"""Helpers shared by the commands that drive training runs (lr-find, lr-sweep)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer

from src.training.lightning_cli import TutorCLI, cli_main
from src.training.tutor_module import TutorModule


def training_cli(args: Sequence[str]) -> TutorCLI:
    """The `fit` CLI for `args`, built (model, data, trainer) but not run.

    The command's own words stay out of `sys.argv` meanwhile: LightningCLI warns when it is given
    `args` while the process was started with others.
    """
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return cli_main(list(args), run=False)
    finally:
        sys.argv = argv


def config_paths(argv: Sequence[str]) -> list[Path]:
    """The `--config` files in `argv` (both `--config x` and `--config=x`), in order."""
    paths = []
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            paths.append(Path(argv[index + 1]))
        elif arg.startswith("--config="):
            paths.append(Path(arg.split("=", 1)[1]))
    return paths


def lenient_on_divergence(module: TutorModule, trainer: Trainer) -> None:
    """A non-finite loss or gradient ends the run instead of raising.

    Training stops with an error on NaN/Inf (an adapter written after it is broken), but learning-rate
    studies go looking for the rates where that happens: there it is a result, recorded as
    `module.diverged_at`, and the run just stops.
    """
    module.diverged_at = None

    def stop(what: str, value: float) -> bool:
        if module.diverged_at is None:
            module.diverged_at = (module.global_step, what, value)
        trainer.should_stop = True
        return True  # handled: the step is skipped and the run ends

    module.divergence.handlers.append(stop)
