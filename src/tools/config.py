"""The tutor a training config describes, built for the commands that use it after training.

The commands read the same YAML files and `--model.*` / `--data.*` flags as `fit`, with the same
links between the two sections, and build the model through `TutorModule.configure_model`: the
tokenizer, base weights, adapter, chat template and system prompt are exactly those of training.
The `trainer` section and `seed_everything` are accepted (so a training config loads unchanged) and
ignored. Loading an adapter needs `--model.adapter_path`; a merged model is just a folder given as
`--model.model_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from peft import PeftModel

from src.training.lightning_cli import link_model_and_data
from src.data.datamodule import TutorDataModule
from src.training.tutor_module import TutorModule


def tutor_parser(description: str, prog: str) -> ArgumentParser:
    """A parser for `--config`, `--model.*` and `--data.*`; commands add their own options to it."""
    parser = ArgumentParser(description=description, prog=f"python -m src.cli {prog}", exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="a training config (YAML); may be repeated")
    parser.add_class_arguments(TutorModule, "model", fail_untyped=False)
    parser.add_class_arguments(TutorDataModule, "data", fail_untyped=False)
    link_model_and_data(parser)
    parser.add_argument("--trainer", type=dict[str, Any] | None, default=None, help="ignored (training only)")
    parser.add_argument("--seed_everything", type=bool | int, default=True, help="ignored (training only)")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    return parser


def parse(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    return parser.parse_args(list(argv))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_tutor(parser: ArgumentParser, cfg: Namespace, keep_fresh_lora: bool = False) -> TutorModule:
    """The trained tutor in eval mode, on `cfg.device`, in float32.

    Without `model.adapter_path`, the fresh (identity) LoRA that training would attach is removed
    again unless `keep_fresh_lora`: the base model, or a merged folder, answers on its own.
    """
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49; the pin allows older ones.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(cfg)
    module: TutorModule = init.model
    module.configure_model()
    if cfg.model.adapter_path is None and not keep_fresh_lora and isinstance(module.model, PeftModel):
        module.model = module.model.unload()
    module.model.requires_grad_(False)
    module.eval()
    return module.to(pick_device(cfg.device))
