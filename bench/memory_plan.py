"""The memory plan of each GPU config at full size against a GPU budget, with no download and no GPU.

    python -m bench.memory_plan --budget_gib 4

Each config (phi2, llama32, gpt2-xl by default) is read as the CLI reads it, with the random_init overlay,
so the architecture comes from configs/architectures/*.json and is built on the meta device. `precision:
auto` is planned as a GPU without bf16 (16-mixed; bf16 takes the same bytes). For each config: the plan's
table, and when it does not fit the budget, the ranked changes the MemoryPlan callback would print. Then,
per architecture, the non-quantised parameters (embedding, head, norms, biases) as loaded in fp16, after
PEFT's `prepare_model_for_kbit_training` (which makes them fp32) and after this project's preparation
(embedding and head cast back), measured by running both functions on the meta-device model.
"""

from __future__ import annotations

import argparse

import torch

from src.callbacks.memory_plan import MemoryPlan, model_config, run_shape
from src.training.lightning_cli import TutorCLI
from src.training.trainer import TutorTrainer
from src.data.datamodule import TutorDataModule
from src.models.memory_plan import GIB, meta_model, quantizable_linears
from src.models.quantization import prepare_for_kbit_training
from src.training.tutor_module import TutorModule

CONFIGS = ["configs/phi2.yaml", "configs/llama32.yaml", "configs/gpt2-xl.yaml"]
RANDOM_INIT = "configs/overlays/random_init.yaml"


def planned_precision(configured: str | int | None) -> str:
    return "16-mixed" if configured in (None, "auto") else str(configured)


def plan_config(path: str, budget_gib: float, margin: float) -> tuple[str, MemoryPlan]:
    cli = TutorCLI(TutorModule, TutorDataModule, trainer_class=TutorTrainer, run=False,
                   args=["--config", path, "--config", RANDOM_INIT, "--trainer.logger", "false"])
    configured = cli.config.get("trainer", {}).get("precision")
    shape = run_shape(cli.model.hparams, cli.datamodule.hparams, planned_precision(configured), "cuda")
    plan = MemoryPlan(budget_gib=budget_gib, margin=margin, check=False)
    config = model_config(cli.model.hparams)
    text = f"{path} (precision {planned_precision(configured)})\n{plan.plan(config, shape)}"
    if plan.estimate.peak > plan.usable:
        text += "\n" + plan.advice(config, shape, f"budget of {budget_gib:g} GiB")
    return text, plan


def kbit_preparation_bytes(path: str) -> tuple[str, int, int, int]:
    """(model type, fp16 bytes, after PEFT's preparation, after the project's) of the non-quantised parameters."""
    cli = TutorCLI(TutorModule, TutorDataModule, trainer_class=TutorTrainer, run=False,
                   args=["--config", path, "--config", RANDOM_INIT, "--trainer.logger", "false"])
    config = model_config(cli.model.hparams)

    def kept_bytes(model: torch.nn.Module) -> int:
        quantized = {id(m.weight) for m in quantizable_linears(model)}
        return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in quantized)

    loaded = meta_model(config, torch.float16)
    before = kept_bytes(loaded)
    from peft import prepare_model_for_kbit_training

    peft_prepared = prepare_model_for_kbit_training(meta_model(config, torch.float16), use_gradient_checkpointing=False)
    project = meta_model(config, torch.float16)
    prepare_for_kbit_training(project, gradient_checkpointing=False)
    return config.model_type, before, kept_bytes(peft_prepared), kept_bytes(project)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Print the plans and the k-bit preparation table; returns {config: figures} for tests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--budget_gib", type=float, default=4.0)
    parser.add_argument("--margin", type=float, default=0.1)
    options = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for path in options.configs:
        text, plan = plan_config(path, options.budget_gib, options.margin)
        fits = plan.estimate.peak <= plan.usable
        results[path] = {"fits": fits, "training": plan.estimate.training, "generation": plan.estimate.generation}
        print(text)
        print(f"=> {'fits' if fits else 'does not fit'} a {options.budget_gib:g} GiB budget\n")
    print("Non-quantised parameters (embedding, head, norms, biases) of an nf4 model, GiB:")
    print(f"  {'model':<8}{'as loaded (fp16)':>18}{'PEFT preparation':>18}{'this project':>14}")
    for path in options.configs:
        name, before, peft, project = kbit_preparation_bytes(path)
        results[path] |= {"kept_fp16": before, "kept_after_peft": peft, "kept_after_project": project}
        print(f"  {name:<8}{before / GIB:>18.3f}{peft / GIB:>18.3f}{project / GIB:>14.3f}")
    return results


if __name__ == "__main__":
    main()
