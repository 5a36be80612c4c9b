"""train.py --slurm-script (slurm.py): one array task per (architecture, fold), then the report job."""

import os
import subprocess

from conftest import run_train

from spermfuse.training.slurm import PER_TASK_FLAGS, SlurmSettings, batch_script, command_without


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
