"""Every input format becomes the same records, and every kind of bad input is named with its location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.data.conversation import DataFormatError
from src.data.formats import load_records, parse_qa_blocks

ASSETS = Path(__file__).parents[2] / "assets" / "formats"
INSTRUCTION_KEYS = "'instruction' and 'output' (optional 'input', 'system'), or 'question' and 'answer'"
JSON_EXPECTED = "a JSON array of objects or one JSON object per line (JSONL)"
BLOCKS_EXPECTED = "blocks separated by '###' lines, each with a 'Pregunta:' and a 'Respuesta:' line"


def pair(question: str, answer: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*objects: object) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


def error_of(path: Path | str, format: str = "auto") -> str:
    with pytest.raises(DataFormatError) as info:
        load_records(path, format=format)
    return str(info.value)


# --- each format parses to exactly these messages ---------------------------------------------


def test_qa_blocks_with_multiline_answer_and_english_labels() -> None:
    records = load_records(ASSETS / "pokemon.txt")
    assert [r["messages"] for r in records] == [
        pair(
            "¿Qué tipo de Pokémon es Pikachu?",
            "Pikachu es un Pokémon de tipo Eléctrico conocido por sus mejillas que almacenan electricidad.",
        ),
        pair(
            "Describe a Charizard",
            "Charizard es un Pokémon de tipo Fuego/Volador.\nPuede volar y lanzar llamas.\n\n"
            "Es la evolución final de Charmander.",
        ),
        pair("What type is Squirtle?", "Squirtle is a Water-type Pokémon."),
    ]
    assert all(r["kind"] is None and r["expected"] is None for r in records)


def test_qa_block_question_may_span_lines_and_windows_line_ends_are_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.txt", b"Pregunta: Lee esto:\r\n  2 + 2\r\nRespuesta:4\r\n")
    assert load_records(path)[0]["messages"] == pair("Lee esto:\n  2 + 2", "4")


def test_instruction_array_joins_input_after_a_blank_line_and_reads_system() -> None:
    records = load_records(ASSETS / "instruction.json")
    assert [r["messages"] for r in records] == [
        pair("Explica qué es una fracción", "Una fracción representa partes de un todo."),
        pair("Simplifica la fracción\n\n6/8", "6/8 = 3/4"),
        pair("¿Cuánto es 7 × 8?", "56", system="Eres un tutor de matemáticas."),
    ]


def test_question_answer_jsonl_passes_kind_and_numeric_expected_as_text() -> None:
    records = load_records(ASSETS / "instruction.jsonl")
    assert records == [
        {
            "messages": pair("¿Qué es un número primo?", "Un número divisible solo por 1 y por sí mismo."),
            "kind": None,
            "expected": None,
        },
        {"messages": pair("What is 12 ÷ 4?", "3", system="You are a math tutor."), "kind": "div", "expected": "3"},
    ]


def test_chat_jsonl_keeps_every_turn_and_skips_blank_lines() -> None:
    records = load_records(ASSETS / "chat.jsonl")
    assert records == [
        {
            "messages": [
                {"role": "system", "content": "Eres un tutor de Python."},
                {"role": "user", "content": "¿Qué hace len()?"},
                {"role": "assistant", "content": "Devuelve la longitud de una secuencia."},
                {"role": "user", "content": "¿Y con un dict?"},
                {"role": "assistant", "content": "El número de claves."},
            ],
            "kind": None,
            "expected": None,
        },
        {
            "messages": pair("¿Cuánto es 45 - 27?", "45-20=25\n25-7=18\nRespuesta: 18"),
            "kind": "sub_2d",
            "expected": "18",
        },
    ]


def test_sharegpt_speakers_map_to_roles() -> None:
    records = load_records(ASSETS / "sharegpt.jsonl")
    assert records == [
        {"messages": pair("What is 2.5 + 2.5?", "5", system="You are a tutor."), "kind": "add_dec", "expected": "5.0"},
        {"messages": pair("Hola", "¡Hola! ¿En qué te ayudo?"), "kind": None, "expected": None},
    ]


def test_chat_array_file_and_trailing_user_turn_is_kept(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    path = write(tmp_path, "chat.json", json.dumps([{"messages": turns}]))
    assert load_records(path) == [{"messages": turns, "kind": None, "expected": None}]


def test_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + jsonl({"question": "a", "answer": "b"}).encode())
    assert load_records(path)[0]["messages"] == pair("a", "b")


# --- format detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("pokemon.txt", "qa_blocks"),
        ("instruction.json", "instruction"),
        ("instruction.jsonl", "instruction"),
        ("chat.jsonl", "chat"),
        ("sharegpt.jsonl", "chat"),
    ],
)
def test_auto_detection_matches_the_explicit_format(name: str, format: str) -> None:
    assert load_records(ASSETS / name) == load_records(ASSETS / name, format=format)


def test_explicit_format_reads_any_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", jsonl({"question": "a", "answer": "b"}))
    assert load_records(path, format="instruction")[0]["messages"] == pair("a", "b")


def test_unknown_extension_lists_accepted_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "question,answer\n")
    assert error_of(path) == (
        f"{path}: cannot tell the format from the extension '.csv'; accepted: .txt (qa_blocks), "
        ".json or .jsonl (instruction or chat); rename the file or set `format` explicitly to "
        "qa_blocks, instruction or chat"
    )


def test_undecidable_keys_say_which_keys_each_format_needs(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", jsonl({"prompt": "a", "completion": "b"}))
    assert error_of(path) == (
        f"{path}:line 1: cannot tell the format from keys 'prompt', 'completion': chat needs 'messages' or "
        "'conversations', instruction pairs need 'instruction' or 'question'; fix the keys or set `format` "
        "explicitly to qa_blocks, instruction or chat"
    )


def test_unknown_format_name(tmp_path: Path) -> None:
    assert error_of(tmp_path / "x.txt", format="alpaca") == (
        f"{tmp_path / 'x.txt'}: unknown format 'alpaca'; accepted: auto, qa_blocks, instruction, chat"
    )


# --- file-level problems ----------------------------------------------------------------------


def test_missing_file_with_absolute_path(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"


def test_missing_file_with_relative_path_names_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert error_of("nope.jsonl") == f"nope.jsonl: file not found (relative paths start from {tmp_path})"


def test_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory; expected a data file (.txt, .json or .jsonl)"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.jsonl", "", f"file is empty; expected {JSON_EXPECTED}"),
        ("blank.json", " \n\n\t\n", f"file is empty; expected {JSON_EXPECTED}"),
        ("blank.txt", "\n  \n", f"file is empty; expected {BLOCKS_EXPECTED}"),
        ("separators.txt", "###\n\n###\n", f"no Q&A blocks found; expected {BLOCKS_EXPECTED}"),
        ("empty_array.json", "[]", "the JSON array is empty; expected at least one record"),
    ],
)
def test_empty_inputs(tmp_path: Path, name: str, content: str, problem: str) -> None:
    path = write(tmp_path, name, content)
    assert error_of(path) == f"{path}: {problem}"


def test_non_utf8_bytes_name_line_and_byte_offset(tmp_path: Path) -> None:
    first = jsonl({"question": "a", "answer": "b"}).encode()  # 33 bytes
    path = write(tmp_path, "latin1.jsonl", first + '{"question": "café", "answer": "b"}\n'.encode("latin-1"))
    assert error_of(path) == (
        f"{path}:line 2: byte 0xe9 at byte offset 50 is not valid UTF-8; "
        "the file must be UTF-8 encoded (re-save it as UTF-8)"
    )


def test_pretty_printed_single_object(tmp_path: Path) -> None:
    path = write(tmp_path, "one.json", json.dumps({"question": "a", "answer": "b"}, indent=2))
    assert error_of(path) == (
        f"{path}: the file holds a single JSON object spread over several lines; expected {JSON_EXPECTED}"
    )


def test_malformed_json_array_names_the_file_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.json", '[\n {"question": "a", "answer": "b"},\n {"question" "c"}\n]')
    assert error_of(path) == (
        f"{path}:line 3: invalid JSON: Expecting ':' delimiter at column 14; expected {JSON_EXPECTED}"
    )


# --- record-level problems: (file name, content, format, location, problem) -------------------

GOOD = {"question": "a", "answer": "b"}
PER_BLOCK = "each block needs a question and an answer"


def chat(*turns: tuple[str, object], key: str = "messages", fields: tuple[str, str] = ("role", "content")) -> str:
    """One JSONL line with the given (speaker, text) turns."""
    return jsonl({key: [dict(zip(fields, turn)) for turn in turns]})


CASES = [
    pytest.param(
        "x.jsonl", jsonl(GOOD) + '{"question": "a" "answer": "b"}\n', "auto", "line 2",
        "invalid JSON: Expecting ',' delimiter at column 18; expected one JSON object per line",
        id="malformed-json-line",
    ),
    pytest.param(
        "x.jsonl", jsonl({"messages": pair("a", "b")}, [1, 2]), "auto", "line 2",
        "expected a JSON object, got array [1, 2]",
        id="not-an-object",
    ),
    pytest.param(
        "x.jsonl", jsonl({"prompt": "a", "completion": "b"}), "instruction", "line 1",
        f"missing keys: expected {INSTRUCTION_KEYS}; found keys 'prompt', 'completion'",
        id="instruction-keys",
    ),
    pytest.param(
        "x.jsonl", jsonl({"instruction": "a", "response": "b"}), "auto", "line 1",
        f"missing key 'output'; accepted keys: {INSTRUCTION_KEYS}",
        id="missing-output",
    ),
    pytest.param(
        "x.json", json.dumps([GOOD, {"question": "c"}]), "auto", "index 1",
        f"missing key 'answer'; accepted keys: {INSTRUCTION_KEYS}",
        id="array-index",
    ),
    pytest.param(
        "x.jsonl", jsonl(GOOD), "chat", "line 1",
        "missing key 'messages' or 'conversations'; found keys 'question', 'answer'",
        id="chat-keys",
    ),
    pytest.param(
        "x.jsonl", jsonl({"instruction": "7 × 8", "output": 56}), "auto", "line 1",
        "'output' must be a string, got number 56",
        id="number-output",
    ),
    pytest.param(
        "x.jsonl", jsonl({"question": "  ", "answer": "b"}), "auto", "line 1",
        "'question' is empty",
        id="blank-question",
    ),
    pytest.param(
        "x.jsonl", chat(("user", "a"), ("bot", "b")), "auto", "line 1",
        "messages[1].role: unknown role 'bot'; accepted roles: system, user, assistant",
        id="unknown-role",
    ),
    pytest.param(
        "x.jsonl",
        chat(("human", "a"), ("model", "b"), key="conversations", fields=("from", "value")),
        "auto",
        "line 1",
        "conversations[1].from: unknown role 'model'; accepted roles: system, human, gpt, user, assistant",
        id="unknown-sharegpt-speaker",
    ),
    pytest.param(
        "x.jsonl", chat(("human", "a"), fields=("from", "value")), "auto", "line 1",
        'messages[0] must be an object with \'role\' and \'content\', got object {"from": "human", "value": "a"}',
        id="sharegpt-turn-under-messages",
    ),
    pytest.param(
        "x.jsonl", chat(("user", [{"type": "text"}]), ("assistant", "b")), "auto", "line 1",
        'messages[0].content must be a string, got array [{"type": "text"}]',
        id="content-parts",
    ),
    pytest.param(
        "x.jsonl", chat(("user", None)), "auto", "line 1",
        "messages[0].content must be a string, got null",
        id="null-content",
    ),
    pytest.param(
        "x.jsonl", chat(("user", "a"), ("assistant", "")), "auto", "line 1",
        "messages[1].content is empty",
        id="empty-content",
    ),
    pytest.param(
        "x.jsonl", jsonl({"messages": []}), "auto", "line 1",
        "'messages' must be a non-empty array of turns, got an empty array",
        id="no-turns",
    ),
    pytest.param(
        "x.jsonl", chat(("system", "s"), ("user", "a")), "auto", "line 1",
        "the conversation has no assistant turn; at least one is needed to train on",
        id="no-assistant-turn",
    ),
    pytest.param(
        "x.jsonl", jsonl({**GOOD, "kind": 3}), "auto", "line 1",
        "'kind' must be a string, got number 3",
        id="kind-type",
    ),
    pytest.param(
        "x.jsonl", jsonl({**GOOD, "expected": True}), "auto", "line 1",
        "'expected' must be a string or a number, got boolean true",
        id="expected-type",
    ),
    pytest.param(
        "x.txt", "###\nPregunta: a\nRespuesta: b\n###\n\n\nPregunta: c\n###\n", "auto", "block 2 (line 7)",
        f"no 'Respuesta:' (or 'Answer:') line; {PER_BLOCK}",
        id="block-without-answer",
    ),
    pytest.param(
        "x.txt", "Answer: b\n", "auto", "block 1 (line 1)",
        f"no 'Pregunta:' (or 'Question:') line; {PER_BLOCK}",
        id="block-without-question",
    ),
    pytest.param(
        "x.txt", "Pregunta: a\nRespuesta:   \n\n", "auto", "block 1 (line 1)",
        "the text after 'Respuesta:' is empty",
        id="empty-answer",
    ),
    pytest.param(
        "x.txt", "Pregunta: a\nRespuesta: b\nPregunta: c\nRespuesta: d\n", "auto", "block 1 (line 1)",
        "a second 'Pregunta:' at line 3; separate blocks with a '###' line",
        id="missing-separator",
    ),
    pytest.param(
        "x.txt", "###\nPokémon\nPregunta: a\nRespuesta: b\n", "auto", "block 1 (line 2)",
        "line 2 is outside a 'Pregunta:' or 'Respuesta:' section: 'Pokémon'",
        id="text-before-label",
    ),
]


@pytest.mark.parametrize(("name", "content", "format", "where", "problem"), CASES)
def test_bad_record_names_location_and_expectation(
    tmp_path: Path, name: str, content: str, format: str, where: str, problem: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as info:
        load_records(path, format=format)
    assert str(info.value) == f"{path}:{where}: {problem}"
    assert (info.value.path, info.value.where, info.value.problem) == (str(path), where, problem)


def test_several_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    lines = jsonl({"question": "a"}, GOOD, {"question": "b", "answer": ""}) + "{oops\n"
    path = write(tmp_path, "many.jsonl", lines)
    assert error_of(path) == (
        f"{path}: 3 problems:\n"
        f"  line 1: missing key 'answer'; accepted keys: {INSTRUCTION_KEYS}\n"
        "  line 3: 'answer' is empty\n"
        "  line 4: invalid JSON: Expecting property name enclosed in double quotes at column 2; "
        "expected one JSON object per line"
    )


@pytest.mark.parametrize(("bad_lines", "header"), [(12, "10 problems (stopped after 10):"), (10, "10 problems:")])
def test_collection_stops_after_ten_problems(tmp_path: Path, bad_lines: int, header: str) -> None:
    path = write(tmp_path, "all_bad.jsonl", jsonl(*[{"question": f"q{i}"} for i in range(bad_lines)]))
    message = error_of(path)
    assert message.startswith(f"{path}: {header}\n  line 1: missing key 'answer'")
    assert message.count("\n") == 10 and "  line 10: " in message and "  line 11: " not in message


def test_qa_block_problems_are_collected_per_block() -> None:
    with pytest.raises(DataFormatError) as info:
        parse_qa_blocks("Pregunta: a\n###\nRespuesta: b\n###\nPregunta: c\nRespuesta: d\n", "inline.txt")
    assert str(info.value) == (
        "inline.txt: 2 problems:\n"
        "  block 1 (line 1): no 'Respuesta:' (or 'Answer:') line; each block needs a question and an answer\n"
        "  block 2 (line 3): no 'Pregunta:' (or 'Question:') line; each block needs a question and an answer"
    )
