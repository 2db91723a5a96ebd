"""Command line: `python -m src.cli {fit,validate,test,predict} --config configs/<name>.yaml`.

After training, the same entry point runs the commands of `src.tools` (chat, answer, merge, export, check-gguf,
doctor, lr-find, lr-sweep) with the same config files: `python -m src.cli chat --config ...`.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.trainer.connectors.accelerator_connector import _PRECISION_INPUT

from src.data.datamodule import TutorDataModule
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


class TutorCLI(LightningCLI):
    """LightningCLI whose model and data share one model name, tokenizer and prompt format."""

    def add_arguments_to_parser(self, parser) -> None:
        link_model_and_data(parser)


def link_model_and_data(parser) -> None:
    """Written once in a config, read by both sides: the data module tokenises with the model's
    tokenizer, and the model renders generation prompts exactly as the data was rendered."""
    for key in ("model_name", "gguf_file", "tokenizer_name"):
        parser.link_arguments(f"model.{key}", f"data.{key}")
    for key in ("system_prompt", "chat_template", "packing"):
        parser.link_arguments(f"data.{key}", f"model.{key}")


def cli_main(args: ArgsType = None, run: bool = True) -> TutorCLI:
    return TutorCLI(
        TutorModule,
        TutorDataModule,
        trainer_class=TutorTrainer,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "tb_logs"}},
            # The data module shards its own loaders across processes (no repeated validation items).
            "use_distributed_sampler": False,
        },
    )


if __name__ == "__main__":
    import sys

    from src.tools import TOOLS, run_tool

    if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
        sys.exit(run_tool(sys.argv[1], sys.argv[2:]))
    cli_main()
