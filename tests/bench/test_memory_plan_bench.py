"""bench/memory_plan.py on the phi-2 config at full size (meta device, no download): it fits a 4 GiB card
with a training peak of at most 2.5 GiB, and PEFT's fp32 embedding and head would double what stays fp16."""

from __future__ import annotations

from bench.memory_plan import main
from src.models.memory_plan import GIB


def test_phi2_config_fits_a_4_gib_card(capsys) -> None:
    result = main(["--configs", "configs/phi2.yaml", "--budget_gib", "4"])["configs/phi2.yaml"]
    assert result["fits"]
    assert result["training"] <= 2.5 * GIB
    assert result["generation"] <= 3.6 * GIB
    # Embedding and separate head: ~0.49 GiB in fp16, twice that after PEFT's preparation, back after ours.
    assert 0.48 * GIB < result["kept_fp16"] < 0.50 * GIB
    assert result["kept_after_peft"] > 1.99 * result["kept_fp16"]
    assert result["kept_after_project"] < 1.01 * result["kept_fp16"]
    out = capsys.readouterr().out
    assert "=> fits a 4 GiB budget" in out and "peak while training" in out
