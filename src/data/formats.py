"""Read a training file in any supported format into `Record`s, reporting bad input by file and line.

- `qa_blocks` (.txt): blocks separated by `###` lines, each with a `Pregunta:` and a `Respuesta:`
  line (or `Question:` / `Answer:`); the text may continue over the following lines.
- `instruction` (.json array or .jsonl): `instruction` [+ `input`] / `output`, or `question` /
  `answer`; optional `system`.
- `chat` (.json array or .jsonl): `messages` [{role, content}] or ShareGPT `conversations`
  [{from, value}]; optional `kind` and `expected` for graded arithmetic.

Every check happens here so that a bad record is reported with its location instead of surfacing
later as a tokenizer crash on a None. Up to `MAX_PROBLEMS` problems are collected, so a single run
shows everything to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, count
from pathlib import Path
from typing import Any

from src.data.conversation import ROLES, DataFormatError, Message, Record, make_record
from src.metrics.answer_extraction import normalise_number

FORMATS: tuple[str, ...] = ("auto", "qa_blocks", "instruction", "chat")
MAX_LINE_BYTES = 16 * 2**20
"""A longer JSONL line is refused before it is read whole: a record is a chat, not a file's worth of text."""
MAX_PROBLEMS = 10
"""Stop after this many problems: past that the file is likely in another format and more lines add noise."""

SET_FORMAT = "or set `format` explicitly to qa_blocks, instruction or chat"
EXPECTED = {
    "qa_blocks": "blocks separated by '###' lines, each with a 'Pregunta:' and a 'Respuesta:' line",
    "json": "a JSON array of objects or one JSON object per line (JSONL)",
}
INSTRUCTION_KEYS = "'instruction' and 'output' (optional 'input', 'system'), or 'question' and 'answer'"
# Key holding the turns -> (speaker key, text key, speaker -> role).
CHAT_SPECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "messages": ("role", "content", {role: role for role in ROLES}),
    "conversations": (
        "from",
        "value",
        {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"},
    ),
}
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}

_SEPARATOR = re.compile(r"^\s*#{3,}\s*$")
_LABEL = re.compile(r"^\s*(pregunta|question|respuesta|answer)\s*:(.*)$", re.IGNORECASE)
_LABEL_ROLE = {"pregunta": "user", "question": "user", "respuesta": "assistant", "answer": "assistant"}


class RecordError(ValueError):
    """One record is malformed; the message says what was expected and the caller adds the location."""


class _Problems:
    """Collects (where, problem) pairs so one error lists everything to fix, not just the first."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[tuple[str, str]] = []
        self.stopped = False  # set when records were left unchecked because the list was full

    def add(self, where: str, problem: str) -> None:
        self.items.append((where, problem))

    def stop_if_full(self) -> bool:
        self.stopped = len(self.items) >= MAX_PROBLEMS
        return self.stopped

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise DataFormatError(self.path, *self.items[0])
        if self.items:
            stopped = f" (stopped after {MAX_PROBLEMS})" if self.stopped else ""
            listing = "\n".join(f"  {where}: {problem}" for where, problem in self.items)
            raise DataFormatError(self.path, None, f"{len(self.items)} problems{stopped}:\n{listing}")


def load_records(path: str | Path, format: str = "auto") -> list[Record]:
    """Parse `path` into records; `auto` picks the format from the extension and the first record's keys."""
    if format not in FORMATS:
        raise DataFormatError(str(path), None, f"unknown format {format!r}; accepted: {', '.join(FORMATS)}")
    path = Path(path)
    _check_is_file(path)
    if format == "auto":
        format = _format_from_extension(path)
    if format != "qa_blocks" and path.suffix.lower() == ".jsonl":
        # Streamed line by line: a large JSONL file is never held in memory as text.
        items: Iterable[tuple[str, Any]] = _jsonl_items(path)
    else:
        text = read_text(path)
        if format == "qa_blocks":
            return parse_qa_blocks(text, str(path))
        if not text.strip():
            raise DataFormatError(str(path), None, f"file is empty; expected {EXPECTED['json']}")
        items = json_items(text, str(path))
    items = iter(items)
    # Look ahead to the first object (a few bad lines may come first) to tell chat from instruction.
    ahead: list[tuple[str, Any]] = []
    for item in items:
        ahead.append(item)
        if isinstance(item[1], dict) or len(ahead) > MAX_PROBLEMS:
            break
    if not ahead:
        raise DataFormatError(str(path), None, f"file is empty; expected {EXPECTED['json']}")
    if format == "json":
        format = _format_from_keys(ahead[-1], str(path))
    items = chain(ahead, items)
    convert = record_from_chat if format == "chat" else record_from_instruction
    return _convert_all(items, convert, _Problems(str(path)))


def _check_is_file(path: Path) -> None:
    if not path.exists():
        hint = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
        raise DataFormatError(str(path), None, f"file not found{hint}")
    if path.is_dir():
        raise DataFormatError(str(path), None, "is a directory; expected a data file (.txt, .json or .jsonl)")


def read_text(path: Path) -> str:
    """File contents with Windows line ends and a UTF-8 byte-order mark removed."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(str(path), f"line {line}", _not_utf8(data[e.start], e.start)) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _not_utf8(byte: int, offset: int) -> str:
    return (
        f"byte 0x{byte:02x} at byte offset {offset} is not valid UTF-8; "
        "the file must be UTF-8 encoded (re-save it as UTF-8)"
    )


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, decoded value) per non-blank line, read one line at a time; a bad line's value is its RecordError."""
    offset = 0
    with path.open("rb") as file:
        for number in count(1):
            raw = file.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataFormatError(
                    str(path), f"line {number}",
                    f"the line is longer than {MAX_LINE_BYTES // 2**20} MiB; expected one JSON record per line",
                )
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                # Without its line end: an error in a cut-off line must point into the line, not past it.
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataFormatError(str(path), f"line {number}", _not_utf8(raw[e.start], offset + e.start)) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield f"line {number}", _decode_json(line)
            except JSONValueError as e:
                if number == 1 and _is_one_object(read_text(path)):
                    raise DataFormatError(
                        str(path),
                        None,
                        f"the file holds a single JSON object spread over several lines; expected {EXPECTED['json']}",
                    ) from None
                yield f"line {number}", RecordError(f"{e}; expected one JSON object per line")


class JSONValueError(ValueError):
    """Text that is not a JSON value this parser accepts; the message says why."""


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONValueError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise JSONValueError("invalid JSON: nested too deeply (arrays or objects within each other)") from None


def _format_from_extension(path: Path) -> str:
    """`qa_blocks` for .txt, `json` (decided later from the keys) for .json/.jsonl."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "qa_blocks"
    if suffix in (".json", ".jsonl"):
        return "json"
    raise DataFormatError(
        str(path),
        None,
        f"cannot tell the format from the extension {suffix or '(none)'!r}; accepted: .txt (qa_blocks), "
        f".json or .jsonl (instruction or chat); rename the file {SET_FORMAT}",
    )


def _format_from_keys(first: tuple[str, Any], path: str) -> str:
    """`chat` or `instruction`, read from the first record's keys."""
    where, obj = first
    if not isinstance(obj, dict):
        # Not an object: every item fails the same way whichever converter runs.
        return "instruction"
    if "messages" in obj or "conversations" in obj:
        return "chat"
    if "instruction" in obj or "question" in obj:
        return "instruction"
    raise DataFormatError(
        path,
        where,
        f"cannot tell the format from {_keys(obj)}: chat needs 'messages' or 'conversations', "
        f"instruction pairs need 'instruction' or 'question'; fix the keys {SET_FORMAT}",
    )


def json_items(text: str, path: str) -> list[tuple[str, Any]]:
    """(location, decoded value) per array element or non-blank line; a bad line's value is its RecordError."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                path, f"line {e.lineno}", f"invalid JSON: {e.msg} at column {e.colno}; expected {EXPECTED['json']}"
            ) from None
        except RecursionError:
            raise DataFormatError(path, None, "invalid JSON: nested too deeply (arrays or objects within each other)") from None
        if not isinstance(data, list):
            raise DataFormatError(path, None, f"expected {EXPECTED['json']}")
        if not data:
            raise DataFormatError(path, None, "the JSON array is empty; expected at least one record")
        return [(f"index {i}", value) for i, value in enumerate(data)]
    items: list[tuple[str, Any]] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028, which splitlines() breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", _decode_json(line)))
        except JSONValueError as e:
            if not items and _is_one_object(text):
                raise DataFormatError(
                    path,
                    None,
                    f"the file holds a single JSON object spread over several lines; expected {EXPECTED['json']}",
                ) from None
            items.append((f"line {number}", RecordError(f"{e}; expected one JSON object per line")))
    return items


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(_decode_json(text), dict)
    except JSONValueError:
        return False


def _convert_all(
    items: Iterable[tuple[str, Any]], convert: Callable[[Any], Record], problems: _Problems
) -> list[Record]:
    records = []
    for where, value in items:
        if problems.stop_if_full():
            break
        try:
            if isinstance(value, RecordError):
                raise value
            records.append(convert(value))
        except RecordError as e:
            problems.add(where, str(e))
    problems.raise_if_any()
    return records


def parse_qa_blocks(text: str, path: str = "<text>") -> list[Record]:
    """Q&A blocks -> [user: question, assistant: answer] records; `path` only names the source in errors."""
    problems = _Problems(path)
    records = []
    blocks = _split_blocks(text)
    if not blocks:
        what = "file is empty" if not text.strip() else "no Q&A blocks found"
        raise DataFormatError(path, None, f"{what}; expected {EXPECTED['qa_blocks']}")
    for index, block in enumerate(blocks, start=1):
        if problems.stop_if_full():
            break
        try:
            records.append(_parse_block(block))
        except RecordError as e:
            problems.add(f"block {index} (line {block[0][0]})", str(e))
    problems.raise_if_any()
    return records


def _split_blocks(text: str) -> list[list[tuple[int, str]]]:
    """Numbered lines of each block between `###` separators, without its leading blank lines."""
    blocks: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(text.split("\n"), start=1):
        if _SEPARATOR.match(line):
            blocks.append([])
        elif line.strip() or blocks[-1]:
            blocks[-1].append((number, line))
    return [block for block in blocks if block]


def _parse_block(lines: list[tuple[int, str]]) -> Record:
    sections: dict[str, tuple[str, list[str]]] = {}  # role -> (label as written, text lines)
    current = None  # the role whose text the following lines continue
    for number, line in lines:
        match = _LABEL.match(line)
        if match:
            label, current = match[1], _LABEL_ROLE[match[1].lower()]
            if current in sections:
                raise RecordError(f"a second '{label}:' at line {number}; separate blocks with a '###' line")
            sections[current] = (label, [match[2]])
        elif current is not None:
            sections[current][1].append(line)
        elif line.strip():
            raise RecordError(f"line {number} is outside a 'Pregunta:' or 'Respuesta:' section: {line.strip()[:40]!r}")
    messages: list[Message] = []
    for role, names in (("user", "'Pregunta:' (or 'Question:')"), ("assistant", "'Respuesta:' (or 'Answer:')")):
        if role not in sections:
            raise RecordError(f"no {names} line; each block needs a question and an answer")
        label, text_lines = sections[role]
        content = "\n".join(text_lines).strip()
        if not content:
            raise RecordError(f"the text after '{label}:' is empty")
        messages.append({"role": role, "content": content})  # type: ignore[typeddict-item]
    return make_record(messages)


def record_from_instruction(obj: Any) -> Record:
    """An instruction pair -> [system?, user, assistant]; a non-empty `input` follows the instruction."""
    _require_object(obj)
    if "instruction" in obj:
        prompt, answer = _string(obj, "instruction"), _string(obj, "output")
        extra = _optional_string(obj, "input")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
    elif "question" in obj:
        prompt, answer = _string(obj, "question"), _string(obj, "answer")
    else:
        raise RecordError(f"missing keys: expected {INSTRUCTION_KEYS}; found {_keys(obj)}")
    system = _optional_string(obj, "system")
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return make_record(messages, *_math_fields(obj))


def record_from_chat(obj: Any) -> Record:
    """A `messages` or ShareGPT `conversations` object -> record; it needs at least one assistant turn."""
    _require_object(obj)
    key = next((k for k in CHAT_SPECS if k in obj), None)
    if key is None:
        raise RecordError(f"missing key 'messages' or 'conversations'; found {_keys(obj)}")
    speaker_key, text_key, roles = CHAT_SPECS[key]
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        got = "an empty array" if turns == [] else describe_value(turns)
        raise RecordError(f"'{key}' must be a non-empty array of turns, got {got}")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        name = f"{key}[{i}]"
        if not isinstance(turn, dict) or speaker_key not in turn or text_key not in turn:
            raise RecordError(f"{name} must be an object with '{speaker_key}' and '{text_key}', got {describe_value(turn)}")
        speaker = turn[speaker_key]
        if not isinstance(speaker, str) or speaker not in roles:
            raise RecordError(f"{name}.{speaker_key}: unknown role {speaker!r}; accepted roles: {', '.join(roles)}")
        content = _string(turn, text_key, name=f"{name}.{text_key}")
        messages.append({"role": roles[speaker], "content": content})  # type: ignore[typeddict-item]
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("the conversation has no assistant turn; at least one is needed to train on")
    return make_record(messages, *_math_fields(obj))


def _math_fields(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(`kind`, `expected`) with a numeric `expected` kept as the text JSON gave it (68 -> "68")."""
    kind, expected = obj.get("kind"), obj.get("expected")
    if kind is not None and not isinstance(kind, str):
        raise RecordError(f"'kind' must be a string, got {describe_value(kind)}")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, (str, int, float))):
        raise RecordError(f"'expected' must be a string or a number, got {describe_value(expected)}")
    if expected is not None and normalise_number(str(expected)) is None:
        raise RecordError(f"'expected' must be a number such as \"68\", \"-3\", \"2.5\" or \"3/4\", got {describe_value(expected)}")
    return kind, None if expected is None else str(expected)


def _require_object(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {describe_value(obj)}")


def _string(obj: dict[str, Any], key: str, name: str | None = None) -> str:
    name = name or f"'{key}'"
    if key not in obj:
        raise RecordError(f"missing key '{key}'; accepted keys: {INSTRUCTION_KEYS}")
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string, got {describe_value(value)}")
    if not value.strip():
        raise RecordError(f"{name} is empty")
    return value


def _optional_string(obj: dict[str, Any], key: str) -> str | None:
    """None for an absent, null or empty optional key (Alpaca files write `"input": ""`)."""
    if obj.get(key) in (None, ""):
        return None
    return _string(obj, key)


def describe_value(value: Any) -> str:
    """JSON type and a short excerpt, as the user wrote it: `number 8`, `array [...]`, `null`."""
    if value is None:
        return "null"
    try:
        excerpt = json.dumps(value, ensure_ascii=False)
    except RecursionError:
        excerpt = "[...]" if isinstance(value, list) else "{...}"
    excerpt = excerpt if len(excerpt) <= 40 else excerpt[:37] + "..."
    return f"{JSON_TYPES.get(type(value), type(value).__name__)} {excerpt}"


def _keys(obj: dict[str, Any]) -> str:
    return "keys " + ", ".join(repr(k) for k in obj) if obj else "no keys"
