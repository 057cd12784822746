"""The one atomic, durable file replacement (dnsvr._fsutil) and the index's confined variant."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dnsvr import _fsutil
from dnsvr.index import _paths
from dnsvr.index._schema import DamagedIndexError


def test_write_json_atomic_replaces_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    _fsutil.write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    # the temporary file before the rename, then the folder after it
    assert synced == [str(tmp_path / f"a.json.tmp{os.getpid()}"), str(tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_replace_file_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    folder = tmp_path / "index"
    folder.mkdir()
    # a link left at the temporary name and one at the target: both are replaced, neither followed
    (folder / f"m.json.tmp{os.getpid()}").symlink_to(outside)
    (folder / "m.json").symlink_to(outside)
    _paths.write_json_atomic(folder / "m.json", {"x": 1})
    assert outside.read_text() == "keep"
    assert not (folder / "m.json").is_symlink() and json.loads((folder / "m.json").read_text()) == {"x": 1}


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "v.bin"
    target.write_bytes(b"old")

    def fail(fh) -> None:
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _fsutil.replace_file(target, fail, durable=False)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["v.bin"]


def test_a_folder_at_the_temporary_name_is_index_damage(tmp_path: Path) -> None:
    (tmp_path / f"m.json.tmp{os.getpid()}").mkdir()
    with pytest.raises(IsADirectoryError):
        _fsutil.write_json_atomic(tmp_path / "m.json", {})
    with pytest.raises(DamagedIndexError, match="is a directory"):
        _paths.write_json_atomic(tmp_path / "m.json", {})
