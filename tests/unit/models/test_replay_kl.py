"""replay_kl: KL(base || adapter) per labelled token of the replay rows only; 0 for an adapter that leaves
the model alone, positive once it changes it, with gradients only through the adapter."""

from __future__ import annotations

import pytest
import torch

from src.errors import ConfigurationError
from src.models.lora import attach_lora
from src.models.loss import causal_lm_loss, check_replay_kl, labelled_logits, replay_kl, training_loss
from test_loss import padded_batch, tiny_gemma2, tiny_llama, with_lora


def assert_only_the_adapter_has_gradients(model: torch.nn.Module) -> None:
    graded = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all("lora_" in name for name in graded)


def with_replay(batch: dict[str, torch.Tensor], rows: list[bool]) -> dict[str, torch.Tensor]:
    return {**batch, "replay": torch.tensor(rows)}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma2])  # the label-only path and HF's full-logit path
def test_an_untouched_adapter_is_at_zero_kl(build) -> None:
    torch.manual_seed(0)
    fresh = attach_lora(build(), r=4, alpha=8, dropout=0.0, target_modules="all-linear")  # B = 0
    assert replay_kl(fresh, with_replay(padded_batch(), [True, False, True])).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma2])
def test_an_adapter_that_changes_the_model_has_positive_kl_with_gradients_to_the_adapter_only(build) -> None:
    torch.manual_seed(0)
    model = with_lora(build()).train()
    kl = replay_kl(model, with_replay(padded_batch(), [True, False, True]))
    assert kl.item() > 1e-3
    kl.backward()
    assert_only_the_adapter_has_gradients(model)


def test_only_the_replay_rows_count() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama())
    batch = padded_batch()
    first_only = replay_kl(model, with_replay(batch, [True, False, False]))
    alone = {key: value[:1] for key, value in batch.items()}
    assert first_only.item() == pytest.approx(replay_kl(model, with_replay(alone, [True])).item(), rel=1e-5)
    assert replay_kl(model, with_replay(batch, [False, False, False])).item() == 0.0
    assert replay_kl(model, batch).item() == 0.0  # a batch without the replay column (no replay)


def test_labelled_logits_are_one_row_per_labelled_position() -> None:
    batch = padded_batch()
    logits = labelled_logits(with_lora(tiny_llama()), batch)
    assert logits.shape == (int((batch["labels"][:, 1:] != -100).sum()), 64)


def test_a_negative_weight_or_packed_batches_are_refused() -> None:
    check_replay_kl(0.5, packing=False)
    check_replay_kl(0.0, packing=True)
    with pytest.raises(ConfigurationError, match="model.replay_kl is -1"):
        check_replay_kl(-1.0, packing=False)
    with pytest.raises(ConfigurationError, match="data.packing: false"):
        check_replay_kl(0.5, packing=True)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma2])
def test_the_training_loss_is_cross_entropy_plus_the_weighted_kl_from_one_adapter_pass(build) -> None:
    torch.manual_seed(0)
    model = with_lora(build()).eval()
    batch = with_replay(padded_batch(), [True, False, True])
    cross_entropy, kl = causal_lm_loss(model, batch), replay_kl(model, batch)
    plain, no_terms = training_loss(model, batch, 0.0)
    assert no_terms == {}
    torch.testing.assert_close(plain, cross_entropy)
    loss, logged = training_loss(model, batch, 0.5)
    assert list(logged) == ["replay_kl"]
    torch.testing.assert_close(logged["replay_kl"], kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, cross_entropy + 0.5 * kl, rtol=1e-4, atol=1e-6)


def test_a_batch_without_replay_rows_adds_a_zero_kl() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama()).eval()
    batch = with_replay(padded_batch(), [False, False, False])
    loss, terms = training_loss(model, batch, 1.0)
    assert terms["replay_kl"].item() == 0.0
    torch.testing.assert_close(loss, causal_lm_loss(model, batch))


def test_the_shared_pass_gives_the_gradients_of_two_separate_passes() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama()).eval()
    batch = with_replay(padded_batch(), [True, False, True])
    trainable = [p for p in model.parameters() if p.requires_grad]
    shared = torch.autograd.grad(training_loss(model, batch, 1.0)[0], trainable)
    separate = torch.autograd.grad(causal_lm_loss(model, batch) + replay_kl(model, batch), trainable)
    for ours, theirs in zip(shared, separate):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
