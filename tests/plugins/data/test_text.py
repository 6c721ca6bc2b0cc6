"""``text:PATH``: files and directories as byte corpora, and the errors users meet."""

from __future__ import annotations

import math

import pytest

import nlframe
from nlframe_plugins.data.text import text


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt' does not exist"):
        text(str(missing))
    with pytest.raises(ValueError, match="text:PATH"):
        text()


def test_empty_inputs_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="has no bytes"):
        text(str(tmp_path / "empty.txt"))
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="contains no files"):
        text(str(tmp_path / "d"))
    (tmp_path / "d" / "a.txt").write_bytes(b"")
    (tmp_path / "d" / "b.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"has no bytes \(2 empty file"):
        text(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no files ending in \['.md'\]"):
        text(str(tmp_path / "d"), suffixes=".md")


def test_single_file_splits_by_position(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "book.txt").write_bytes(data)
    c = text(str(tmp_path / "book.txt"))
    n_val = math.ceil(len(data) * 0.05)
    assert c.manifest["split"] == "position"
    assert bytes(c.split("validation")) == data[-n_val:]
    assert bytes(c.split("train")) == data[:-n_val]
    assert c.vocab_size == 256


def test_directory_is_read_recursively_sorted_skipping_hidden(tmp_path):
    for rel, body in {"b/z.txt": b"Z" * 40, "a.txt": b"A" * 40, "b/c.md": b"C" * 40,
                      ".git/x": b"G" * 40, "b/.swp": b"S" * 40}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(body)
    c = text(str(tmp_path))
    assert c.manifest["files"] == 3 and c.manifest["split"] == "file"
    everything = bytes(c.split("train")) + bytes(c.split("validation"))
    assert sorted(everything) == sorted(b"A" * 40 + b"Z" * 40 + b"C" * 40)
    only_txt = text(str(tmp_path), suffixes=[".txt"])
    assert only_txt.manifest["files"] == 2 and only_txt.directory != c.directory


def test_changed_files_trigger_a_rebuild(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"a" * 100)
    assert bytes(text(str(f)).split("train")) == b"a" * 95
    f.write_bytes(b"b" * 200)
    assert bytes(text(str(f)).split("train")) == b"b" * 190


def test_resolved_through_the_registry(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"hello world " * 20)
    factory = nlframe.get_registry().get("data", "text")
    c = factory(str(tmp_path / "t.txt"))
    b = c.batch("train", 0, batch_size=2, seq_len=16)
    assert b["tokens"].shape == (2, 16)
