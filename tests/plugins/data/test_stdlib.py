"""The embedded stdlib corpus: which files, the manifest, reuse, registration."""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import pytest

import nlframe
from nlframe_plugins.data.stdlib import stdlib, stdlib_files


def test_file_selection_on_a_fake_tree(tmp_path):
    for rel in ["os.py", "json/__init__.py", "json/decoder.py", "test/test_os.py",
                "idlelib/idle_test/test_x.py", "lib2to3/tests/t.py", "site-packages/pkg/m.py",
                "__pycache__/os.cpython-311.py", "_sysconfigdata__linux.py", "README.txt",
                ".hidden/x.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert stdlib_files(tmp_path) == ["json/__init__.py", "json/decoder.py", "os.py"]
    assert stdlib_files(tmp_path, include_tests=True) == [
        "idlelib/idle_test/test_x.py", "json/__init__.py", "json/decoder.py",
        "lib2to3/tests/t.py", "os.py", "test/test_os.py"]


def test_real_stdlib_listing_is_sorted_and_plausible():
    files = stdlib_files(Path(sysconfig.get_paths()["stdlib"]))
    assert files == sorted(files) and len(files) > 200
    assert "os.py" in files and "json/decoder.py" in files
    assert not any(p.startswith(("site-packages/", "test/")) for p in files)


def test_manifest_and_reuse(small_stdlib, monkeypatch, tmp_path):
    m = small_stdlib.manifest
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)[:40]
    assert m["files"] == 40 and m["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["bytes"] == sum((root / f).stat().st_size for f in files)
    data = small_stdlib.directory / "data.bin"
    assert m["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m["validation_files"] >= 1 and m["train_files"] >= 1
    monkeypatch.setenv("NLFRAME_CACHE_DIR", str(small_stdlib.directory.parent.parent))
    mtime = data.stat().st_mtime_ns
    again = stdlib(max_files=40)
    assert again.manifest == m and data.stat().st_mtime_ns == mtime  # opened, not rebuilt


def test_registered_and_rejects_an_argument():
    assert nlframe.get_registry().get("data", "stdlib") is stdlib
    with pytest.raises(ValueError, match="takes no ':' argument"):
        stdlib("x")
    with pytest.raises(ValueError, match="max_files must be an int >= 2"):
        stdlib(max_files=1)


@pytest.mark.slow
def test_full_build_has_a_validation_share_near_five_percent():
    c = stdlib()
    m = c.manifest
    assert 0.01 < m["validation_bytes"] / m["bytes"] < 0.15
    assert len(c.split("train")) > 5_000_000
