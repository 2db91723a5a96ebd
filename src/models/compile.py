"""Regional `torch.compile`: compile each repeated transformer block's forward, not the whole model.

Compiling blocks in place keeps every module, parameter name and the PEFT wrapper as they were, so
adapter saving, `disable_adapter` and `generate` work unchanged; the identical blocks share one compiled
graph, so compile time is that of one block, not of the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from src.errors import ConfigurationError

AUTO = "auto"


def resolve_compile(requested: bool | str, device_type: str, precision: str) -> tuple[bool, str]:
    """(whether to compile, why) for `model.compile`; `true` and `false` pass through.

    `auto` compiles where it was measured to pay: on GPUs, and on CPUs training in a 16-bit precision
    (bf16-mixed on AVX512-BF16: training steps 538-595 s against 723-783 s eager). In float32 on the CPU
    the steps are bound by matrix products that inductor leaves to the same library calls (248 against
    246 tokens/s), so `auto` skips the minute of compiling and the C++ compiler there.
    """
    if requested != AUTO:
        return bool(requested), "as set"
    if device_type != "cpu":
        return True, f"training on {device_type}"
    if str(precision).startswith(("bf16", "16")):
        return True, f"{precision} on the CPU: compiled steps ran ~1.3x faster"
    return False, f"{precision} on the CPU: compiling gained nothing in float32"


def compile_repeated_blocks(model: PeftModel | PreTrainedModel, backend: str = "inductor") -> int:
    """Compile every decoder block of `model` in place for the passes that record gradients
    (`compile_gradient_passes`); returns how many were compiled.

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
    # Lengths change from batch to batch (padding to a multiple of 8, packed rows): dynamic shapes avoid
    # one recompilation per length. The class's forward takes the block as an argument, so that dynamo
    # treats blocks as inputs and one graph serves them all (a bound method would compile one per block).
    compiled = {kind: torch.compile(kind.forward, backend=backend, dynamic=True) for kind in {type(b) for b in blocks}}
    for block in blocks:
        compile_gradient_passes(block, compiled[type(block)])
    return len(blocks)


def compile_gradient_passes(block: torch.nn.Module, compiled_forward: Callable[..., Any]) -> None:
    """Run `block`'s forward compiled in passes that record gradients and eagerly in passes that do not.

    Training steps are the passes worth compiling: a thousand of them, one shape family. Passes without
    gradient (the base model's pass for the replay KL, validation, generation's KV-cache decoding) differ
    in grad mode, adapter state and shapes, so each would compile graphs of its own: dynamo recompiles on
    grad mode and stops compiling a function after 8 versions, leaving later training shapes eager. torch
    has no per-call switch for one compiled module (`torch.compiler.set_stance` is process-wide), hence this
    dispatch.
    """
    eager = block.forward

    @functools.wraps(eager)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return compiled_forward(block, *args, **kwargs)
        return eager(*args, **kwargs)

    block.forward = forward


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with (its own search: config.cpp.cxx, $CXX), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        return get_cpp_compiler()
    except InvalidCxxCompiler:
        return None


def check_cpp_compiler() -> None:
    """Before training on the CPU with `model.compile`: inductor's CPU kernels are C++ that it builds at the
    first step, so without a compiler the run would stop there, after the base model's evaluation. Passes
    without gradient run eagerly (`compile_gradient_passes`): answering and validating need no compiler."""
    if torch._dynamo.config.disable:  # TORCH_COMPILE_DISABLE=1: torch.compile runs nothing compiled
        return
    if cpp_compiler() is None:
        raise ConfigurationError(
            "model.compile=true on the CPU needs a C++ compiler for torch.compile's kernels and none was found "
            "(g++ or clang++ on the PATH, or $CXX): install one (e.g. `apt install g++`) or set model.compile: false."
        )
