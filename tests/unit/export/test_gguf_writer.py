"""export_gguf on tiny llamas: transformers' GGUF loader gives back the model, the keys are llama.cpp's."""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from tiny_llamas import save_tiny_llama
from src.errors import ConfigurationError
from src.export import export_gguf
from src.sources.offline_default import locate_gguf

# Keys the reference file has because its model card said so (llama.cpp copies them from the hub README).
MODEL_CARD_KEYS = {"general.basename", "general.finetune", "general.languages", "general.license", "general.organization"}


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("merged"), tiny_tokenizer)


@pytest.fixture(scope="module")
def reference_gguf() -> gguf.GGUFReader:
    try:
        folder, name = locate_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return gguf.GGUFReader(folder / name)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_f16_export_loads_back_with_the_same_logits_and_greedy_answers(tmp_path, tiny_llama_dir, tiny_tokenizer):
    path = export_gguf(tiny_llama_dir, tmp_path / "tiny.f16.gguf", "f16")
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "¿Cuánto es 45 - 27?"}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    expected, got = logits(original, prompt), logits(loaded, prompt)
    # Only f16 rounding of the weights separates the two; a misplaced Q/K row would change everything.
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    assert torch.equal(loaded.generate(prompt, **greedy), original.generate(prompt, **greedy))


def test_q8_0_export_quantises_matrices_and_stays_close(tmp_path, tiny_llama_dir):
    path = export_gguf(tiny_llama_dir, tmp_path / "tiny.q8_0.gguf", "q8_0")
    reader = gguf.GGUFReader(path)
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ids = torch.arange(1, 40).unsqueeze(0)
    torch.testing.assert_close(logits(loaded, ids), logits(original, ids), atol=2e-2, rtol=0)


def test_rows_that_do_not_split_into_32_value_blocks_fall_back_to_f16(tmp_path, tiny_tokenizer):
    folder = save_tiny_llama(tmp_path / "model", tiny_tokenizer, hidden_size=48, intermediate_size=96)
    reader = gguf.GGUFReader(export_gguf(folder, tmp_path / "odd.gguf", "q8_0"))
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16  # rows of 48
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0  # rows of 96


def test_keys_and_value_types_are_those_llama_cpp_writes(tmp_path, tiny_llama_dir, tiny_tokenizer, reference_gguf):
    reader = gguf.GGUFReader(export_gguf(tiny_llama_dir, tmp_path / "tiny.gguf", "f16", name="tiny tutor"))
    ours = {key: field for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    reference = {key: field for key, field in reference_gguf.fields.items() if not key.startswith("GGUF.")}
    assert set(ours) == set(reference) - MODEL_CARD_KEYS
    for key, field in ours.items():
        assert field.types == reference[key].types, key
    assert ours["general.architecture"].contents() == "llama"
    assert ours["general.name"].contents() == "tiny tutor"
    assert ours["llama.attention.head_count_kv"].contents() == 2
    assert ours["llama.rope.dimension_count"].contents() == 8
    assert ours["tokenizer.chat_template"].contents() == tiny_tokenizer.chat_template
    assert ours["tokenizer.ggml.eos_token_id"].contents() == tiny_tokenizer.eos_token_id
    assert ours["tokenizer.ggml.add_bos_token"].contents() is False


def test_export_replaces_the_file_whole(tmp_path, tiny_llama_dir):
    out = tmp_path / "sub" / "tiny.gguf"
    export_gguf(tiny_llama_dir, out, "f16")
    export_gguf(tiny_llama_dir, out, "q8_0")
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert [path.name for path in out.parent.iterdir()] == ["tiny.gguf"]


def test_unsupported_architectures_are_refused_with_the_supported_list(tmp_path, tiny_tokenizer):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigurationError, match=r"GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        export_gguf(tmp_path, tmp_path / "gpt2.gguf")
    assert not (tmp_path / "gpt2.gguf").exists()


def test_unknown_outtype_is_refused_before_any_work(tmp_path, tiny_llama_dir):
    with pytest.raises(ConfigurationError, match="q4_k.*f16, q8_0"):
        export_gguf(tiny_llama_dir, tmp_path / "x.gguf", "q4_k")


def test_exported_tokenizer_encodes_like_the_original(tmp_path, tiny_llama_dir, tiny_tokenizer):
    path = export_gguf(tiny_llama_dir, tmp_path / "tiny.gguf", "f16")
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "¿Cuánto es 45 - 27?"}], tokenize=False)
    assert loaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
