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
        # --standalone: a free port for the rendezvous, so runs side by side (test workers) never collide
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        if parallel
        else [sys.executable]
    )
    command = launcher + ["train.py", *flags, *(["--fold-parallel"] if parallel else []), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD, timeout=300)


def what_went_wrong(result: subprocess.CompletedProcess) -> str:
    """A failed torchrun's own lines (a rank's error or abort), which its long summary pushes out of the tail."""
    lines = result.stderr.splitlines()
    telling = [
        line for line in lines if any(word in line.lower() for word in ("error", "terminate", "abort", "signal"))
    ]
    return "\n".join(telling[:40] + ["..."] + lines[-15:])


def test_fold_k_goes_to_rank_k_minus_one_modulo_the_processes():
    assert [fold_share([1, 2, 3, 4, 5], rank, 2) for rank in (0, 1)] == [[1, 3, 5], [2, 4]]
    assert fold_share([1, 2], 2, 3) == []


def test_fold_parallel_training_gives_the_sequential_logits_to_the_last_bit(tiny_sperm, tmp_path):
    sequential = train(tiny_sperm, tmp_path / "sequential")
    assert sequential.returncode == 0, sequential.stderr[-2000:]
    parallel = train(tiny_sperm, tmp_path / "parallel", parallel=True)
    assert parallel.returncode == 0, what_went_wrong(parallel)
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


SHUTDOWN_PROBE = """
import os
import sys
import torch.distributed as dist
from spermfuse import distributed
from spermfuse.runtime import seed_everything

context = distributed.init_from_environment("cpu")
seed_everything(0)  # deterministic mode, switched on again after joining, as every fold does
parts = [None] * context.world_size
dist.all_gather_object(parts, context.rank)
distributed.shutdown()
names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
left = sum("gloo" in name for name in names)
# one file per rank: the ranks' printed lines interleave mid-line on torchrun's shared stdout
open(os.path.join(sys.argv[1], f"rank{context.rank}.txt"), "w").write(str(left))
"""


def test_shutdown_stops_gloos_threads_before_the_interpreter_exits(tmp_path):
    # A gloo thread still running when Python exits can abort a finished run (SIGABRT, exit -6)
    probe = tmp_path / "probe.py"
    probe.write_text(SHUTDOWN_PROBE)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = launcher + [str(probe), str(tmp_path)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**ONE_THREAD, "PYTHONPATH": str(ROOT)}
    )
    assert result.returncode == 0, what_went_wrong(result)
    left = {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert left == {0: "0", 1: "0"}, f"gloo threads left after shutdown, by rank: {left}"
