"""Forward arguments for padded and packed batches, and a check that a model keeps packed examples apart.

A packed row holds several examples back to back with `position_ids` restarting at 0 for each.
transformers (`masking_utils.find_packed_sequence_indices`, and the flash-attention varlen path)
turns those restarts into block-diagonal causal attention, but only when no 2D attention mask and
no KV cache are given. Models default to `use_cache=True` and then build an empty cache even in
training, which silently switches the detection off: every example would attend to the ones before
it. So packed batches always go in with `use_cache=False`, and `check_packing_support` asks the
loaded model itself whether boundaries hold (architectures and transformers versions differ), instead
of trusting a list of architecture names.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from src.errors import ConfigurationError


def decoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, object]:
    """Keyword arguments for a decoder or causal LM forward over a training batch (no cache: nothing is generated)."""
    if "position_ids" in batch:  # packed (1, ΣT): the restarts of position_ids are the example boundaries
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


@torch.no_grad()
def check_packing_support(model: PeftModel | PreTrainedModel) -> None:
    """Raise unless a packed example's hidden states are independent of the examples packed before it.

    Two packed rows share their second example and differ in their first; if attention stops at the
    boundary, the second example's hidden states are the same in both rows (same shapes, same
    kernels: masked keys contribute exact zeros), else they differ by a lot.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    decoder = base.get_decoder()
    embeddings = base.get_input_embeddings()
    generator = torch.Generator().manual_seed(0)
    first_a, first_b, second = (torch.randint(embeddings.num_embeddings, (n,), generator=generator) for n in (4, 4, 5))
    positions = torch.cat([torch.arange(4), torch.arange(5)])[None].to(embeddings.weight.device)  # (1, 9)

    def second_example_states(first: torch.Tensor) -> torch.Tensor:
        row = torch.cat([first, second])[None].to(embeddings.weight.device)  # (1, 9)
        hidden = decoder(**decoder_inputs({"input_ids": row, "position_ids": positions})).last_hidden_state
        return hidden[0, 4:].float()  # (5, H)

    was_training = model.training
    model.eval()  # dropout would make the two rows differ for another reason
    try:
        with_a, with_b = second_example_states(first_a), second_example_states(first_b)
    finally:
        model.train(was_training)
    leak = (with_a - with_b).abs().max().item() / with_a.abs().max().clamp_min(1e-6).item()
    if leak > 1e-3:
        raise ConfigurationError(
            f"data.packing=true: {type(base).__name__} with attn_implementation="
            f"{base.config._attn_implementation!r} lets a packed example attend to the examples before it "
            f"(relative change {leak:.2g} of its hidden states), so packed training would learn across examples. "
            "Set data.packing=false, or try another model.attn_implementation (sdpa, eager, flash_attention_2)."
        )
