"""`merge` folds the adapter in: plain transformers loads a folder that computes base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.data.chat_format import ChatFormatter
from src.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "smollm2.yaml")
CONVERSATION = [{"role": "user", "content": "¿Cuánto es 45 - 18?"}, {"role": "assistant", "content": "Respuesta: 27"}]


def merge(model_dir: Path, adapter_dir: Path, output: Path, *extra: str) -> int:
    args = ["--config", CONFIG, "--model.model_name", str(model_dir), "--model.adapter_path", str(adapter_dir)]
    return run_tool("merge", [*args, "--output", str(output), *extra])


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("merged")
    assert merge(tiny_model_dir, tiny_adapter_dir, output) == 0
    return output


def test_merged_logits_equal_base_plus_adapter(merged_dir, tiny_model_dir, tiny_adapter_dir, tiny_tokenizer) -> None:
    ids = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        plain = base(ids).logits
        expected = PeftModel.from_pretrained(base, tiny_adapter_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(ids).logits
    assert (expected - plain).abs().max() > 1e-2, "the adapter changes the outputs (else the test proves nothing)"
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_the_folder_is_plain_safetensors_with_the_training_chat_template(merged_dir) -> None:
    names = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    assert not any(name.endswith(".bin") for name in names)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    trained = ChatFormatter(tokenizer, None, _config_template())
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == trained.render(CONVERSATION)
    eos = json.loads((merged_dir / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos]), "generation stops"


def test_a_training_system_prompt_becomes_the_templates_default(tiny_model_dir, tiny_adapter_dir, tmp_path) -> None:
    output = tmp_path / "merged"
    assert merge(tiny_model_dir, tiny_adapter_dir, output, "--data.system_prompt", 'Eres un tutor "paciente".') == 0
    tokenizer = AutoTokenizer.from_pretrained(output)
    trained = ChatFormatter(tokenizer, 'Eres un tutor "paciente".', _config_template())
    assert tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True) == trained.prompt_text(
        CONVERSATION[:1]
    )
    own_system = [{"role": "system", "content": "Otro."}, *CONVERSATION]
    assert tokenizer.apply_chat_template(own_system, tokenize=False) == trained.render(own_system)


def test_merge_without_an_adapter_is_refused_with_the_flag_to_set(tiny_model_dir, tmp_path, capsys) -> None:
    code = run_tool("merge", ["--model.model_name", str(tiny_model_dir), "--output", str(tmp_path / "m")])
    assert code == 2
    assert "--model.adapter_path" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def _config_template() -> str:
    import yaml

    return yaml.safe_load(Path(CONFIG).read_text(encoding="utf-8"))["data"]["chat_template"]
