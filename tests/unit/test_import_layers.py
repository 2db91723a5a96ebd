"""The packages of `src/` import one way only, as docs/architecture.md draws them.

A package may import its own layer and the layers below it, never one above: the data side never
reaches into models, models never into training, and nothing below the entry points imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS: dict[str, int] = {
    # 0: shared vocabulary: errors, warnings filters, metrics over strings and tensors
    "errors": 0, "library_noise": 0, "metrics": 0,
    # 1: where model and tokenizer files come from (both data and models use it)
    "sources": 1,
    # 2: data formats, tokenisation, the LightningDataModule
    "data": 2,
    # 3: loading, LoRA, quantisation, generation: the model assembled by `models.builder`
    "models": 3,
    # 4: answering and grading held-out questions, retention, KL, reply cache
    "evaluation": 4,
    # 5: the LightningModule, Trainer, CLI and the callbacks/plugins they run with
    "training": 5, "callbacks": 5, "plugins": 5, "config_errors": 5, "config_ranges": 5,
    # 6: entry points
    "cli": 6, "tools": 6, "export": 6,
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level `src` package) for every import of project code in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "src":
                tops = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
                found += [(node.lineno, top) for top in tops]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("src.")]
    return found


def package_of(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").parts[0]


SOURCES = sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")


def test_every_package_has_a_layer() -> None:
    assert {package_of(p) for p in SOURCES} <= set(LAYERS), "add the new package to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers_only(path: Path) -> None:
    mine = LAYERS[package_of(path)]
    wrong = [
        f"{path.relative_to(SRC.parent)}:{line} imports src.{top}"
        + ("" if top == "<relative>" else f" (layer {LAYERS.get(top, '?')}, above {package_of(path)}'s {mine})")
        for line, top in imported_packages(path)
        if top == "<relative>" or LAYERS.get(top, 99) > mine
    ]
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from src.data.x import y\n\ndef f():\n    from src.tools import TOOLS\n    import src.models.lora\n")
    assert imported_packages(sample) == [(1, "data"), (4, "tools"), (5, "models")]
