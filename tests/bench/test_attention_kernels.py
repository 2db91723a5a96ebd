"""bench/attention_kernels.py in CI size: every kernel is timed in both precisions at every length, each is as
close to the float64 pass as its precision allows, and a tiny model's training step is timed under each."""

from __future__ import annotations

import json
from pathlib import Path

from bench.attention_kernels import KERNELS, PRECISIONS, main

ARCHITECTURE = Path(__file__).parents[2] / "configs" / "architectures" / "smollm2-135m.json"


def test_every_kernel_is_timed_and_checked_against_float64(tiny_model_dir: Path, tmp_path: Path) -> None:
    figures = tmp_path / "kernels.json"
    result = main(["--architecture", str(ARCHITECTURE), "--lengths", "8,16", "--batch", "2", "--repeats", "1",
                   "--step_model", str(tiny_model_dir), "--step_length", "12", "--json", str(figures)])
    rows = result["rows"]
    assert {(r["tokens"], r["precision"], r["kernel"]) for r in rows} == {
        (n, p, k) for n in (8, 16) for p in PRECISIONS for k in KERNELS
    }
    assert all(r["ms"] > 0 for r in rows)
    # float32 kernels agree with float64 to rounding; bf16 ones only to bf16's 8 bits, yet not to nothing.
    assert all(r["max_error"] < 1e-4 for r in rows if r["precision"] == "fp32")
    assert all(1e-4 < r["max_error"] < 0.1 for r in rows if r["precision"] == "bf16")
    assert json.loads(figures.read_text())["rows"] == rows
    steps = {row["kernel"]: row for row in result["steps"]}
    assert set(steps) == set(KERNELS) and steps["sdpa"]["vs_sdpa"] == 1.0
    assert all(row["ms"] > 0 for row in steps.values())
    # The same step under every kernel: the same loss to bf16's rounding.
    assert all(abs(row["loss"] - steps["sdpa"]["loss"]) < 0.05 * steps["sdpa"]["loss"] for row in steps.values())
