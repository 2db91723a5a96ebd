"""`merge`: fold the LoRA adapter into the base weights and save a plain transformers folder.

    python -m src.cli merge --config configs/smollm2.yaml --model.adapter_path ADAPTER --output merged/

The folder holds float32 safetensors, the tokenizer and the training chat template (with the
training system prompt folded in), and a generation config that stops at the end-of-turn token,
so `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` and anything built on
them (or `--model.model_name merged/` here) talk to the tutor as training shaped it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel

from src.data.chat_format import ChatFormatter
from src.errors import ConfigurationError
from src.training.tutor_module import TutorModule
from src.tools.config import build_tutor, parse, tutor_parser

MERGE_INFO = "tutor_tune_merge.json"


def template_with_system_prompt(formatter: ChatFormatter) -> str:
    """The training chat template; a configured system prompt becomes its default system turn."""
    if formatter.system_prompt is None:
        return formatter.chat_template
    system = json.dumps(formatter.system_prompt, ensure_ascii=False)  # a valid Jinja string literal
    default = (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {system}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return default + formatter.chat_template


def merged_model(module: TutorModule) -> PreTrainedModel:
    """base + (alpha / r) B A in every adapted layer, in float32, without the PEFT wrapper."""
    model = module.model.float()
    return model.merge_and_unload(progressbar=False, safe_merge=True)


def save_merged(module: TutorModule, output: Path) -> Path:
    merged = merged_model(module)
    if getattr(merged.config, "quantization_config", None) is not None:
        # A GGUF-loaded base is already dequantised; the marker would stop saving (see offline_default).
        del merged.config.quantization_config
    merged.hf_quantizer = None
    end_of_turn = sorted(module.formatter.end_of_turn_ids)
    merged.generation_config.eos_token_id = end_of_turn if len(end_of_turn) > 1 else end_of_turn[0]
    merged.generation_config.pad_token_id = module.tokenizer.pad_token_id
    merged.save_pretrained(output, safe_serialization=True)
    tokenizer = module.tokenizer
    tokenizer.chat_template = template_with_system_prompt(module.formatter)
    tokenizer.save_pretrained(output)
    hp = module.hparams
    info = {"base": hp.model_name, "gguf_file": hp.gguf_file, "adapter": hp.adapter_path, "dtype": "float32"}
    (output / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output


def main(argv: Sequence[str]) -> int:
    parser = tutor_parser("Merge the LoRA adapter into the base model and save a transformers folder.", "merge")
    parser.add_argument("--output", type=str, required=True, help="folder to write (created; existing files replaced)")
    cfg = parse(parser, argv)
    if cfg.model.adapter_path is None:
        raise ConfigurationError("merge needs the adapter to fold in: set --model.adapter_path path/to/adapter")
    if cfg.model.random_init:
        raise ConfigurationError("merge of a random_init base would save weights nobody trained: drop model.random_init")
    module = build_tutor(parser, cfg)
    output = save_merged(module, Path(cfg.output))
    size = sum(f.stat().st_size for f in output.glob("*.safetensors")) / 2**20
    print(f"Merged {cfg.model.adapter_path} into {cfg.model.model_name}: {output} ({size:.0f} MiB of float32 safetensors)")
    return 0
