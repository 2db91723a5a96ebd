"""Attach LoRA to a frozen base model, or load a trained adapter onto it.

PiSSA initialisation moves the principal part of every adapted weight into the adapter: the base
layers then hold only the residual W - scale·B₀A₀. Two things follow, both handled here:
`disable_adapter()` no longer gives the original model (`base_model_outputs` puts B₀A₀ back
instead), and a saved adapter only fits the residual (`save_adapter` converts it, with PEFT's
`path_initial_model_for_weight_conversion`, into a plain LoRA adapter of rank 2r for the original base).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from src.errors import ConfigurationError

# PEFT's values that need nothing but the weights (eva, corda, loftq, olora... need data or other configs).
LORA_INITS = ("True", '"gaussian"', '"pissa"', '"pissa_niter_<n>"')
INITIAL_STATE = "_pissa_initial_adapter"  # attribute of the PeftModel: B₀, A₀ as PEFT saves them


def check_lora_options(
    init_lora_weights: bool | str, use_dora: bool, quantization: str | None = None
) -> None:
    """Raise one ConfigurationError for an init PEFT cannot run here, or a combination that breaks."""
    if not (init_lora_weights is True or init_lora_weights in ("gaussian", "pissa") or is_pissa(init_lora_weights)):
        raise ConfigurationError(
            f"model.lora.init: {init_lora_weights!r} is not supported; expected one of {', '.join(LORA_INITS)} "
            "(e.g. pissa_niter_4: PiSSA from 4 subspace iterations, seconds instead of a full SVD)."
        )
    if not is_pissa(init_lora_weights):
        return
    if quantization is not None:
        raise ConfigurationError(
            f"model.lora.init: {init_lora_weights} decomposes the float base weights, but model.quantization is "
            f"{quantization} (PEFT's PiSSA runs on float32/16 weights only). Set model.quantization: null or "
            "model.lora.init: true."
        )
    if use_dora:
        raise ConfigurationError(
            f"model.lora.init: {init_lora_weights} with model.lora.use_dora: true: DoRA's magnitudes would be taken from "
            "the PiSSA residual, and PEFT's conversion of the saved adapter back to the original base ignores them. "
            "Set one of model.lora.use_dora: false or model.lora.init: true."
        )


def is_pissa(init_lora_weights: bool | str) -> bool:
    return isinstance(init_lora_weights, str) and re.fullmatch(r"pissa(_niter_\d+)?", init_lora_weights) is not None


def attach_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str,
    adapter_path: str | None = None,
    layers: list[int] | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
    init_lora_weights: bool | str = True,
) -> PeftModel:
    """A fresh trainable adapter, or the adapter saved at `adapter_path` (trainable, to continue).

    `target_modules="all-linear"` is PEFT's own search for every linear layer except the output
    head (seed 004's `find_all_linear_names`), including GPT-2's Conv1D projections. `layers`
    restricts LoRA to those decoder layers: with only the upper layers adapted, backward stops there
    and a CPU step costs noticeably less. `use_rslora` scales the update by alpha/√r instead of
    alpha/r (rank-stable); `use_dora` adds DoRA's per-output magnitude vectors (slower steps);
    `init_lora_weights` is PEFT's: True (B = 0), "gaussian", or "pissa[_niter_n]" (see the module
    docstring). A saved adapter keeps the options it was trained with.
    """
    if adapter_path is not None:
        try:
            return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
        except RuntimeError as error:
            if "size mismatch" not in str(error):
                raise
            # The adapter records no base model, or one under a name that matched: its shapes still differ.
            raise ConfigurationError(
                f"model.adapter_path: the adapter {adapter_path} does not fit {model.name_or_path or type(model).__name__} "
                f"(its weight shapes differ: an adapter only fits the base model it was trained on). Set "
                "model.model_name to that base model, or use an adapter trained on this one."
            ) from error
    check_lora_options(init_lora_weights, use_dora)
    if layers is not None and target_modules == "all-linear":
        # PEFT refuses `layers_to_transform` with the "all-linear" shorthand: spell the names out.
        target_modules = linear_module_names(model)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        use_rslora=use_rslora,
        use_dora=use_dora,
        init_lora_weights=init_lora_weights,
    )
    peft_model = get_peft_model(model, config)
    if is_pissa(init_lora_weights):
        # Needed later to give back the original model and to convert saved adapters; PEFT keeps no copy.
        state = get_peft_model_state_dict(peft_model)
        setattr(peft_model, INITIAL_STATE, {k: v.detach().float().clone() for k, v in state.items()})
    return peft_model


def initial_adapter_state(model: PeftModel) -> dict[str, torch.Tensor] | None:
    """PiSSA's B₀, A₀ (PEFT state-dict names), or None when the base weights are the original ones."""
    return getattr(model, INITIAL_STATE, None)


@contextmanager
def base_model_outputs(model: PeftModel) -> Iterator[PeftModel]:
    """The original base model inside the block, for base-model evaluation.

    Without PiSSA that is `disable_adapter()`. Under PiSSA the base layers hold the residual, so the
    adapter stays on with B₀, A₀ swapped in: residual + scale·B₀A₀ is the original weight up to the
    rounding of the residual in the base dtype (exact in float32 to ~1e-6; bf16 answers can differ).
    """
    initial = initial_adapter_state(model)
    if initial is None:
        with model.disable_adapter():
            yield model
        return
    parameters = _adapter_parameters(model, initial)
    trained = {name: p.detach().clone() for name, p in parameters.items()}
    try:
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(initial[name])
        yield model
    finally:
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(trained[name])


def _adapter_parameters(model: PeftModel, state: dict[str, torch.Tensor]) -> dict[str, torch.nn.Parameter]:
    """The live parameters behind PEFT state-dict names (which drop the adapter name)."""
    by_saved_name = {name.replace(".default", ""): p for name, p in model.named_parameters() if "lora_" in name}
    return {name: by_saved_name[name] for name in state}


def save_adapter(model: PeftModel, folder: str | Path, **kwargs: Any) -> None:
    """`save_pretrained` of the adapter so that it loads onto the original base model.

    A PiSSA adapter is saved as PEFT's conversion ΔW = BA - B₀A₀ = [B | -B₀][A ; A₀] (rank 2r, same
    scaling): without it the saved adapter would only be right on the residual weights, which are
    never saved. Other adapters are saved unchanged.
    """
    initial = initial_adapter_state(model)
    if initial is None:
        model.save_pretrained(folder, **kwargs)
        return
    with tempfile.TemporaryDirectory() as scratch:
        # PEFT loads the initial adapter from a folder (it writes the config there itself).
        initial_folder = Path(scratch) / "pissa_init"
        initial_folder.mkdir()
        save_file({k: v.contiguous() for k, v in initial.items()}, str(initial_folder / "adapter_model.safetensors"))
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial_folder), **kwargs)


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Names of every linear projection (GPT-2's Conv1D included) except the output head."""
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        }
    )


def count_parameters(model: PeftModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def keep_trainable_in_float32(model: torch.nn.Module) -> None:
    """LoRA weights (and so their gradients and optimizer state) in float32 whatever the base dtype:
    bf16/fp16 updates of lr × gradient round away against weights of much larger magnitude."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
