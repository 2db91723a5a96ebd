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
    model: PeftModel,
    batch: dict[str, torch.Tensor],
    replay_kl_weight: float = 0.0,
    target_masked_kl_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss a training step minimises: cross-entropy on the labels, plus `replay_kl_weight` times the
    replay rows' KL toward the base model and `target_masked_kl_weight` times the task rows' KL toward it
    over the non-target vocabulary (`target_masked_kl`). Returns (loss, {term: value}) with one entry,
    `replay_kl` or `target_masked_kl`, for each term whose weight is on (0 when the batch has no such rows).

    One adapter forward serves every term: the rows' logits are already among the batch's labelled
    logits, so only the base model's pass over the rows a KL needs (no gradient) is extra.
    """
    replay = batch.get("replay")
    if replay is None:  # no replay in this run (or packed rows, which cannot be marked): every row is task
        replay = torch.zeros(batch["input_ids"].shape[0], dtype=torch.bool, device=batch["input_ids"].device)
    wanted = {"replay_kl": (replay_kl_weight, replay), "target_masked_kl": (target_masked_kl_weight, ~replay)}
    wanted = {name: (weight, rows) for name, (weight, rows) in wanted.items() if weight}
    if not any(bool(rows.any()) for _, rows in wanted.values()):
        loss = causal_lm_loss(model, batch)
        return loss, {name: torch.zeros((), device=loss.device) for name in wanted}
    learned = batch["labels"][:, 1:] != IGNORE_INDEX
    targets = batch["labels"][:, 1:][learned]
    logits = labelled_logits(model, batch).float()  # (N, V), row-major over the labelled positions
    loss = F.cross_entropy(logits, targets)
    row_of_position = learned.nonzero()[:, 0]
    compared = torch.stack([rows for _, rows in wanted.values()]).any(0)  # rows the base model must see
    with torch.no_grad(), base_model_outputs(model):
        base = labelled_logits(model, batch if bool(compared.all()) else _rows(batch, compared)).float()
    in_compared = compared[row_of_position]  # base's rows are the labelled positions of the compared rows
    terms = {}
    for name, (weight, rows) in wanted.items():
        adapter_side = rows[row_of_position]
        base_side = adapter_side[in_compared]
        if name == "replay_kl":
            kl = _kl(logits[adapter_side], base[base_side])
        else:
            kl = target_masked_kl_between(logits[adapter_side], base[base_side], targets[adapter_side])
        terms[name] = kl
        loss = loss + weight * kl
    return loss, terms


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
        base = labelled_logits(model, replayed).float()
    return _kl(adapter_logits, base)


def _kl(adapter_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(base || adapter) per row of (N, V) logits; 0 for no rows."""
    if adapter_logits.shape[0] == 0:
        return adapter_logits.sum()  # 0 that keeps the graph
    base, adapter = base_logits.log_softmax(-1), adapter_logits.log_softmax(-1)
    return F.kl_div(adapter, base, log_target=True, reduction="batchmean")  # sum over the vocabulary, mean over tokens


def target_masked_kl_between(
    adapter_logits: torch.Tensor, base_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean KL(base || adapter) per row over the vocabulary without that row's target token, both
    distributions renormalised over what is left ("Mask the Target", arXiv 2605.29498).

    Cross-entropy raises the target's probability; this keeps the base model's preferences among every
    other token, which the full KL would also pull the target back toward the base's (fighting the task).
    """
    if adapter_logits.shape[0] == 0:
        return adapter_logits.sum()
    is_target = F.one_hot(targets, adapter_logits.shape[-1]).bool()
    base = base_logits.masked_fill(is_target, float("-inf")).log_softmax(-1)
    adapter = adapter_logits.masked_fill(is_target, float("-inf")).log_softmax(-1)
    per_token = torch.where(is_target, 0.0, base.exp() * (base - adapter))  # -inf - -inf is NaN at the target
    return per_token.sum(-1).mean()


def target_masked_kl(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Standalone `target_masked_kl_between` over the task rows (those not marked `replay`) of a batch, with the
    adapter and without it; `training_loss` reuses its adapter pass."""
    replay = batch.get("replay")
    if replay is not None and bool(replay.all()):
        return torch.zeros((), device=batch["input_ids"].device)
    task = batch if replay is None else _rows(batch, ~replay)
    learned = task["labels"][:, 1:] != IGNORE_INDEX
    with torch.no_grad(), base_model_outputs(model):
        base = labelled_logits(model, task).float()
    return target_masked_kl_between(labelled_logits(model, task).float(), base, task["labels"][:, 1:][learned])


def check_replay_kl(weight: float, packing: bool) -> None:
    """`model.replay_kl` needs a non-negative weight and padded batches (a packed row has no replay rows to mark)."""
    if weight < 0:
        raise ConfigurationError(f"model.replay_kl is {weight}; expected a weight >= 0 (0 turns the KL off)")
    if weight and packing:
        raise ConfigurationError("model.replay_kl needs padded batches: set data.packing: false, or model.replay_kl: 0")


def check_target_masked_kl(weight: float) -> None:
    """`model.target_masked_kl` is a weight: 0 turns it off, a negative one would reward forgetting."""
    if weight < 0:
        raise ConfigurationError(f"model.target_masked_kl is {weight}; expected a weight >= 0 (0 turns the KL off)")
