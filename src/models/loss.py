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
from src.errors import ConfigurationError
from src.models.lora import base_model_outputs
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
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    return F.cross_entropy(labelled_logits(model, batch).float(), targets[targets != IGNORE_INDEX])


def training_loss(
    model: PeftModel, batch: dict[str, torch.Tensor], replay_kl_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss a training step minimises: cross-entropy on the labels, plus `replay_kl_weight` times the
    replay rows' KL toward the base model; returns (loss, that KL or None when the weight is 0).

    With the KL on, one adapter forward serves both terms: the replay rows' logits are already among the
    batch's labelled logits, so only the base model's pass over those rows (no gradient) is extra.
    """
    rows = batch.get("replay")
    if not replay_kl_weight or rows is None or not bool(rows.any()):
        loss = causal_lm_loss(model, batch)
        return loss, (torch.zeros((), device=loss.device) if replay_kl_weight else None)
    learned = batch["labels"][:, 1:] != IGNORE_INDEX
    logits = labelled_logits(model, batch).float()  # (N, V), row-major over the labelled positions
    loss = F.cross_entropy(logits, batch["labels"][:, 1:][learned])
    on_replay = rows[learned.nonzero()[:, 0]]  # which labelled positions belong to a replay row
    kl = _kl_to_base(logits[on_replay], model, _rows(batch, rows))
    return loss + replay_kl_weight * kl, kl


def labelled_logits(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, V) vocabulary logits at the N labelled positions of a padded or packed batch (label-only where the
    head allows it)."""
    learned = batch["labels"][:, 1:] != IGNORE_INDEX
    if not supports_label_only_logits(model):
        return model(**decoder_inputs(batch)).logits[:, :-1][learned]
    base = model.get_base_model()
    hidden = base.get_decoder()(**decoder_inputs(batch)).last_hidden_state  # (B, T, H); packed: (1, ΣT, H)
    return base.get_output_embeddings()(hidden[:, :-1][learned])


def replay_kl(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean KL(base || adapter) per labelled token of the batch's replay rows (`batch["replay"]`); 0 without any.

    Cross-entropy on the base model's greedy reply only asks the adapter to keep the base's top token;
    the KL asks it to keep the base's whole next-token distribution on general text. Standalone, the
    replay rows run with the adapter and without it (no gradient); `training_loss` reuses its adapter pass.
    """
    rows = batch.get("replay")
    if rows is None or not bool(rows.any()):
        return torch.zeros((), device=batch["input_ids"].device)
    replayed = _rows(batch, rows)
    return _kl_to_base(labelled_logits(model, replayed).float(), model, replayed)


def _rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: batch[key][rows] for key in ("input_ids", "attention_mask", "labels")}


def _kl_to_base(adapter_logits: torch.Tensor, model: PeftModel, replayed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean KL(base || adapter) per labelled token, given the adapter's logits at `replayed`'s labelled positions."""
    with torch.no_grad(), base_model_outputs(model):
        base = labelled_logits(model, replayed).float().log_softmax(-1)
    adapter = adapter_logits.log_softmax(-1)
    return F.kl_div(adapter, base, log_target=True, reduction="batchmean")  # sum over the vocabulary, mean over tokens


def check_replay_kl(weight: float, packing: bool) -> None:
    """`model.replay_kl` needs a non-negative weight and padded batches (a packed row has no replay rows to mark)."""
    if weight < 0:
        raise ConfigurationError(f"model.replay_kl is {weight}; expected a weight >= 0 (0 turns the KL off)")
    if weight and packing:
        raise ConfigurationError("model.replay_kl needs padded batches: set data.packing: false, or model.replay_kl: 0")
