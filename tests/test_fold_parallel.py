"""Folds in parallel under torchrun (gloo on the CPU): the same logits as one after the other,
and a failing fold makes every process exit non-zero, naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from spermfuse.training.fold_parallel import fold_share

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun gives each process


def train(data: Path, out: Path, *extra: str, parallel: bool = False) -> subprocess.CompletedProcess:
    flags = ["--preset", "tiny", "--data", str(data), "--out", str(out), "--fold", "all", "--arch", "efficientnet_tiny"]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"] if parallel else [sys.executable]
    )
    command = launcher + ["train.py", *flags, *(["--fold-parallel"] if parallel else []), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD, timeout=300)


def test_fold_k_goes_to_rank_k_minus_one_modulo_the_processes():
    assert [fold_share([1, 2, 3, 4, 5], rank, 2) for rank in (0, 1)] == [[1, 3, 5], [2, 4]]
    assert fold_share([1, 2], 2, 3) == []


def test_fold_parallel_training_gives_the_sequential_logits_to_the_last_bit(tiny_sperm, tmp_path):
    sequential = train(tiny_sperm, tmp_path / "sequential")
    assert sequential.returncode == 0, sequential.stderr[-2000:]
    parallel = train(tiny_sperm, tmp_path / "parallel", parallel=True)
    assert parallel.returncode == 0, parallel.stderr[-2000:]
    assert "[fold 2 | rank 1]" in parallel.stderr and "[fold 1 | rank 0]" in parallel.stderr
    assert (tmp_path / "sequential" / "folds.csv").read_bytes() == (tmp_path / "parallel" / "folds.csv").read_bytes()
    for fold in (1, 2):
        for split in ("test", "val"):
            name = f"efficientnet_tiny/fold{fold}/{split}_logits.npz"
            a, b = np.load(tmp_path / "sequential" / name), np.load(tmp_path / "parallel" / name)
            assert np.array_equal(a["logits"], b["logits"]) and np.array_equal(a["paths"], b["paths"])


def test_a_failing_fold_makes_the_launcher_exit_non_zero_and_names_it(tiny_sperm, tmp_path):
    held = tmp_path / "runs" / "efficientnet_tiny" / "fold2"
    held.mkdir(parents=True)
    # fold 2's run folder is held by a live process (this test's), so fold 2 refuses to start
    (held / ".spermfuse.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"})
    )
    result = train(tiny_sperm, tmp_path / "runs", parallel=True)
    assert result.returncode != 0
    assert "--fold-parallel: 1 failed (fold 2:" in result.stderr
    assert (tmp_path / "runs" / "efficientnet_tiny" / "fold1" / "test_logits.npz").is_file()  # fold 1 still trained
