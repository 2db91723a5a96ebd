"""GGUF export of the real SmolLM2-135M-Instruct, judged against the GGUF llama.cpp wrote for it.

The merged model here is the offline default itself (a merge with no adapter): what matters is that
its exported file has llama.cpp's layout and answers like the folder it came from.
"""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

from src.export import export_gguf
from src.data.questions import load_questions
from src.export.answer_agreement import compare, llamacpp_replies, transformers_replies
from src.sources.offline_default import ensure_offline_default, locate_gguf

pytestmark = pytest.mark.slow
# Keys the reference took from the hub model card, and the two that differ by design.
MODEL_CARD_KEYS = {"general.basename", "general.finetune", "general.languages", "general.license", "general.organization"}
DIFFERENT_BY_DESIGN = {"general.file_type", "general.name"}
VAL = "data/arithmetic/val.jsonl"


@pytest.fixture(scope="module")
def merged_dir():
    try:
        locate_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return ensure_offline_default()


@pytest.fixture(scope="module")
def exports(merged_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-gguf")
    return {outtype: export_gguf(merged_dir, folder / f"smollm2.{outtype}.gguf", outtype) for outtype in ("f16", "q8_0")}


def field_value(field):
    return field.contents()


def test_metadata_and_tensors_match_the_reference_written_by_llama_cpp(exports):
    folder, name = locate_gguf()
    reference, ours = gguf.GGUFReader(folder / name), gguf.GGUFReader(exports["f16"])
    ref_keys = {key for key in reference.fields if not key.startswith("GGUF.")} - MODEL_CARD_KEYS
    our_keys = {key for key in ours.fields if not key.startswith("GGUF.")}
    assert our_keys == ref_keys
    for key in sorted(our_keys - DIFFERENT_BY_DESIGN):
        assert ours.fields[key].types == reference.fields[key].types, key
        assert field_value(ours.fields[key]) == field_value(reference.fields[key]), key  # tokens, merges, template...
    assert field_value(ours.fields["general.file_type"]) == gguf.LlamaFileType.MOSTLY_F16

    ref_tensors = {t.name: t for t in reference.tensors}
    our_tensors = {t.name: t for t in ours.tensors}
    assert set(our_tensors) == set(ref_tensors) and len(our_tensors) == 272  # no output.weight: tied embeddings
    for tensor_name, tensor in our_tensors.items():
        assert tensor.shape.tolist() == ref_tensors[tensor_name].shape.tolist(), tensor_name
        if ref_tensors[tensor_name].tensor_type == gguf.GGMLQuantizationType.F32:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor_name  # norms
        else:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F16, tensor_name
    q8 = {t.name: t.tensor_type for t in gguf.GGUFReader(exports["q8_0"]).tensors}
    assert q8["token_embd.weight"] == q8["blk.0.attn_k.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_f16_export_loaded_by_transformers_is_the_merged_model_in_f16_and_answers_like_it(merged_dir, exports, tmp_path):
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    # transformers dequantises the file into a plain model (undoing the rotary layout of Q and K).
    model = AutoModelForCausalLM.from_pretrained(exports["f16"].parent, gguf_file=exports["f16"].name, dtype=torch.float32)
    expected_weights, loaded_weights = merged.state_dict(), model.state_dict()
    assert set(loaded_weights) == set(expected_weights)
    for key, weight in expected_weights.items():
        rounded = weight.half().float() if weight.dim() > 1 else weight  # matrices f16, norms F32
        assert torch.equal(loaded_weights[key], rounded), key

    questions = load_questions(VAL)[:64]
    expected = transformers_replies(merged_dir, questions, max_new_tokens=32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp_path)  # a folder, to answer through the same generation path
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / file).write_bytes((merged_dir / file).read_bytes())
    result = compare(expected, transformers_replies(tmp_path, questions, max_new_tokens=32), questions)
    print(f"transformers round trip (f16): same answer {result.same_answer}/{result.questions}, "
          f"same reply {result.same_reply}/{result.questions}")
    # The un-tuned model rambles for all 32 tokens; f16 rounding alone (the weights are exact above) sends a
    # few long replies down another path: measured 61/64 and 64/64 same answers on two machines.
    assert result.answer_rate >= 0.9


@pytest.mark.llamacpp
def test_llama_cpp_answers_the_held_out_questions_like_the_merged_model(merged_dir, exports):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    questions = load_questions(VAL)  # all 400
    expected = transformers_replies(merged_dir, questions, max_new_tokens=48)
    results = {}
    for outtype, path in exports.items():
        results[outtype] = compare(expected, llamacpp_replies(path, questions, max_new_tokens=48), questions)
        r = results[outtype]
        print(f"llama.cpp {outtype}: same answer {r.same_answer}/{r.questions} ({r.answer_rate:.1%}), "
              f"same reply {r.same_reply}/{r.questions} ({r.reply_rate:.1%}), accuracy {r.accuracy:.1%}")
    # The un-tuned model rambles for all 48 tokens, so f16 rounding alone sends a few long replies elsewhere:
    # measured 391/400 same answers (97.8%; q8_0 210/400). A tuned tutor's short replies agree on 400/400
    # (docs/results/2026-11-29-gguf-agreement.md), which is where the 99% bar applies.
    assert results["f16"].answer_rate >= 0.97
