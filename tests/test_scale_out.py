"""Scale-out on a scheduler: the Slurm script, and training that stops on a scheduler's signal
and continues to the same logits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spermfuse import cli
from spermfuse.preemption import STOP_SIGNALS, Preempted, StopRequest
from spermfuse.slurm import PER_TASK_FLAGS, SlurmSettings, batch_script, command_without

ROOT = Path(__file__).resolve().parents[1]


def run_train(*flags: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs
    )


def test_the_repeated_command_drops_the_flags_each_task_sets():
    argv = ["--preset", "tiny", "--fold", "all", "--resume", "--slurm-archs", "a", "b", "--arch=x", "--data", "d"]
    assert command_without(argv, PER_TASK_FLAGS) == ["--preset", "tiny", "--data", "d"]


def test_the_script_has_a_task_per_architecture_and_fold_and_a_dependent_report():
    script = batch_script(["--epochs", "3"], ["m1", "m2"], [1, 2, 3], "runs", "/work", "py", "/src", SlurmSettings())
    assert "#SBATCH --array=1-6" in script and "#SBATCH --signal=USR1@120" in script
    assert "archs=(m1 m1 m1 m2 m2 m2)" in script and "folds=(1 2 3 1 2 3)" in script
    assert "--dependency=afterok:${SLURM_ARRAY_JOB_ID}" in script and "fuse.py --grid" in script
    assert "#SBATCH --gpus-per-task=1" in script
    cpu_only = batch_script([], ["m1"], [1], "runs", "/work", "py", "/src", SlurmSettings(gpus=0))
    assert "gpus-per-task" not in cpu_only and "fuse.py" not in cpu_only  # one model: evaluation only


def test_the_written_script_passes_bash_n_and_its_task_2_trains_exactly_fold_2(tiny_sperm, tmp_path):
    job, runs = tmp_path / "job.sh", tmp_path / "runs"
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--out", str(runs), "--arch", "efficientnet_tiny"]
    written = run_train(*common, "--fold", "all", "--slurm-script", str(job), "--slurm-gpus", "0")
    assert written.returncode == 0, written.stderr
    assert f"sbatch {job}" in written.stderr and not (runs / "efficientnet_tiny").exists()  # written, not run
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"SLURM_ARRAY_TASK_ID": "2"}
    task = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=environment, timeout=300)
    assert task.returncode == 0, task.stderr[-2000:]
    assert sorted(p.name for p in (runs / "efficientnet_tiny").iterdir()) == ["fold2"]
    assert (runs / "efficientnet_tiny" / "fold2" / "test_logits.npz").is_file()


def test_each_resource_flag_reaches_its_sbatch_directive(tmp_path):
    job = tmp_path / "job.sh"
    flags = ["--slurm-time", "2:00:00", "--slurm-mem", "8G", "--slurm-cpus", "3", "--slurm-gpus", "2"]
    flags += ["--slurm-partition", "short", "--slurm-warning", "300"]
    written = run_train("--preset", "tiny", "--out", str(tmp_path / "runs"), "--slurm-script", str(job), *flags)
    assert written.returncode == 0, written.stderr
    directives = [line.split()[1] for line in job.read_text().splitlines() if line.startswith("#SBATCH")]
    for expected in ("--time=2:00:00", "--mem=8G", "--cpus-per-task=3", "--gpus-per-task=2", "--partition=short"):
        assert expected in directives
    assert "--signal=USR1@300" in directives
    assert (job.stat().st_mode & 0o111) and (tmp_path / "runs").is_dir()  # executable; the logs' folder made


def test_an_unknown_architecture_of_the_array_is_refused_in_one_line(tmp_path):
    job = tmp_path / "job.sh"
    result = run_train("--preset", "tiny", "--slurm-script", str(job), "--slurm-archs", "efficientnet_tiny", "resnet99")
    assert result.returncode == 2 and "--slurm-archs resnet99: unknown" in result.stderr
    assert not job.exists()


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
    from spermfuse.files import safe_torch_load

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


def test_training_stopped_by_sigterm_resumes_with_resume_auto_to_the_same_logits(tiny_sperm, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--fold", "1"]
    common += ["--epochs", "20", "--early-stopping", "20"]
    full = run_train(*common, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path / "cut" / "efficientnet_tiny" / "fold1"
    process = subprocess.Popen(
        [sys.executable, "train.py", *common, "--out", str(tmp_path / "cut")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (cut / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == cli.PREEMPTED_STATUS, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and not (cut / "test_logits.npz").exists()
    assert not (cut / ".spermfuse.lock").exists()  # the lock went with the process
    resumed = run_train(*common, "--out", str(tmp_path / "cut"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = np.load(tmp_path / "full" / "efficientnet_tiny" / "fold1" / "test_logits.npz")["logits"]
    assert np.array_equal(np.load(cut / "test_logits.npz")["logits"], expected)


def test_resume_auto_starts_a_run_that_has_no_last_checkpoint(tiny_sperm, tmp_path):
    folders = ["--data", str(tiny_sperm), "--out", str(tmp_path)]
    result = run_train(*"--preset tiny --arch efficientnet_tiny --fold 1 --resume auto".split(), *folders)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "efficientnet_tiny" / "fold1" / "test_logits.npz").is_file()


def test_a_dry_run_lists_each_run_with_its_state_and_trains_nothing(tiny_sperm, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--out", str(tmp_path)]
    assert run_train(*common, "--fold", "1").returncode == 0
    result = run_train(*common, "--fold", "all", "--dry-run")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| efficientnet_tiny")]
    assert rows[0].startswith("| efficientnet_tiny | 1 | cpu | 32 | 1 | finished | - |")
    assert "| 2 | cpu | 32 | 1 | new | <= " in rows[1] and " min |" in rows[1]  # timed from fold 1's epoch
    assert not (tmp_path / "efficientnet_tiny" / "fold2").exists()
