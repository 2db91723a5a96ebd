"""Packed rows: every token's logits are those of its example run alone, the packed loss is the padded
loss of the same examples, and a model that lets packed examples see each other is refused."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

from src.data.chat_format import IGNORE_INDEX
from src.data.collate import TrainCollator, packing_collator
from src.errors import ConfigurationError
from src.models.lora import attach_lora
from src.models.loss import causal_lm_loss, supports_label_only_logits
from src.models.packing import check_packing_support, decoder_inputs

VOCAB = 64
PAD = 2
LENGTHS, ANSWER_TOKENS = [13, 9, 16], [4, 2, 6]


def tiny_llama(attn: str) -> LlamaForCausalLM:
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD, attn_implementation=attn)
    )


def tiny_phi(attn: str) -> PhiForCausalLM:
    return PhiForCausalLM(
        PhiConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, pad_token_id=PAD, attn_implementation=attn)
    )


def tiny_gpt2(attn: str) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                   eos_token_id=PAD, attn_implementation=attn)
    )


ARCHITECTURES = pytest.mark.parametrize("build", [tiny_llama, tiny_phi, tiny_gpt2], ids=["llama", "phi", "gpt2"])
ATTENTION = pytest.mark.parametrize("attn", ["sdpa", "eager"])


def with_lora(base):
    """LoRA with random B (a fresh adapter's B is zero), so the adapter changes the outputs."""
    model = attach_lora(base, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return model.eval()


def examples() -> list[dict[str, list[int]]]:
    """Chat-like examples: only the last few tokens (the answer and a learned end-of-turn = pad id) are labelled."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n, k in zip(LENGTHS, ANSWER_TOKENS):
        ids = torch.randint(3, VOCAB, (n,), generator=generator).tolist()
        ids[-1] = PAD
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - k) + ids[n - k :]})
    return rows


@ARCHITECTURES
@ATTENTION
def test_packed_logits_equal_each_example_run_alone(build, attn: str) -> None:
    torch.manual_seed(0)
    model = with_lora(build(attn))
    packed = packing_collator()(examples())
    assert packed["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():
        logits = model(**decoder_inputs(packed)).logits[0]  # (ΣT, V)
        start = 0
        for example in examples():
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]  # (T, V)
            torch.testing.assert_close(logits[start : start + len(alone)], alone, rtol=1e-4, atol=1e-5)
            start += len(alone)


def test_with_the_default_cache_the_boundaries_are_crossed() -> None:
    """Why `decoder_inputs` passes use_cache=False: an (empty) cache switches packed-row detection off."""
    torch.manual_seed(0)
    model = with_lora(tiny_llama("sdpa"))
    packed = packing_collator()(examples())
    with torch.no_grad():
        second_alone = model(input_ids=torch.tensor([examples()[1]["input_ids"]])).logits[0]
        with_cache = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True).logits[0]
    span = slice(LENGTHS[0], LENGTHS[0] + LENGTHS[1])
    assert (with_cache[span] - second_alone).abs().max() > 1e-2


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@ATTENTION
def test_packed_loss_equals_padded_loss_of_the_same_examples(build, attn: str) -> None:
    torch.manual_seed(0)
    model = with_lora(build(attn))
    assert supports_label_only_logits(model)
    packed, padded = packing_collator()(examples()), TrainCollator(PAD)(examples())
    # The same labelled tokens: each example's first label (a prompt token) was already ignored.
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())
    trainable = [p for p in model.parameters() if p.requires_grad]
    packed_loss, padded_loss = causal_lm_loss(model, packed), causal_lm_loss(model, padded)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    for a, b in zip(torch.autograd.grad(packed_loss, trainable), torch.autograd.grad(padded_loss, trainable)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_loss_on_the_plain_hf_path_equals_the_padded_loss() -> None:
    torch.manual_seed(0)
    base = tiny_llama("sdpa")
    base.set_output_embeddings(torch.nn.Linear(16, VOCAB, bias=True))  # a biased head takes HF's own loss
    model = with_lora(base)
    assert not supports_label_only_logits(model)
    packed, padded = packing_collator()(examples()), TrainCollator(PAD)(examples())
    torch.testing.assert_close(causal_lm_loss(model, packed), causal_lm_loss(model, padded), rtol=0, atol=1e-5)


@ARCHITECTURES
@ATTENTION
def test_models_that_keep_packed_examples_apart_pass_the_check(build, attn: str) -> None:
    model = with_lora(build(attn)).train()
    check_packing_support(model)
    assert model.training  # the check's eval mode does not leak into training


def test_a_model_that_lets_packed_examples_see_each_other_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = with_lora(tiny_llama("sdpa"))
    decoder = model.get_base_model().get_decoder()
    forward = decoder.forward

    def ignoring_positions(*args, position_ids=None, **kwargs):  # like an architecture without packed-row masks
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", ignoring_positions)
    with pytest.raises(ConfigurationError, match=r"data\.packing=true: LlamaForCausalLM .*'sdpa'.*data\.packing=false"):
        check_packing_support(model)
