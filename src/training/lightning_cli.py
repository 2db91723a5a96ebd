"""`TutorCLI`: LightningCLI over `TutorModule` and `TutorDataModule`, with one readable message per bad config.

The entry point (`src/cli.py`), the tools and the benchmarks build runs through `cli_main` / `TutorCLI`.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from src.callbacks.refused_run_cleanup import RefusedRunCleanup
from src.config_errors import ConfigParseError, readable_parse_error
from src.config_ranges import check_ranges
from src.data.datamodule import TutorDataModule
from src.training.trainer import TutorTrainer
from src.training.tutor_module import TutorModule


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
