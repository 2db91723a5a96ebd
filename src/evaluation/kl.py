"""How far the adapter moved the base model's distribution, measured without an answer key.

Mean per-token KL(base || adapter) on the base model's own replies, teacher-forced: the base model's
greedy reply to each open prompt is fed to both models, and at every reply position the divergence
of the adapter's next-token distribution from the base's is averaged. It needs two forward passes
and no generation. With PEFT both come from one model: the adapter forward, then the same forward
inside `base_model_outputs(model)` (the adapter switched off, or PiSSA's initial adapter swapped in).

Positions count where `labels != -100` (the reply tokens, end-of-turn included), shifted as in the
causal LM loss: the logits at position t predict the label at t + 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from peft import PeftModel
from torchmetrics import Metric
from torchmetrics.utilities.compute import _safe_divide

from src.data.chat_format import IGNORE_INDEX, ChatFormatter
from src.data.collate import TrainCollator
from src.models.lora import base_model_outputs


class TeacherForcedRows(NamedTuple):
    """Per-row results of one teacher-forced pass over (prompt, base reply) rows, each of shape (B,)."""

    kl: torch.Tensor  # float64: sum of per-token KL(base || adapter) over the row's labelled positions
    tokens: torch.Tensor  # long: how many labelled positions the row has (reply tokens, end-of-turn included)
    reproduced: torch.Tensor  # bool: the adapter's argmax is the label at every labelled position in budget


@torch.no_grad()
def teacher_forced_rows(
    model: PeftModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    budget: int | None = None,
    end_of_turn_ids: set[int] | None = None,
) -> TeacherForcedRows:
    """KL(base || adapter) per row, and whether the adapter's greedy decoding would give the reply again.

    `reproduced` compares the adapter's argmax with the reply tokens at the first `budget` labelled
    positions (all of them when None): when they all agree, greedy generation with `budget` new tokens
    returns this reply exactly (up to float ties between a full forward and a cached one), so the reply
    need not be generated again. A reply of more than `budget` tokens (a final end-of-turn label, one of
    `end_of_turn_ids`, not counted) can never be reproduced within the budget.
    """
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"KL(base || adapter) needs a PEFT model to switch the adapter off, got {type(model).__name__}; "
            "wrap the base model with peft.get_peft_model."
        )
    target = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): which next-token predictions are reply tokens
    # The output head runs only from the first reply position on: prompt positions predict nothing we read.
    start = int(target.any(dim=0).nonzero()[0]) if target.any() else target.shape[1]
    keep = input_ids.shape[1] - start
    selected = target[:, start:]  # (B, keep - 1)

    def reply_logits() -> torch.Tensor:  # (N, V)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
        return logits[:, :-1][selected]

    was_training = model.training
    model.eval()  # LoRA dropout would make the measure random
    try:
        adapter_logits = reply_logits()
        with base_model_outputs(model):
            base_logits = reply_logits()
    finally:
        model.train(was_training)
    rows = target.nonzero()[:, 0]  # (N,): the row of each labelled position
    batch = input_ids.shape[0]
    base_logp = F.log_softmax(base_logits.float(), dim=-1)
    adapter_logp = F.log_softmax(adapter_logits.float(), dim=-1)
    # kl_div(input, target) = Σ target · (log target − input): input is the adapter, target the base.
    per_token = F.kl_div(adapter_logp, base_logp, log_target=True, reduction="none").sum(-1)  # (N,)
    kl = torch.zeros(batch, dtype=torch.float64, device=per_token.device).index_add_(0, rows, per_token.double())
    tokens = target.sum(dim=1)  # (B,)
    rank = (target.cumsum(dim=1) - 1)[target]  # (N,): 0 for a reply's first token, 1 for its second...
    in_budget = rank < budget if budget is not None else torch.ones_like(rank, dtype=torch.bool)
    wrong = (adapter_logits.argmax(-1) != labels[:, 1:][target]) & in_budget  # (N,)
    mismatches = torch.zeros(batch, dtype=torch.long, device=wrong.device).index_add_(0, rows, wrong.long())
    fits = torch.ones_like(tokens, dtype=torch.bool)
    if budget is not None:
        last_label = labels.gather(1, (target.long().cumsum(dim=1).argmax(dim=1) + 1).unsqueeze(1)).squeeze(1)  # (B,)
        ends_turn = torch.isin(last_label, torch.tensor(sorted(end_of_turn_ids or ()), dtype=labels.dtype,
                                                        device=labels.device))
        fits = tokens - ends_turn.long() <= budget
    return TeacherForcedRows(kl=kl, tokens=tokens, reproduced=(mismatches == 0) & fits & (tokens > 0))


def token_kl_sum(model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """(sum of per-token KL(base || adapter) over labelled positions, number of those positions)."""
    rows = teacher_forced_rows(model, input_ids, attention_mask, labels)
    return rows.kl.sum(), int(rows.tokens.sum())


def reply_batches(
    formatter: ChatFormatter, prompts: Sequence[str], replies: Sequence[str], batch_size: int, max_length: int | None = None
) -> Iterable[dict[str, torch.Tensor]]:
    """Right-padded teacher-forcing batches of (prompt, reply) conversations, labels on the reply only."""
    if len(prompts) != len(replies):
        raise ValueError(f"Got {len(prompts)} prompts but {len(replies)} replies; give one reply per prompt.")
    collate = TrainCollator(formatter.tokenizer.pad_token_id)
    for start in range(0, len(prompts), batch_size):
        examples = []
        for prompt, reply in zip(prompts[start : start + batch_size], replies[start : start + batch_size]):
            tokens = formatter.tokenize(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], max_length
            )
            examples.append({"input_ids": tokens.input_ids, "labels": tokens.labels})
        yield collate(examples)


class MeanTokenKL(Metric):
    """Mean per-token KL(base || adapter) over every labelled position seen (`retain/kl`, in nats)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    total: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> None:
        total, tokens = token_kl_sum(model, input_ids, attention_mask, labels)
        self.total += total.to(self.total.device)
        self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return _safe_divide(self.total.float(), self.tokens)
