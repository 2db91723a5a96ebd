"""MemoryPlan: the plan is printed before the model is built, from the run's own settings; a run that will
not fit stops before anything loads, with the changes that would make it fit, lowest peak first."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoConfig

from src.callbacks import memory_plan
from src.callbacks.memory_plan import ROWS, MemoryPlan, available_bytes
from src.errors import ConfigurationError, MemoryPlanError
from src.models.memory_plan import GIB, RunShape, estimate_memory
from conftest import arithmetic_rows, write_jsonl
from src.data.datamodule import TutorDataModule
from src.training.tutor_module import TutorModule

BATCH_SIZE = 4


def make_module(model_dir: Path, **kwargs) -> TutorModule:
    args = dict(lora={"r": 4, "alpha": 8, "dropout": 0.0}, generation={"max_new_tokens": 4})
    return TutorModule(model_name=str(model_dir), **(args | kwargs))


def make_datamodule(model_dir: Path, folder: Path) -> TutorDataModule:
    train = write_jsonl(folder / "train.jsonl", arithmetic_rows(40))
    return TutorDataModule(model_name=str(model_dir), train_file=str(train), val_fraction=0.25, batch_size=BATCH_SIZE,
                           eval_batch_size=8, math_eval_size=2)


def make_trainer(folder: Path, max_steps: int, callbacks: list, **kwargs) -> L.Trainer:
    kwargs = dict(accelerator="cpu", limit_val_batches=1) | kwargs
    return L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(folder),
                     callbacks=callbacks, **kwargs)


def test_the_plan_is_printed_from_the_runs_settings_before_the_model_loads(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = MemoryPlan()
    module = make_module(tiny_model_dir, evaluate_base=False, gradient_checkpointing=True,
                         optimizer={"name": "adamw_8bit"})
    built_after_plan = []
    real_configure = module.configure_model
    module.configure_model = lambda: (built_after_plan.append(plan.estimate is not None), real_configure())
    with caplog.at_level(logging.INFO):
        make_trainer(tmp_path, 1, [plan]).fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert built_after_plan and all(built_after_plan)
    shape = RunShape(batch_size=BATCH_SIZE, max_length=256, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                     gradient_checkpointing=True, optimizer="adamw_8bit", eval_batch_size=8, max_new_tokens=4,
                     device_type="cpu")
    expected = estimate_memory(AutoConfig.from_pretrained(tiny_model_dir), shape)
    assert plan.estimate.components == expected.components
    printed = caplog.text
    assert "Memory plan: llama" in printed and "batch 4 x 256 tokens, gradient checkpointing, adamw_8bit" in printed
    for key, label in ROWS:
        assert re.search(rf"{re.escape(label)}\s+{expected.components[key] / GIB:.3f}", printed), label
    assert f"peak while training{'':13}{expected.training / GIB:>8.3f}" in printed
    assert "system RAM available" in printed


def test_a_run_that_will_not_fit_stops_before_loading_with_ranked_changes(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, evaluate_base=False)
    plan = MemoryPlan(budget_gib=0.0001, margin=0.0)
    with pytest.raises(MemoryPlanError) as error:
        make_trainer(tmp_path, 1, [plan]).fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert module.model is None  # nothing was loaded
    lines = str(error.value).splitlines()
    assert lines[0] == (
        f"MemoryPlan: the estimated peak of {plan.estimate.peak / GIB:.2f} GiB (during training) exceeds the 0.00 GiB "
        "usable (budget of 0.0001 GiB, less a 0% margin). Changes, lowest peak first:"
    )
    options = lines[1:-1]
    assert {re.match(r"  \d+\. (\S+):", line).group(1) for line in options} == {
        "model.quantization", "model.gradient_checkpointing", "data.batch_size", "data.max_length",
        "data.eval_batch_size", "model.optimizer.name",
    }
    peaks = [float(re.search(r": ([\d.]+) GiB \(still too much\)$", line).group(1)) for line in options]
    assert peaks == sorted(peaks)
    assert lines[-1] == "Or set the MemoryPlan callback's check: false to start anyway."


def test_check_false_only_prints(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = MemoryPlan(budget_gib=0.0001, check=False)
    make_trainer(tmp_path, 1, [plan]).fit(make_module(tiny_model_dir, evaluate_base=False),
                                          datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert plan.estimate.peak > plan.usable


def test_the_plan_counts_the_base_weights_in_the_dtype_they_will_be_loaded_in(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = {}
    for base_weights in ("compute", "float32"):
        (tmp_path / base_weights).mkdir()
        plan = MemoryPlan(check=False)
        module = make_module(tiny_model_dir, evaluate_base=False, base_weights=base_weights)
        make_trainer(tmp_path / base_weights, 1, [plan], precision="bf16-mixed").fit(
            module, datamodule=make_datamodule(tiny_model_dir, tmp_path / base_weights))
        frozen = [p for p in module.parameters() if not p.requires_grad]
        assert {p.dtype for p in frozen} == {torch.bfloat16 if base_weights == "compute" else torch.float32}
        weights[base_weights] = plan.estimate.components["weights"]
    assert weights["float32"] == 2 * weights["compute"]


def test_the_changes_a_plan_suggests_each_lower_the_peak() -> None:
    shape = RunShape(batch_size=4, max_length=256, eval_batch_size=8, lora_r=16)
    config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)
    base = estimate_memory(config, shape).peak
    for setting, changed in memory_plan.candidate_changes(shape):
        assert estimate_memory(config, changed).peak <= base, setting


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^MemoryPlan\(budget_gib=0\): expected a positive number of GiB"):
        MemoryPlan(budget_gib=0)
    with pytest.raises(ConfigurationError, match=r"^MemoryPlan\(margin=1\.5\): expected a share in \[0, 1\)"):
        MemoryPlan(margin=1.5)


def test_cpu_memory_is_the_systems_available_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(memory_plan, "MEMINFO", meminfo)
    assert available_bytes(torch.device("cpu")) == (8000000 * 1024, "system RAM available")
    monkeypatch.setattr(memory_plan, "MEMINFO", tmp_path / "absent")
    with pytest.raises(MemoryPlanError, match="set its budget_gib"):
        available_bytes(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_plan_is_within_15_percent_of_the_allocators_peak(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = MemoryPlan()
    torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(tmp_path, 3, [plan], accelerator="gpu", devices=1, limit_val_batches=0)
    trainer.fit(make_module(tiny_model_dir, evaluate_base=False), datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert "free on" in repr(available_bytes(torch.device("cuda", 0)))
    assert abs(plan.estimate.training / torch.cuda.max_memory_allocated() - 1) <= 0.15


def test_the_plan_counts_the_attention_kernel_training_steps_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    activations = {}
    for kernel in (None, "eager"):
        folder = tmp_path / str(kernel)
        folder.mkdir()
        plan = MemoryPlan(check=False)
        module = make_module(tiny_model_dir, evaluate_base=False, attn_implementation="sdpa",
                             train_attn_implementation=kernel)
        make_trainer(folder, 1, [plan]).fit(module, datamodule=make_datamodule(tiny_model_dir, folder))
        activations[kernel] = plan.estimate.components["activations"]
    assert activations["eager"] > activations[None]  # eager keeps its (B, heads, T, T) probabilities for backward
