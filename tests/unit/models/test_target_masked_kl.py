"""target_masked_kl: KL(base || adapter) over the vocabulary without each position's target token, both
sides renormalised, on the task rows only. Raising the target alone costs nothing; moving the other
tokens' shares does; gradients reach the adapter only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.errors import ConfigurationError
from src.models.lora import attach_lora
from src.models.loss import (
    target_masked_kl_between,
    causal_lm_loss,
    check_target_masked_kl,
    replay_kl,
    target_masked_kl,
    training_loss,
)
from test_loss import padded_batch, tiny_gemma2, tiny_llama, with_lora
from test_replay_kl import assert_only_the_adapter_has_gradients, with_replay


def test_raising_only_the_target_token_costs_nothing() -> None:
    base = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    adapter = base.clone()
    adapter[0, 2] = 9.0  # the target's logit up, every other token's relative share unchanged
    assert target_masked_kl_between(adapter, base, torch.tensor([2])).item() == pytest.approx(0.0, abs=1e-6)
    plain = F.kl_div(adapter.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="batchmean")
    assert plain.item() > 1.0  # the full KL would pull the target back


def test_reordering_the_other_tokens_costs_their_kl_renormalised() -> None:
    base = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    adapter = torch.tensor([[-1.0, 1.0, 0.0, 2.0]])  # tokens 0 and 3 swapped
    kl = target_masked_kl_between(adapter, base, torch.tensor([1]))
    rest = [0, 2, 3]
    p, q = base[0, rest].softmax(-1), adapter[0, rest].softmax(-1)
    assert kl.item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma2])  # the label-only path and HF's full-logit path
def test_an_untouched_adapter_is_at_zero(build) -> None:
    torch.manual_seed(0)
    fresh = attach_lora(build(), r=4, alpha=8, dropout=0.0, target_modules="all-linear")  # B = 0
    assert target_masked_kl(fresh, padded_batch()).item() == pytest.approx(0.0, abs=1e-6)


def test_an_adapter_that_changes_the_model_is_positive_with_gradients_to_the_adapter_only() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama()).train()
    kl = target_masked_kl(model, padded_batch())
    assert kl.item() > 1e-3
    kl.backward()
    assert_only_the_adapter_has_gradients(model)


def test_only_the_task_rows_count() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama()).eval()
    batch = padded_batch()
    second_only = target_masked_kl(model, with_replay(batch, [True, False, True]))
    alone = {key: value[1:2] for key, value in batch.items()}
    assert second_only.item() == pytest.approx(target_masked_kl(model, alone).item(), rel=1e-5)
    assert target_masked_kl(model, with_replay(batch, [True, True, True])).item() == 0.0


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma2])
def test_the_training_loss_adds_both_weighted_terms_from_one_adapter_pass(build) -> None:
    torch.manual_seed(0)
    model = with_lora(build()).eval()
    batch = with_replay(padded_batch(), [True, False, True])
    cross_entropy = causal_lm_loss(model, batch)
    replayed, masked = replay_kl(model, batch), target_masked_kl(model, batch)
    loss, terms = training_loss(model, batch, 0.5, 2.0)
    assert set(terms) == {"replay_kl", "target_masked_kl"}
    torch.testing.assert_close(terms["replay_kl"], replayed, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["target_masked_kl"], masked, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, cross_entropy + 0.5 * replayed + 2.0 * masked, rtol=1e-4, atol=1e-6)


def test_without_replay_every_row_is_a_task_row_and_the_gradients_match_separate_passes() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama()).eval()
    batch = padded_batch()  # no replay column: a run without replay
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss, terms = training_loss(model, batch, 0.0, 1.0)
    assert list(terms) == ["target_masked_kl"]
    shared = torch.autograd.grad(loss, trainable)
    separate = torch.autograd.grad(causal_lm_loss(model, batch) + target_masked_kl(model, batch), trainable)
    for ours, theirs in zip(shared, separate):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_a_negative_weight_is_refused() -> None:
    check_target_masked_kl(0.0)
    check_target_masked_kl(1.5)
    with pytest.raises(ConfigurationError, match="model.target_masked_kl is -1"):
        check_target_masked_kl(-1.0)
