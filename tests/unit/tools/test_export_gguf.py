"""The export command line: writes the file, or one error line and exit status 1."""

from __future__ import annotations

import gguf
import pytest

from tiny_llamas import save_tiny_llama
from src.tools.export_gguf import main


def test_cli_writes_the_requested_outtype(tmp_path, tiny_tokenizer, capsys):
    folder = save_tiny_llama(tmp_path / "merged", tiny_tokenizer)
    out = tmp_path / "tutor.q8_0.gguf"
    assert main(["--model_dir", str(folder), "--out", str(out), "--outtype", "q8_0", "--name", "tutor"]) == 0
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.name"].contents() == "tutor"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert str(out) in capsys.readouterr().out


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    assert main(["--model_dir", str(tmp_path), "--out", str(tmp_path / "x.gguf")]) == 1
    assert "config.json is missing" in capsys.readouterr().err


def test_cli_refuses_unknown_outtypes():
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_dir", "m", "--out", "x.gguf", "--outtype", "q4_0"])
    assert exit_info.value.code == 2
