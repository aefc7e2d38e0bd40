"""bundle/atomic_files.py: a text or JSON file is replaced whole or not at all, and gets normal new-file
permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import bundle.atomic_files
from bundle.atomic_files import write_json_atomically, write_text_atomically
from bundle.outputs import is_temporary


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_text_lands_complete(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100_000))
    path = write_text_atomically(tmp_path / "table.md", text)
    assert path == tmp_path / "table.md"
    assert path.read_text() == text
    assert _names(tmp_path) == ["table.md"]


def test_json_is_indented_and_ends_with_a_newline(tmp_path):
    content = {"a": [1, 2], "b": {"c": None}}
    path = write_json_atomically(str(tmp_path / "result.json"), content)
    assert isinstance(path, Path)
    assert path.read_text() == json.dumps(content, indent=4) + "\n"
    write_json_atomically(path, content, indent=2)
    assert path.read_text() == json.dumps(content, indent=2) + "\n"
    assert json.loads(path.read_text()) == content


def test_existing_file_is_replaced(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old content, longer than the new one\n")
    write_json_atomically(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}
    assert _names(tmp_path) == ["metrics.json"]


def test_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_text_atomically(path, "{}\n")
    sources = []

    def failing_replace(source, destination):
        sources.append(Path(source))
        assert Path(source).read_text() == '{"new": 1}\n'  # the whole text was written before the rename
        raise OSError("disk full")

    monkeypatch.setattr(bundle.atomic_files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomically(path, '{"new": 1}\n')
    assert path.read_text() == "{}\n"
    assert _names(tmp_path) == ["metrics.json"]
    # the temporary was a hidden file beside the target, which prepare_output_dir does not count as content
    assert sources[0].parent == tmp_path and is_temporary(sources[0])


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "datalist.json"
    write_json_atomically(path, {"training": []})
    with pytest.raises(TypeError):
        write_json_atomically(path, {"training": [object()]})  # not serialisable
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(path, "\udc80")  # fails while writing the temporary file
    assert json.loads(path.read_text()) == {"training": []}
    assert _names(tmp_path) == ["datalist.json"]


def test_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomically(tmp_path / "missing" / "table.md", "text")
    assert _names(tmp_path) == []


@pytest.mark.parametrize("umask", [None, 0o022, 0o027, 0o077])
def test_permissions_are_those_of_a_new_file(tmp_path, umask):
    previous = os.umask(umask) if umask is not None else None
    try:
        reference = tmp_path / "reference.txt"
        with open(reference, "w") as stream:
            stream.write("made normally")
        path = write_text_atomically(tmp_path / "written.txt", "made atomically")
        replaced = tmp_path / "replaced.txt"
        replaced.write_text("old")
        os.chmod(replaced, 0o600)
        write_text_atomically(replaced, "new")  # a new file replaces it: new-file permissions, not the old file's
    finally:
        if previous is not None:
            os.umask(previous)
    expected = stat.S_IMODE(reference.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert stat.S_IMODE(replaced.stat().st_mode) == expected
    if umask == 0o022:
        assert expected == 0o644  # not the 0600 of tempfile.mkstemp
