"""Training that stops on a scheduler's signal (preemption.py, cli.py) and continues to the same logits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_train

from spermfuse import cli
from spermfuse.preemption import STOP_SIGNALS, Preempted, StopRequest

ROOT = Path(__file__).resolve().parents[1]


def test_a_signal_exits_with_the_preempted_status_and_slurm_is_asked_to_requeue(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "asked"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    try:
        for number, requeued in ((signal.SIGTERM, False), (signal.SIGUSR1, True)):

            def body(number=number):
                os.kill(os.getpid(), number)
                time.sleep(5)  # the handler interrupts this

            assert cli.run(body, stop=StopRequest()) == cli.PREEMPTED_STATUS
            assert (tmp_path / "asked").exists() == requeued
        assert (tmp_path / "asked").read_text().split() == ["requeue", "4242"]
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_a_stop_inside_an_epoch_ends_it_after_the_step_and_the_resume_continues_from_the_next(tiny_sperm, tmp_path):
    from conftest import fold_trainer_for, tiny_config

    from spermfuse.core.checkpoints import safe_torch_load

    settings = dict(epochs=3, batch_size=8, arch="efficientnet_tiny")
    full = fold_trainer_for(tiny_config(tiny_sperm, tmp_path / "full", **settings)).run()
    stop, calls = StopRequest(), []

    def signal_at_epoch_2_step_3(step, batches, rate):  # as if SIGTERM arrived during that step
        calls.append(step)
        if len(calls) == batches + 3:
            stop(signal.SIGTERM)

    config = tiny_config(tiny_sperm, tmp_path / "cut", **settings)
    with pytest.raises(Preempted):
        fold_trainer_for(config, stop=stop, progress=signal_at_epoch_2_step_3).run()
    last = safe_torch_load(config.run_dir() / "last.pt")
    assert last["partial_epoch"]["stopped_at"] == 3 and last["next_epoch"] == 1 and last["global_epoch"] == 1
    resumed = fold_trainer_for(tiny_config(tiny_sperm, tmp_path / "cut", resume=True, **settings)).run()
    expected = np.load(full / "test_logits.npz")["logits"]
    assert np.array_equal(np.load(resumed / "test_logits.npz")["logits"], expected)
    assert len((resumed / "history.csv").read_text().splitlines()) == 4  # three epochs, the second once


def test_resume_auto_starts_a_run_that_has_no_last_checkpoint(tiny_sperm, tmp_path):
    folders = ["--data", str(tiny_sperm), "--out", str(tmp_path)]
    result = run_train(*"--preset tiny --arch efficientnet_tiny --fold 1 --resume auto".split(), *folders)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "efficientnet_tiny" / "fold1" / "test_logits.npz").is_file()


def signal_after_epochs(command: list[str], history: Path, epochs: int) -> subprocess.CompletedProcess:
    """Run ``command`` and send SIGTERM once ``history`` holds ``epochs`` epoch rows."""
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while process.poll() is None and time.time() < deadline:
        if history.exists() and len(history.read_text().splitlines()) - 1 >= epochs:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=180)[1]
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


def test_sigterm_at_several_epochs_and_a_resume_after_each_give_the_uninterrupted_logits(tiny_sperm, tmp_path):
    """Review reliability-v0.3, "not run": SIGTERM at several points (after epochs 2 and 5), a
    resume after each, then the run to its end: the same test logits as without any stop."""
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "resnetv2_tiny", "--fold", "1"]
    common += ["--epochs", "8", "--early-stopping", "20"]
    full = run_train(*common, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path / "cut" / "resnetv2_tiny" / "fold1"
    train = [sys.executable, "train.py", *common, "--out", str(tmp_path / "cut"), "--resume", "auto"]
    for epochs in (2, 5):
        stopped = signal_after_epochs(train, cut / "history.csv", epochs)
        assert stopped.returncode == cli.PREEMPTED_STATUS, stopped.stderr[-2000:]
        assert "stopped by SIGTERM" in stopped.stderr and not (cut / "test_logits.npz").exists()
        assert not (cut / ".spermfuse.lock").exists()  # the lock went with the process
    finished = run_train(*common, "--out", str(tmp_path / "cut"), "--resume", "auto")
    assert finished.returncode == 0, finished.stderr[-2000:]
    expected = np.load(tmp_path / "full" / "resnetv2_tiny" / "fold1" / "test_logits.npz")["logits"]
    assert np.array_equal(np.load(cut / "test_logits.npz")["logits"], expected)
