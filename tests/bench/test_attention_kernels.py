"""bench/attention_kernels.py in CI size: every kernel is timed in both precisions at every length, and each
is as close to the float64 pass as its precision allows."""

from __future__ import annotations

import json
from pathlib import Path

from bench.attention_kernels import KERNELS, PRECISIONS, main

ARCHITECTURE = Path(__file__).parents[2] / "configs" / "architectures" / "smollm2-135m.json"


def test_every_kernel_is_timed_and_checked_against_float64(tmp_path: Path) -> None:
    figures = tmp_path / "kernels.json"
    result = main(["--architecture", str(ARCHITECTURE), "--lengths", "8,16", "--batch", "2", "--repeats", "1",
                   "--json", str(figures)])
    rows = result["rows"]
    assert {(r["tokens"], r["precision"], r["kernel"]) for r in rows} == {
        (n, p, k) for n in (8, 16) for p in PRECISIONS for k in KERNELS
    }
    assert all(r["ms"] > 0 for r in rows)
    # float32 kernels agree with float64 to rounding; bf16 ones only to bf16's 8 bits, yet not to nothing.
    assert all(r["max_error"] < 1e-4 for r in rows if r["precision"] == "fp32")
    assert all(1e-4 < r["max_error"] < 0.1 for r in rows if r["precision"] == "bf16")
    assert json.loads(figures.read_text())["rows"] == rows
