"""nlframe.cache: cache root override and atomic writes."""

from __future__ import annotations

import pytest

from nlframe.cache import atomic_write, atomic_write_text, cache_dir


def test_env_override_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NLFRAME_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir("corpus", "x") == tmp_path / "c" / "corpus" / "x"
    assert (tmp_path / "c" / "corpus" / "x").is_dir()
    monkeypatch.delenv("NLFRAME_CACHE_DIR")
    default = cache_dir("corpus", create=False)
    assert default.parts[-2:] == ("nlframe", "corpus")


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half of the sec")
            raise RuntimeError("crash")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # no temp file left
    with atomic_write(target) as f:
        f.write(b"second")
    assert target.read_bytes() == b"second"
