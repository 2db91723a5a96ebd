"""Every config parses, links model and data, and trains a few steps on a scaled-down random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from src.callbacks.memory_plan import MemoryPlan
from src.training.lightning_cli import cli_main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY_TOKENIZER = ROOT / "tests" / "assets" / "tiny-chatml-tokenizer"
# Each architecture shrunk to a few thousand parameters; the vocabulary stays the real one. Widths are multiples
# of 64 (whole nf4 blocks, 32-row outputs) so the 4-bit configs run the real kernels of every CPU kind.
SCALED_DOWN = {
    # head_dim 16 keeps phi's partial rotary dimension (int(0.4 x head_dim) = 6) even
    "phi": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4},
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16},
}


def test_there_is_a_config_per_seed_project() -> None:
    assert {c.stem for c in CONFIGS} >= {"smollm2", "phi2", "gpt2-xl", "llama32"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_print_config_links_the_model_name_into_the_data(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert printed["model"]["model_name"] == written["model"].get("model_name", "offline:SmolLM2-135M-Instruct")
    assert "model_name" not in written.get("data", {}), "the model name is written once, under model"
    assert (ROOT / printed["data"]["train_file"]).is_file()


def test_the_large_data_overlay_changes_only_the_training_file_and_its_measured_replay(capsys: pytest.CaptureFixture) -> None:
    printed = {}
    for extra in ([], ["--config", str(ROOT / "configs/overlays/large_data.yaml")]):
        with pytest.raises(SystemExit):
            cli_main(["fit", "--config", str(ROOT / "configs/smollm2.yaml"), *extra, "--print_config"])
        printed[bool(extra)] = yaml.safe_load(capsys.readouterr().out)
    default, large = printed[False], printed[True]
    assert large["data"].pop("train_file") == "data/arithmetic/large/train.jsonl"
    assert default["data"].pop("train_file") == "data/arithmetic/train.jsonl"
    # The large job keeps the replay share its three seeds were measured with; the default's is half of it.
    assert (large["data"].pop("replay_ratio"), default["data"].pop("replay_ratio")) == (0.2, 0.1)
    assert large == default
    assert (ROOT / "data/arithmetic/large/train.jsonl").is_file()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_a_few_steps_of_each_config_on_a_scaled_down_random_model(config: Path, tmp_path: Path) -> None:
    model = yaml.safe_load(config.read_text(encoding="utf-8"))["model"]
    architecture = model.get("architecture", "configs/architectures/smollm2-135m.json")
    model_type = json.loads((ROOT / architecture).read_text(encoding="utf-8"))["model_type"]
    cli = cli_main(
        [
            "fit",
            "--config", str(config),
            "--config", str(ROOT / "configs/overlays/random_init.yaml"),
            "--config", str(ROOT / "configs/overlays/debug.yaml"),
            "--model.architecture", str(ROOT / architecture),
            "--model.tokenizer_name", str(TINY_TOKENIZER),
            "--model.architecture_overrides", json.dumps(SCALED_DOWN[model_type]),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "tb_logs"),
            "--trainer.enable_progress_bar", "false",
        ]
    )
    assert cli.trainer.global_step == 3
    assert type(cli.model.model.get_base_model()).__name__.lower().startswith(model_type)
    assert cli.model.model.get_base_model().config.num_hidden_layers == 2
    assert "train/loss" in cli.trainer.callback_metrics
    assert "val/loss" in cli.trainer.callback_metrics
    # Every config plans its memory before loading; the scaled-down run fits whatever the budget.
    (plan,) = [c for c in cli.trainer.callbacks if isinstance(c, MemoryPlan)]
    assert plan.estimate is not None and plan.estimate.peak <= plan.usable


def test_data_packing_is_linked_into_the_model() -> None:
    # The data module packs the batches; the model must know, to check its attention keeps examples apart.
    for value in ("true", "false"):
        args = ["--config", str(ROOT / "configs/smollm2.yaml"), "--data.packing", value, "--model.replay_kl", "0"]
        cli = cli_main(args, run=False)
        assert cli.datamodule.hparams.packing is cli.model.hparams.packing is (value == "true")
