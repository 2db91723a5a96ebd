"""`lr-find`: Lightning's learning-rate range test for the LoRA run a config describes.

    python -m src.cli lr-find --config configs/smollm2.yaml --num_training 100 --write_config configs/smollm2-lr.yaml

Trains for `num_training` steps while the learning rate grows from `min_lr` to `max_lr`, records the
(smoothed) training loss, and suggests the rate where the loss falls fastest (`Tuner.lr_find`). The
weights are restored afterwards; nothing is saved but the plot, the curve (JSON) and, on request, a
copy of the config with the suggested `model.optimizer.learning_rate`. Any `fit` option may follow.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.tuner import Tuner

from src.errors import ConfigurationError
from src.tools.runs import training_cli, config_paths, lenient_on_divergence


def tool_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m src.cli lr-find", allow_abbrev=False,
        description="Learning-rate range test (Tuner.lr_find); every `fit` option is accepted too.",
    )
    parser.add_argument("--min_lr", type=float, default=1e-6)
    parser.add_argument("--max_lr", type=float, default=1e-1)
    parser.add_argument("--num_training", type=int, default=100, help="steps of the range test")
    parser.add_argument("--mode", choices=("exponential", "linear"), default="exponential")
    parser.add_argument("--early_stop_threshold", type=float, default=4.0, help="stop when loss > this × best loss")
    parser.add_argument("--output_dir", default="runs/lr-find", help="where lr_find.png and lr_find.json go")
    parser.add_argument("--write_config", default=None, help="write a copy of the (first) --config with the suggestion")
    return parser.parse_known_args(list(argv))


def with_learning_rate(config_text: str, learning_rate: float, note: str) -> str:
    """`config_text` with `model.optimizer.learning_rate` set; comments and layout kept (only that line changes)."""
    return _with_setting(config_text, "", ["model", "optimizer", "learning_rate"], f"{learning_rate:.2e}  # {note}", True)


def _with_setting(text: str, indent: str, keys: list[str], value: str, top: bool) -> str:
    """`text` (a YAML block at `indent`) with the nested `keys` set to `value`, written by hand because
    PyYAML's round trip drops comments: the key's line is replaced, or added with its missing parents."""
    name, rest = keys[0], keys[1:]
    if rest:
        block = re.search(rf"^{indent}{name}:[ \t]*(?:#[^\n]*)?\n((?:{indent}[ \t]+[^\n]*\n|[ \t]*\n)*)", text, re.M)
        if block is not None:
            body = block.group(1)
            child = re.search(r"^([ \t]+)\S", body, re.M)
            new_body = _with_setting(body, child.group(1) if child else indent + "  ", rest, value, False)
            return text[: block.start(1)] + new_body + text[block.end(1) :]
    else:
        line = re.search(rf"^{indent}{name}:[^\n]*$", text, re.M)
        if line is not None:
            return text[: line.start()] + f"{indent}{name}: {value}" + text[line.end() :]
    added = "".join(f"{indent}{'  ' * depth}{key}:\n" for depth, key in enumerate(keys[:-1]))
    added += f"{indent}{'  ' * (len(keys) - 1)}{keys[-1]}: {value}\n"
    return text.rstrip("\n") + "\n" + added if top else added + text


def main(argv: Sequence[str]) -> int:
    options, rest = tool_options(argv)
    # No base-model evaluation: the range test needs training steps only.
    cli = training_cli([*rest, "--model.evaluate_base", "false"])
    lenient_on_divergence(cli.model, cli.trainer)
    finder = Tuner(cli.trainer).lr_find(
        cli.model, datamodule=cli.datamodule, min_lr=options.min_lr, max_lr=options.max_lr,
        num_training=options.num_training, mode=options.mode, early_stop_threshold=options.early_stop_threshold,
        update_attr=False,
    )
    suggestion = finder.suggestion()
    steps = len(finder.results["lr"])
    if suggestion is None:
        raise ConfigurationError(
            f"lr-find recorded {steps} steps, too few for a suggestion (it needs more than 11): raise --num_training, "
            "or give it more training batches (data.train_file, trainer.max_epochs)"
        )
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    figure = finder.plot(suggest=True)
    figure.savefig(output / "lr_find.png", dpi=120, bbox_inches="tight")
    curve = {"suggestion": suggestion, "lr": finder.results["lr"], "loss": finder.results["loss"], "args": list(argv)}
    (output / "lr_find.json").write_text(json.dumps(curve, indent=2) + "\n", encoding="utf-8")
    print(f"lr-find: {steps} steps from {options.min_lr:g} to {options.max_lr:g}; suggested learning rate {suggestion:.2e}")
    print(f"Plot: {output / 'lr_find.png'}  curve: {output / 'lr_find.json'}")
    if options.write_config:
        configs = config_paths(rest)
        source = configs[0].read_text(encoding="utf-8") if configs else ""
        note = f"lr-find suggestion ({steps} steps, {options.min_lr:g}..{options.max_lr:g})"
        target = Path(options.write_config)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(with_learning_rate(source, suggestion, note), encoding="utf-8")
        print(f"Config with model.optimizer.learning_rate {suggestion:.2e}: {target}")
    return 0
