"""The retention set: general prompts that measure what fine-tuning costs the base model.

Three files, written by this module from the tables in `retention_facts` and `retention_prompts`
(no external data), so anyone can rebuild them byte for byte:

- `checkable.jsonl`: short questions with short accepted answers (capitals, units, everyday science,
  words and translations, simple instructions), each row `{id, lang, kind, template, prompt, answers,
  rejects}`; `rejects` are answers that contradict the right one (another country's capital) and make a
  reply wrong even when it also names an accepted answer;
- `open.jsonl`: explain / describe / list prompts, `{id, lang, kind, template, prompt}`;
- `replay_prompts.jsonl`: prompts for replay training, in the same shape, from other templates and
  subjects than both evaluation files.

    python -m src.data.retention --out data/retention

`independent/` holds a second set in the same two evaluation formats, written by hand and not by these
tables (other questions, other phrasings, other kinds: animals, people, food, objects, the body): a
recipe's retention settings are chosen on the generated set, and the independent set reports them
(`validate --model.retention.dir data/retention/independent`). No replay prompt comes near either.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

from src.data.conversation import DataFormatError
from src.data.retention_facts import (
    CAPITALS, EVERYDAY, INSTRUCTIONS, OPPOSITES, SCIENCE, TRANSLATIONS, UNITS, Fact,
)
from src.data.retention_prompts import OPEN_SUBJECTS, OPEN_TEMPLATES, REPLAY_SUBJECTS, REPLAY_TEMPLATES

LANGS = ("en", "es")
CHECKABLE_FILE, OPEN_FILE, REPLAY_FILE = "checkable.jsonl", "open.jsonl", "replay_prompts.jsonl"
DEFAULT_DIR = Path("data/retention")

# The wording of each checkable kind; "{}" takes the fact's subject. Kinds whose facts are whole
# questions use "{}" alone.
CHECKABLE_TEMPLATES: dict[str, dict[str, str]] = {
    "capital": {"en": "What is the capital of {}?", "es": "¿Cuál es la capital de {}?"},
    "opposite": {"en": "What is the opposite of the word \"{}\"?", "es": "¿Cuál es el contrario de la palabra «{}»?"},
    "unit": {"en": "How many {}?", "es": "¿{}?"},
    "science": {"en": "{}", "es": "{}"},
    "everyday": {"en": "{}", "es": "{}"},
    "translation": {"en": "How do you say \"{}\" in Spanish?", "es": "¿Cómo se dice «{}» en inglés?"},
    "instruction": {"en": "{}", "es": "{}"},
}
FACTS: dict[str, tuple[Fact, ...]] = {
    "capital": CAPITALS, "opposite": OPPOSITES, "unit": UNITS, "science": SCIENCE,
    "everyday": EVERYDAY, "translation": TRANSLATIONS, "instruction": INSTRUCTIONS,
}
FEMININE_UNITS = {"horas"}
"""Spanish unit nouns that take "Cuántas" rather than "Cuántos"."""


class CheckableItem(TypedDict):
    id: str
    lang: str
    kind: str
    template: str
    prompt: str
    answers: list[str]
    rejects: list[str]


class OpenItem(TypedDict):
    id: str
    lang: str
    kind: str
    template: str
    prompt: str


# ----------------------------------------------------------------------------- generation
def checkable_items() -> list[CheckableItem]:
    """Every checkable item, in a fixed order; ids are `<kind>-<lang>-<nnn>`."""
    items: list[CheckableItem] = []
    for kind, facts in FACTS.items():
        for lang in LANGS:
            for n, (en, en_answers, es, es_answers) in enumerate(facts, start=1):
                subject, answers = (en, en_answers) if lang == "en" else (es, es_answers)
                if kind == "unit" and lang == "es":
                    subject = f"{'Cuántas' if subject.split()[0] in FEMININE_UNITS else 'Cuántos'} {subject}"
                rejects: list[str] = []
                if kind == "capital":
                    # Another country's capital in the same reply contradicts the right one.
                    own = set(en_answers + es_answers)
                    rejects = sorted({a for f in facts for a in (f[1] + f[3]) if a not in own})
                items.append({
                    "id": f"{kind}-{lang}-{n:03d}", "lang": lang, "kind": kind, "template": f"checkable.{kind}.{lang}",
                    "prompt": CHECKABLE_TEMPLATES[kind][lang].format(subject), "answers": list(answers),
                    "rejects": rejects,
                })
    return items


def _open_like(prefix: str, templates: dict[str, dict[str, str]], subjects: dict[str, dict[str, tuple[str, ...]]]):
    items: list[OpenItem] = []
    for kind, by_lang in templates.items():
        for lang in LANGS:
            for n, subject in enumerate(subjects[kind][lang], start=1):
                items.append({
                    "id": f"{prefix}-{kind}-{lang}-{n:03d}", "lang": lang, "kind": kind,
                    "template": f"{prefix}.{kind}.{lang}", "prompt": by_lang[lang].format(subject),
                })
    return items


def open_items() -> list[OpenItem]:
    """Explain / describe / list prompts in both languages."""
    return _open_like("open", OPEN_TEMPLATES, OPEN_SUBJECTS)


def replay_items() -> list[OpenItem]:
    """Prompts for replay training: templates and subjects that no evaluation prompt uses."""
    return _open_like("replay", REPLAY_TEMPLATES, REPLAY_SUBJECTS)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def write_all(folder: Path = DEFAULT_DIR) -> dict[str, int]:
    """(Re)write the three files under `folder`; returns the row count of each."""
    return {
        CHECKABLE_FILE: write_jsonl(folder / CHECKABLE_FILE, checkable_items()),
        OPEN_FILE: write_jsonl(folder / OPEN_FILE, open_items()),
        REPLAY_FILE: write_jsonl(folder / REPLAY_FILE, replay_items()),
    }


# ----------------------------------------------------------------------------- loading
_OPEN_KEYS = {"id": str, "lang": str, "kind": str, "prompt": str}
_CHECKABLE_KEYS = {**_OPEN_KEYS, "answers": list}


def load_checkable(path: str | Path) -> list[CheckableItem]:
    """Rows of a checkable file, validated; `rejects` and `template` are optional."""
    return [_checkable(row, str(path), line) for line, row in _rows(Path(path), _CHECKABLE_KEYS)]  # type: ignore[misc]


def load_open(path: str | Path) -> list[OpenItem]:
    """Rows of an open or replay prompt file, validated; `template` is optional."""
    return [
        {"id": row["id"], "lang": row["lang"], "kind": row["kind"], "template": row.get("template", row["kind"]),
         "prompt": row["prompt"]}
        for _, row in _rows(Path(path), _OPEN_KEYS)
    ]


def _checkable(row: dict[str, Any], path: str, line: int) -> CheckableItem:
    where = f"line {line}"
    for key in ("answers", "rejects"):
        values = row.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise DataFormatError(path, where, f"key '{key}' must be a list of non-empty strings, got {values!r}")
    if not row["answers"]:
        raise DataFormatError(path, where, "key 'answers' is empty; give at least one accepted answer")
    return {
        "id": row["id"], "lang": row["lang"], "kind": row["kind"], "template": row.get("template", row["kind"]),
        "prompt": row["prompt"], "answers": row["answers"], "rejects": row.get("rejects", []),
    }


_FOLDER_HINT = (f"a retention folder holds {CHECKABLE_FILE} and {OPEN_FILE} (the generated set in {DEFAULT_DIR} is "
                "written by: python -m src.data.retention)")


def _rows(path: Path, required: dict[str, type]) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataFormatError(str(path), None, f"file not found; {_FOLDER_HINT}")
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"line {line}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFormatError(str(path), where, f"not valid JSON ({error.msg} at column {error.colno})") from error
        if not isinstance(row, dict):
            raise DataFormatError(str(path), where, f"expected a JSON object, got {type(row).__name__}")
        for key, kind in required.items():
            if key not in row:
                raise DataFormatError(str(path), where, f"missing key '{key}' (a row needs {', '.join(required)})")
            if not isinstance(row[key], kind) or (kind is str and not row[key].strip()):
                raise DataFormatError(
                    str(path), where, f"key '{key}' must be a non-empty {kind.__name__}, got {row[key]!r}"
                )
        if row["lang"] not in LANGS:
            raise DataFormatError(str(path), where, f"key 'lang' is {row['lang']!r}; expected one of {LANGS}")
        if row["id"] in seen:
            raise DataFormatError(str(path), where, f"id {row['id']!r} repeats line {seen[row['id']]}; ids must be unique")
        seen[row["id"]] = line
        rows.append((line, row))
    if not rows:
        raise DataFormatError(str(path), None, f"no rows; {_FOLDER_HINT}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder for the three files")
    counts = write_all(parser.parse_args(argv).out)
    print(", ".join(f"{name}: {n} rows" for name, n in counts.items()))


if __name__ == "__main__":
    main()
