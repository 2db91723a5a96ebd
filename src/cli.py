"""Command line: `python -m src.cli {fit,validate,test,predict} --config configs/<name>.yaml`.

After training, the same entry point runs the commands of `src.tools` (chat, answer, merge, export, check-gguf,
doctor, lr-find, lr-sweep) with the same config files: `python -m src.cli chat --config ...`.

The project's own errors (bad data, configuration, model sources, non-finite training) are printed
as one message with a non-zero exit; `--traceback` or `TUTOR_TUNE_TRACEBACK=1` shows the traceback.
"""

from __future__ import annotations

from src import library_noise  # noqa: F401  (first: filters a bitsandbytes import-time notice)

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.trainer.connectors.accelerator_connector import _PRECISION_INPUT

from src.callbacks.plain_progress import with_plain_progress
from src.callbacks.refused_run_cleanup import RefusedRunCleanup
from src.config_errors import ConfigParseError, readable_parse_error
from src.config_ranges import check_ranges
from src.data.datamodule import TutorDataModule
from src.data.conversation import DataFormatError
from src.errors import ConfigurationError, ModelSourceError, TutorTuneError
from src.plugins.checkpoint_io import AtomicCheckpointIO
from src.models.precision import AUTO, resolve_precision
from src.models.tutor_module import TutorModule


class TutorTrainer(Trainer):
    """Lightning's Trainer, plus `precision: auto`: the fastest precision this machine computes natively."""

    def __init__(self, *args: Any, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs: Any) -> None:
        resolved, why = resolve_precision(precision, kwargs.get("accelerator", "auto"))
        if precision == AUTO:
            rank_zero_info(f"trainer.precision: auto -> {resolved} ({why})")
        kwargs["plugins"] = with_atomic_checkpoints(kwargs.get("plugins"), kwargs.get("strategy", "auto"))
        kwargs["callbacks"] = with_plain_progress(kwargs.get("callbacks"), kwargs.get("enable_progress_bar"))
        super().__init__(*args, precision=resolved, **kwargs)


def with_atomic_checkpoints(plugins: Any, strategy: Any) -> Any:
    """Add `AtomicCheckpointIO` unless the config chose its own checkpoint IO or a sharding strategy.

    FSDP and DeepSpeed write sharded checkpoints through their own IO, which this plugin must not replace.
    """
    if not isinstance(strategy, str) or not (strategy == "auto" or strategy.startswith(("ddp", "single"))):
        return plugins
    chosen = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in chosen):
        return plugins
    return [*chosen, AtomicCheckpointIO()]


class TutorArgumentParser(LightningArgumentParser):
    """Raises parse errors instead of printing ~90 lines of usage and exiting: `main` shows them as one message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ConfigParseError(message) from ex


class TutorCLI(LightningCLI):
    """LightningCLI whose model and data share one model name, tokenizer and prompt format."""

    def add_arguments_to_parser(self, parser) -> None:
        link_model_and_data(parser)

    def before_instantiate_classes(self) -> None:
        check_ranges(self.config.get(self.subcommand) if self.subcommand else self.config)  # before anything is built
        # Lightning prints its results table once per validation dataloader, repeating every metric
        # logged at epoch end (one loader per held-out set); this CLI prints one table instead.
        config = self.config.get(self.subcommand) if self.subcommand in ("validate", "test") else None
        self._print_results = bool(config is not None and config.get("verbose", True))
        if config is not None:
            config["verbose"] = False

    def after_validate(self) -> None:
        self._print_results_table()

    def after_test(self) -> None:
        self._print_results_table()

    def _print_results_table(self) -> None:
        if getattr(self, "_print_results", False) and self.trainer.is_global_zero:
            print(results_table({key: float(value) for key, value in self.trainer.callback_metrics.items()}))


def results_table(metrics: dict[str, float]) -> str:
    """Each metric once, sorted by name: counts as integers, the rest with 4 decimals."""
    width = max((len(name) for name in metrics), default=6)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  -------"]
    for name in sorted(metrics):
        value = metrics[name]
        shown = f"{int(value)}" if name.endswith("_count") else f"{value:.4f}"
        rows.append(f"{name:<{width}}  {shown}")
    return "\n".join(rows)


def link_model_and_data(parser) -> None:
    """Written once in a config, read by both sides: the data module tokenises with the model's
    tokenizer, and the model renders generation prompts exactly as the data was rendered."""
    for key in ("model_name", "gguf_file", "tokenizer_name"):
        parser.link_arguments(f"model.{key}", f"data.{key}")
    for key in ("system_prompt", "chat_template", "packing"):
        parser.link_arguments(f"data.{key}", f"model.{key}")


def cli_main(args: ArgsType = None, run: bool = True) -> TutorCLI:
    """The LightningCLI run; a configuration the parser refuses raises `ConfigurationError` naming the key."""
    try:
        return _build_cli(args, run)
    except ConfigParseError as error:
        argv = sys.argv[1:] if args is None else [str(a) for a in args] if isinstance(args, (list, tuple)) else []
        sections = {"model": TutorModule, "data": TutorDataModule, "trainer": Trainer}
        raise ConfigParseError(readable_parse_error(str(error), argv, sections)) from error


def _build_cli(args: ArgsType, run: bool) -> TutorCLI:
    return TutorCLI(
        TutorModule,
        TutorDataModule,
        trainer_class=TutorTrainer,
        parser_class=TutorArgumentParser,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "tb_logs"}},
            # The data module shards its own loaders across processes (no repeated validation items).
            "use_distributed_sampler": False,
            "callbacks": [RefusedRunCleanup()],
        },
    )


TRACEBACK_ENV = "TUTOR_TUNE_TRACEBACK"
TRACEBACK_FLAG = "--traceback"
USER_INPUT_ERRORS = (ConfigurationError, DataFormatError, ModelSourceError)
"""Exit code 2 (like a usage error): the input must change. Other project errors exit with 1."""


def run_reporting_errors(entry: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run `entry(argv)`; a `TutorTuneError` becomes one message on stderr and exit code 2 or 1.

    Anything else is a bug and keeps its traceback. `--traceback` (removed from the arguments) or
    `TUTOR_TUNE_TRACEBACK=1` prints the full traceback of project errors too. With `argv=None` the
    arguments are `sys.argv[1:]` and `entry` receives None (LightningCLI reads `sys.argv` itself).
    """
    given = sys.argv[1:] if argv is None else list(argv)
    show_traceback = TRACEBACK_FLAG in given or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    kept = [arg for arg in given if arg != TRACEBACK_FLAG]
    if argv is None:
        sys.argv[1:] = kept
    try:
        entry(None if argv is None else kept)
    except TutorTuneError as error:
        if show_traceback:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        if not show_traceback:
            print(f"(full traceback: {TRACEBACK_ENV}=1 or {TRACEBACK_FLAG})", file=sys.stderr)
        return 2 if isinstance(error, USER_INPUT_ERRORS) else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m src.cli ...`: the LightningCLI, or a command of `src.tools`, with project errors shown as one message."""
    return run_reporting_errors(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> None:
    from src.tools import TOOLS, run_tool  # the tools import this module

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in TOOLS:
        code = run_tool(args[0], args[1:])
        if code:
            raise SystemExit(code)
        return
    cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
