"""Hostile input: whatever bytes a data file holds, the parser returns records or raises DataFormatError.

Property-based (hypothesis): random bytes, random JSON of any shape, deep nesting, enormous lines,
mixed encodings, byte-order marks and Windows line ends. Never a library traceback.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.data.conversation import DataFormatError
from src.data.formats import MAX_LINE_BYTES, load_records

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EXTENSIONS = [".txt", ".json", ".jsonl"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
# Objects that look like records: the keys the formats use, with values of any type.
RECORD_KEYS = ["messages", "conversations", "instruction", "input", "output", "question", "answer", "system",
               "kind", "expected", "role", "content", "from", "value"]
turn = st.dictionaries(st.sampled_from(["role", "content", "from", "value"]),
                       st.sampled_from(["user", "assistant", "system", "human", "gpt", "robot", ""]) | json_values,
                       max_size=3)
record_like = st.dictionaries(st.sampled_from(RECORD_KEYS), json_values | st.lists(turn, max_size=3), max_size=5)


def parse(path: Path) -> None:
    """Either records or the project's own error, with the file named in the message."""
    try:
        records = load_records(path)
    except DataFormatError as error:
        assert str(path) in str(error)
        return
    assert isinstance(records, list) and records
    for record in records:
        assert any(m["role"] == "assistant" and m["content"].strip() for m in record["messages"])


@SETTINGS
@given(data=st.binary(max_size=400), extension=st.sampled_from(EXTENSIONS))
def test_random_bytes(tmp_path: Path, data: bytes, extension: str) -> None:
    path = tmp_path / f"data{extension}"
    path.write_bytes(data)
    parse(path)


@SETTINGS
@given(rows=st.lists(record_like | json_values, max_size=6), as_array=st.booleans())
def test_json_of_any_shape_with_missing_extra_and_mistyped_keys(tmp_path: Path, rows: list, as_array: bool) -> None:
    path = tmp_path / ("data.json" if as_array else "data.jsonl")
    text = json.dumps(rows) if as_array else "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    parse(path)


@SETTINGS
@given(
    rows=st.lists(record_like, min_size=1, max_size=4),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_encodings_byte_order_marks_and_line_ends(tmp_path, rows, bom, newline, encoding) -> None:
    text = newline.join(json.dumps(row, ensure_ascii=False) for row in rows) + newline
    data = text.encode(encoding, errors="replace")
    path = tmp_path / "data.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom and encoding == "utf-8" else b"") + data)
    parse(path)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("#\n\r :PreguntaRespuestQAnswerio¿?éñ\u2028\ufeff")), max_size=300))
def test_qa_blocks_made_of_their_own_syntax(tmp_path: Path, text: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text(text, encoding="utf-8")
    parse(path)


GOOD_CHAT = {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}


@pytest.mark.parametrize("extension", [".json", ".jsonl"])
def test_json_nested_deeper_than_the_parser_recurses(tmp_path: Path, extension: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / f"deep{extension}"
    path.write_text(deep if extension == ".json" else json.dumps(GOOD_CHAT) + "\n" + deep + "\n")
    with pytest.raises(DataFormatError, match="nested too deeply"):
        load_records(path)


def test_an_enormous_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("w") as file:
        file.write(json.dumps(GOOD_CHAT) + "\n")
        file.write('{"messages": "' + "x" * (MAX_LINE_BYTES * 4) + '"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=re.escape(f"{path}:line 2: the line is longer than 16 MiB")):
            load_records(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES, "at most the first 16 MiB of the 64 MiB line were read"


def test_a_large_jsonl_file_streams_without_holding_its_text(tmp_path: Path) -> None:
    path = tmp_path / "large.jsonl"
    with path.open("w") as file:
        file.writelines(json.dumps(GOOD_CHAT) + "\n" for _ in range(50_000))
    tracemalloc.start()
    try:
        records = load_records(path)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 50_000
    # Beyond the records it returns, parsing holds a line or so at a time, not the file's text.
    assert peak - kept < path.stat().st_size / 2
