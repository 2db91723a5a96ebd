"""Causal-LM loss that computes vocabulary logits only where a label is learned.

With answer-only labels most positions carry no label, yet a plain forward projects every position
onto the vocabulary (SmolLM2: 576 × 49,152, a fifth of the model's FLOPs). Running the decoder and
projecting only labelled positions gives the same loss for less compute. Models whose head does
more than a linear projection (logit soft-capping, scaling) take the plain path. Both paths take
padded and packed batches alike (`decoder_inputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel

from src.data.chat_format import IGNORE_INDEX
from src.models.packing import decoder_inputs

_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def supports_label_only_logits(model: PeftModel) -> bool:
    base = model.get_base_model()
    head = base.get_output_embeddings()
    plain_head = isinstance(head, torch.nn.Linear) and head.bias is None
    return plain_head and base.get_decoder() is not base and not any(
        getattr(base.config, name, None) for name in _HEAD_EXTRAS
    )


def causal_lm_loss(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (the same value as HF's `loss`)."""
    if not supports_label_only_logits(model):
        return model(**decoder_inputs(batch), labels=batch["labels"]).loss
    base = model.get_base_model()
    hidden = base.get_decoder()(**decoder_inputs(batch)).last_hidden_state  # (B, T, H); packed: (1, ΣT, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    learned = targets != IGNORE_INDEX
    logits = base.get_output_embeddings()(hidden[:, :-1][learned])  # (N, V) for the N labelled positions
    return F.cross_entropy(logits.float(), targets[learned])
