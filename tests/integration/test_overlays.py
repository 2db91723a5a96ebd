"""The multi-GPU overlays (FSDP, DeepSpeed) combine with every config into a valid configuration,
name real Lightning strategies and settings, and (with CUDA) train and save a loadable adapter."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import arithmetic_rows, write_jsonl
from src.training.lightning_cli import cli_main

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["fsdp.yaml", "deepspeed.yaml"]
CONFIGS = ["smollm2.yaml", "phi2.yaml", "gpt2-xl.yaml", "llama32.yaml"]


def resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_names_a_lightning_strategy_and_only_its_real_settings(overlay: str) -> None:
    strategy = yaml.safe_load((ROOT / "configs" / "overlays" / overlay).read_text())["trainer"]["strategy"]
    cls = resolve(strategy["class_path"])
    assert cls.__module__.startswith("lightning.pytorch.strategies")
    inspect.signature(cls).bind_partial(**strategy["init_args"])  # raises on a misspelt setting
    policy = strategy["init_args"].get("auto_wrap_policy")
    assert policy is None or callable(resolve(policy))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_combines_with_every_config(config: str, overlay: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit:
        cli_main(["fit", "--config", str(ROOT / "configs" / config),
                  "--config", str(ROOT / "configs" / "overlays" / overlay), "--print_config"])
    assert exit.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"]["class_path"].endswith(("FSDPStrategy", "DeepSpeedStrategy"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_trains_and_rank_zero_saves_a_loadable_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(32))
    write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(8, start=60))
    command = [
        sys.executable, "-m", "src.cli", "fit", "--config", str(ROOT / "configs" / "smollm2.yaml"),
        "--config", str(ROOT / "configs" / "overlays" / "fsdp.yaml"),
        "--model.model_name", str(tiny_model_dir), "--model.generation.max_new_tokens", "4",
        "--data.train_file", str(tmp_path / "train.jsonl"), "--data.val_file", str(tmp_path / "val.jsonl"),
        "--trainer.devices", "1", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    best = next((tmp_path / "tb_logs").rglob("adapters/best"))
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), best)
