"""Atomic writes and safe loading (files.py)."""

import os

import pytest

from spermfuse.core import checkpoints, files


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.atomic_torch_save(path, {"epoch": 1})

    def power_cut(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        checkpoints.atomic_torch_save(path, {"epoch": 2})
    assert checkpoints.safe_torch_load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    path = tmp_path / "report.json"
    files.atomic_write_json(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_file_of_zeros_is_no_checkpoint_and_the_message_gives_no_advice_to_run_its_code(tmp_path):
    from spermfuse.core.checkpoints import safe_torch_load
    from spermfuse.core.files import CheckpointError

    (tmp_path / "zeros.pt").write_bytes(bytes(300_000))
    with pytest.raises(CheckpointError) as refused:
        safe_torch_load(tmp_path / "zeros.pt")
    assert "not a zip archive, as torch.save writes" in str(refused.value) and "weights_only" not in str(refused.value)


def test_a_text_file_is_no_checkpoint_rather_than_one_holding_objects_other_than_tensors(tmp_path):
    from spermfuse.core.checkpoints import safe_torch_load
    from spermfuse.core.files import CheckpointError

    (tmp_path / "notes.pt").write_text("garbage\n")
    with pytest.raises(CheckpointError, match="notes.pt: not a loadable PyTorch checkpoint"):
        safe_torch_load(tmp_path / "notes.pt")


def test_a_legacy_pickle_holding_an_object_is_refused_as_such(tmp_path):
    import argparse

    import torch

    from spermfuse.core.checkpoints import safe_torch_load
    from spermfuse.core.files import CheckpointError

    torch.save({"settings": argparse.Namespace(lr=0.1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="old.pt: refused: it holds objects other than tensors"):
        safe_torch_load(tmp_path / "old.pt")
