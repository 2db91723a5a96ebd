"""Regional `torch.compile`: compile each repeated transformer block in place, not the whole model.

Compiling blocks in place (`nn.Module.compile`) keeps every module, parameter name and the PEFT
wrapper as they were, so adapter saving, `disable_adapter` and `generate` work unchanged; the
identical blocks share one compiled graph, so compile time is that of one block, not of the model.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from src.errors import ConfigurationError


def compile_repeated_blocks(model: PeftModel | PreTrainedModel, backend: str = "inductor") -> int:
    """Compile every decoder block of `model` in place; returns how many were compiled.

    The blocks are the classes transformers lists in `_no_split_modules` (the units it never splits
    across devices: LlamaDecoderLayer, PhiDecoderLayer, GPT2Block, ...).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    block_names = set(base._no_split_modules or ())
    blocks = [module for module in base.modules() if type(module).__name__ in block_names]
    if not blocks:
        raise ConfigurationError(
            f"model.compile=true: {type(base).__name__} names no repeated blocks (_no_split_modules is "
            f"{sorted(block_names)}), so there is nothing to compile region by region; set model.compile=false."
        )
    for block in blocks:
        # Lengths change from batch to batch (padding to a multiple of 8, packed rows): dynamic shapes
        # avoid one recompilation per length.
        block.compile(backend=backend, dynamic=True)
    return len(blocks)
