"""causal_lm_loss: projecting only labelled positions onto the vocabulary gives HF's own loss, and
heads that do more than a plain linear projection take HF's path instead."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from src.data.chat_format import IGNORE_INDEX
from src.models.lora import attach_lora
from src.models.loss import causal_lm_loss, supports_label_only_logits

VOCAB = 64
PAD = 2



def tiny_llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD)
    )


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=PAD)
    )


def tiny_gemma2() -> Gemma2ForCausalLM:
    # Gemma 2 soft-caps its logits (final_logit_softcapping=30 by default).
    return Gemma2ForCausalLM(
        Gemma2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=PAD)
    )


def with_lora(base):
    """LoRA with random B (a fresh adapter's B is zero), so the adapter changes the loss."""
    model = attach_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return model.eval()


def padded_batch() -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; only the last few real tokens of each are labelled."""
    generator = torch.Generator().manual_seed(0)
    lengths, answer_tokens, width = [13, 9, 16], [4, 2, 6], 16
    input_ids = torch.full((3, width), PAD)
    labels = torch.full((3, width), IGNORE_INDEX)
    attention_mask = torch.zeros((3, width), dtype=torch.long)
    for row, (n, k) in enumerate(zip(lengths, answer_tokens)):
        input_ids[row, :n] = torch.randint(3, VOCAB, (n,), generator=generator)
        input_ids[row, n - 1] = PAD  # a real end-of-turn token that shares the pad id, and is learned
        labels[row, n - k : n] = input_ids[row, n - k : n]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def hf_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def count_full_forwards(model, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the PEFT model's own forward (the path that projects every position)."""
    calls: list[int] = []
    forward = model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_label_only_loss_equals_hf_loss(build, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = with_lora(build())
    batch = padded_batch()
    assert supports_label_only_logits(model)
    expected = hf_loss(model, batch)
    calls = count_full_forwards(model, monkeypatch)
    loss = causal_lm_loss(model, batch)
    assert calls == []  # the decoder and head were called directly
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    # The adapter takes part: the same batch through the bare base model gives another loss.
    with model.disable_adapter():
        assert abs(causal_lm_loss(model, batch).item() - loss.item()) > 1e-3


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_label_only_loss_has_hf_gradients(build) -> None:
    torch.manual_seed(0)
    model = with_lora(build())
    batch = padded_batch()
    trainable = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(causal_lm_loss(model, batch), trainable)
    theirs = torch.autograd.grad(hf_loss(model, batch), trainable)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_loss_ignores_what_padding_holds() -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_llama())
    batch = padded_batch()
    other = {key: value.clone() for key, value in batch.items()}
    other["input_ids"][batch["attention_mask"] == 0] = 7
    torch.testing.assert_close(causal_lm_loss(model, other), causal_lm_loss(model, batch), rtol=0, atol=1e-6)


def assert_hf_path_gives_hf_loss_in_one_forward(model, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = padded_batch()
    expected = hf_loss(model, batch)
    calls = count_full_forwards(model, monkeypatch)
    torch.testing.assert_close(causal_lm_loss(model, batch), expected, rtol=0, atol=1e-6)
    assert calls == [1]


def test_softcapped_logits_take_hf_path(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = with_lora(tiny_gemma2())
    assert model.get_base_model().config.final_logit_softcapping
    assert not supports_label_only_logits(model)
    assert_hf_path_gives_hf_loss_in_one_forward(model, monkeypatch)


def test_head_with_a_bias_takes_hf_path(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    base = tiny_llama()
    base.set_output_embeddings(torch.nn.Linear(16, VOCAB, bias=True))
    with torch.no_grad():
        base.get_output_embeddings().bias.normal_()
    model = with_lora(base)
    assert not supports_label_only_logits(model)
    assert_hf_path_gives_hf_loss_in_one_forward(model, monkeypatch)


def test_non_linear_head_is_not_label_only() -> None:
    base = tiny_llama()
    base.set_output_embeddings(torch.nn.Sequential(torch.nn.Linear(16, VOCAB, bias=False)))
    assert not supports_label_only_logits(attach_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj"]))
