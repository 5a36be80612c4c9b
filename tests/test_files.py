"""Atomic writes and safe loading (files.py)."""

import os

import pytest

from spermfuse import files


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    files.atomic_torch_save(path, {"epoch": 1})

    def power_cut(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        files.atomic_torch_save(path, {"epoch": 2})
    assert files.safe_torch_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    path = tmp_path / "report.json"
    files.atomic_write_json(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
