"""Every numeric and choice setting of the model, the data and the project's callbacks has an accepted range;
values outside it are refused together, each named with its key, value and range."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from jsonargparse import Namespace

from src.config_ranges import CALLBACK_RANGES, DATA_RANGES, MODEL_RANGES, check_ranges, range_problems
from src.data.datamodule import TutorDataModule
from src.errors import ConfigurationError
from src.training.tutor_module import TutorModule

# Settings that are paths, names, free text, flags or mappings: no range to check.
MODEL_FREE = {"model_name", "gguf_file", "tokenizer_name", "random_init", "architecture", "architecture_overrides",
              "adapter_path", "lora.target_modules", "lora.use_rslora", "lora.use_dora", "retention.dir", "retention.extra_dirs",
              "gradient_checkpointing", "compile", "evaluate_base", "system_prompt", "chat_template", "packing"}
DATA_FREE = {"train_file", "val_file", "replay_file", "system_prompt", "task_system_prompt", "chat_template", "packing",
             "extra_math_files", "grade_from_answers", "cache_dir", "model_name", "gguf_file", "tokenizer_name"}

# key: (accepted values, refused values)
MODEL_CASES = {
    "lora.r": ([1, 64], [0, -4, 2.5, True]),
    "lora.alpha": ([0.5, 32], [0, -1, float("nan")]),
    "lora.dropout": ([0.0, 0.5], [1.0, -0.1]),
    "lora.layers": ([None, [0, 3]], [[-1], [1, 1], [0.5]]),
    "lora.init": ([True, "gaussian", "pissa", "pissa_niter_4"], [False, "olora", "pissa_niter_x"]),
    "attn_implementation": ([None, "sdpa", "eager"], ["flash", ""]),
    "train_attn_implementation": ([None, "sdpa_math", "eager"], ["auto", ""]),
    "quantization": ([None, "nf4", "int8"], ["fp4"]),
    "optimizer.name": (["adamw", "paged_adamw_8bit"], ["sgd"]),
    "optimizer.learning_rate": ([1e-3], [0, -1e-3, float("inf")]),
    "optimizer.loraplus_lr_ratio": ([None, 16.0], [0, -2.0, float("nan")]),
    "optimizer.weight_decay": ([0.0, 0.1], [-0.01]),
    "optimizer.warmup_ratio": ([0.0, 0.1], [1.0, -0.5]),
    "optimizer.lr_scheduler": (["cosine", "linear", "constant"], ["cosine_annealing", "reduce_lr_on_plateau"]),
    "generation.max_new_tokens": ([1, 64], [0, -1]),
    "generation.wrong_answers_logged": ([0, 5], [-1]),
    "retention.eval_size": ([None, 1, 64], [0, -1]),
    "retention.base_size": ([None, 8], [0]),
    "seed": ([0, 2**32 - 1], [-1, 2**32]),
    "replay_kl": ([0.0, 0.5, 4], [-0.1]),
    "target_masked_kl": ([0.0, 0.5, 4], [-0.1]),
    "base_weights": (["compute", "float32"], ["bf16", "fp32"]),
}
DATA_CASES = {
    "format": (["auto", "chat"], ["jsonl"]),
    "val_fraction": ([0.0, 0.1], [1.0, 1.5, -0.1]),
    "split_seed": ([42], [-3]),
    "max_length": ([2, 256], [1, 0]),
    "batch_size": ([1, 8], [0, -2]),
    "eval_batch_size": ([1], [0]),
    "order": (["shuffle"], ["random"]),
    "math_eval_size": ([None, 0, 400], [-1]),
    "loss_eval_size": ([None, 1], [0]),
    "replay_ratio": ([0.0, 0.1, 10], [-0.1, 11]),
    "replay_self_prompts": ([0, 256], [-1]),
    "num_workers": ([0, 2], [-1]),
}
CALLBACK_CASES = {
    ("src.callbacks.adapter_checkpoint.AdapterCheckpoint", "mode"): (["max", "min"], ["maximum"]),
    ("src.callbacks.adapter_checkpoint.AdapterCheckpoint", "retention_floor"): ([None, 0.0, 0.9, 1.0], [1.5, -0.1]),
    ("src.callbacks.divergence_rollback.DivergenceRollback", "lr_factor"): ([0.1], [0, 1, 2]),
    ("src.callbacks.divergence_rollback.DivergenceRollback", "max_rollbacks"): ([0, 3], [-1]),
    ("src.callbacks.divergence_rollback.DivergenceRollback", "snapshot_every_n_steps"): ([1], [0]),
    ("src.callbacks.memory_monitor.MemoryMonitor", "log_every_n_steps"): ([None, 10], [0]),
    ("src.callbacks.memory_plan.MemoryPlan", "budget_gib"): ([None, 3.3], [0, -1]),
    ("src.callbacks.memory_plan.MemoryPlan", "margin"): ([0.0, 0.1], [1.0, -0.1]),
    ("src.callbacks.plain_progress.PlainProgress", "every_n_steps"): ([1, 50], [0]),
    ("src.callbacks.plain_progress.PlainProgress", "every_n_seconds"): ([None, 30.0], [0, -5]),
}


def settings(cls: type) -> set[str]:
    """Each argument of `cls`, and each field of a grouped argument as `group.field`."""
    names = set()
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if dataclasses.is_dataclass(parameter.default):
            names |= {f"{name}.{field.name}" for field in dataclasses.fields(parameter.default)}
        elif name != "self":
            names.add(name)
    return names


def test_every_numeric_and_choice_setting_of_model_and_data_has_a_range() -> None:
    assert settings(TutorModule) - MODEL_FREE == set(MODEL_RANGES) == set(MODEL_CASES)
    assert settings(TutorDataModule) - DATA_FREE == set(DATA_RANGES) == set(DATA_CASES)


def test_every_project_callback_setting_with_a_range_has_cases() -> None:
    assert {(path, name) for path, rules in CALLBACK_RANGES.items() for name in rules} == set(CALLBACK_CASES)


def config(section: str, key: str, value) -> Namespace:
    """`{section: {key: value}}`, a dotted `key` (`lora.r`) as a group inside the section."""
    group, _, name = key.rpartition(".")
    values = Namespace(**{group: Namespace(**{name: value})}) if group else Namespace(**{key: value})
    return Namespace(**{section: values})


@pytest.mark.parametrize(("section", "key", "accepted", "refused"),
                         [("model", k, *v) for k, v in MODEL_CASES.items()] + [("data", k, *v) for k, v in DATA_CASES.items()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_setting_accepts_its_range_and_names_key_value_and_range_outside(section, key, accepted, refused) -> None:
    for value in accepted:
        assert range_problems(config(section, key, value)) == [], value
    for value in refused:
        (problem,) = range_problems(config(section, key, value))
        assert problem.startswith(f"{section}.{key}: {value!r}; expected ")
        assert (MODEL_RANGES if section == "model" else DATA_RANGES)[key].described in problem


@pytest.mark.parametrize(("target", "accepted", "refused"), [(k, *v) for k, v in CALLBACK_CASES.items()],
                         ids=lambda v: v[1] if isinstance(v, tuple) else "")
def test_each_callback_setting_is_checked_where_the_callback_is_listed(target, accepted, refused) -> None:
    class_path, name = target
    def with_callback(value) -> Namespace:
        other = Namespace(class_path="lightning.pytorch.callbacks.EarlyStopping", init_args=Namespace(patience=-1))
        ours = Namespace(class_path=class_path, init_args=Namespace(**{name: value}))
        return Namespace(trainer=Namespace(callbacks=[other, ours]))
    for value in accepted:
        assert range_problems(with_callback(value)) == []
    for value in refused:
        (problem,) = range_problems(with_callback(value))
        assert problem.startswith(f"trainer.callbacks[1] ({class_path.rsplit('.', 1)[-1]}).init_args.{name}: {value!r}")


def test_all_problems_are_reported_together_in_one_error() -> None:
    bad = Namespace(model=Namespace(lora=Namespace(r=-4), optimizer=Namespace(learning_rate=0.0)),
                    data=Namespace(batch_size=0))
    with pytest.raises(ConfigurationError) as error:
        check_ranges(bad)
    message = str(error.value)
    assert message.splitlines() == [
        "3 settings are out of range (set them in the config or with --<key> <value>):",
        "  model.lora.r: -4; expected an integer >= 1",
        "  model.optimizer.learning_rate: 0.0; expected a finite number > 0",
        "  data.batch_size: 0; expected an integer >= 1",
    ]


def test_the_shipped_defaults_are_in_range() -> None:
    defaults = {section: Namespace(**{n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                                       if n != "self"})
                for section, cls in (("model", TutorModule), ("data", TutorDataModule))}
    check_ranges(Namespace(**defaults))
