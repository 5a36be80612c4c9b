"""A Slurm batch script for the whole protocol: one array task per (architecture, fold), then the
fusion and the evaluation as a job that starts when every task has finished.

``train.py ... --fold all --slurm-script job.sh`` writes the script (it never submits it); the
user runs ``sbatch job.sh``. Each task runs ``train.py ... --fold K --resume auto``, so a task
that Slurm requeues (preemption, or the ``--signal=USR1@120`` warning before its time limit, on
which train.py saves its position after the step in progress, exits with 75 and asks to be
requeued) continues from the next step.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import ConfigError
from ..core.files import atomic_write_text
from ..core.models import list_models
from ..flags import setting

# train.py flags the script sets per task, dropped from the command it repeats.
PER_TASK_FLAGS = {"--fold", "--arch", "--resume", "--slurm-script", "--fold-parallel"}


@dataclass
class SlurmSettings:
    """The resources of each array task (sbatch's own formats); train.py's ``--slurm-<field>``."""

    time: str = setting("12:00:00", "time limit per task", "slurm")
    mem: str = setting("32G", "memory per task", "slurm")
    cpus: int = setting(8, "CPUs per task", "slurm")
    gpus: int = setting(1, "GPUs per task (0 for CPU nodes)", "slurm")
    partition: str | None = setting(None, "partition (default: the cluster's)", "slurm")
    warning: int = setting(120, "seconds before the time limit that train.py is told to stop cleanly", "slurm")


def command_without(argv: Sequence[str], flags: set[str], prefix: str = "--slurm-") -> list[str]:
    """``argv`` without ``flags`` (and every ``prefix`` flag) and their values: ``--flag=value``,
    or ``--flag`` and the words up to the next flag (none for a bare ``--resume``)."""
    kept, dropping = [], False
    for word in argv:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            dropping = (name in flags or name.startswith(prefix)) and "=" not in word
            if name in flags or name.startswith(prefix):
                continue
        elif dropping:
            continue
        kept.append(word)
    return kept


def _check(settings: SlurmSettings, archs: Sequence[str], folds: Sequence[int]) -> None:
    if not archs or not folds:
        raise ConfigError("--slurm-script: no architecture or fold to train")
    if settings.cpus < 1 or settings.gpus < 0 or settings.warning < 1:
        raise ConfigError("--slurm-cpus/--slurm-gpus/--slurm-warning: give positive counts (GPUs may be 0)")


def batch_script(
    train_argv: Sequence[str],
    archs: Sequence[str],
    folds: Sequence[int],
    runs: str,
    workdir: str,
    python: str,
    scripts: str,
    settings: SlurmSettings,
) -> str:
    """The commented sbatch script (see the module docstring). ``train_argv``: train.py's
    arguments as given (the per-task flags are replaced), run from ``workdir`` (where relative
    paths in them point); ``runs``: the run root (--out); ``scripts``: the folder of train.py."""
    _check(settings, archs, folds)
    tasks = [(arch, fold) for arch in archs for fold in folds]
    repeated = shlex.join(command_without(train_argv, PER_TASK_FLAGS))
    quoted_runs = shlex.quote(runs)
    program = {
        name: f"{shlex.quote(python)} {shlex.quote(f'{scripts}/{name}.py')}" for name in ("train", "fuse", "evaluate")
    }
    evaluate = f"{program['evaluate']} --runs {quoted_runs}"
    fuse = f"{program['fuse']} --grid --select val --runs {quoted_runs} --models {shlex.join(archs)}"
    follow_up = f"{fuse} && {evaluate}" if len(archs) > 1 else evaluate
    directives = [
        f"#SBATCH --job-name=spermfuse-{'-'.join(archs)}",
        f"#SBATCH --array=1-{len(tasks)}",
        f"#SBATCH --time={settings.time}",
        f"#SBATCH --mem={settings.mem}",
        f"#SBATCH --cpus-per-task={settings.cpus}",
    ]
    if settings.gpus:
        directives.append(f"#SBATCH --gpus-per-task={settings.gpus}")
    if settings.partition:
        directives.append(f"#SBATCH --partition={settings.partition}")
    directives += [
        f"#SBATCH --signal=USR1@{settings.warning}   # warn train.py before the time limit: it stops and asks to be requeued",
        "#SBATCH --requeue                # a preempted or requeued task starts again and resumes",
        f"#SBATCH --output={runs}/slurm-%A_%a.out",
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            "# Written by spermfuse's train.py --slurm-script; submit it with:  sbatch THIS_FILE",
            f"# {len(tasks)} array tasks, one per (architecture, fold): {', '.join(f'{a} fold {k}' for a, k in tasks)}.",
            "# Task 1 also submits the fusion and evaluation, to start when every task has succeeded.",
            *directives,
            "",
            "set -euo pipefail",
            f"cd {shlex.quote(workdir)}",
            f"archs=({' '.join(shlex.quote(a) for a, _ in tasks)})",
            f"folds=({' '.join(str(k) for _, k in tasks)})",
            'task="${SLURM_ARRAY_TASK_ID:?submit with sbatch (or set SLURM_ARRAY_TASK_ID to a task number)}"',
            'arch="${archs[$((task - 1))]}"',
            'fold="${folds[$((task - 1))]}"',
            "",
            'if [ "$task" = 1 ] && [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then',
            "  sbatch --dependency=afterok:${SLURM_ARRAY_JOB_ID} --job-name=spermfuse-report "
            f"--time=01:00:00 --mem={settings.mem} --cpus-per-task={settings.cpus} "
            f"--output={runs}/slurm-report-%j.out --wrap {shlex.quote(follow_up)}",
            "fi",
            "",
            "# srun makes the task a job step (signals and accounting); plain bash runs it directly.",
            'launcher=""; if command -v srun >/dev/null 2>&1 && [ -n "${SLURM_JOB_ID:-}" ]; then launcher="srun"; fi',
            f'$launcher {program["train"]} {repeated} --arch "$arch" --fold "$fold" --resume auto',
            "",
        ]
    )


def write_batch_script(
    path: Path,
    train_argv: Sequence[str],
    archs: Sequence[str],
    folds: Sequence[int],
    runs: str,
    scripts: Path,
    settings: SlurmSettings,
) -> None:
    """Write :func:`batch_script` to ``path`` (executable), run from the current folder with this
    Python; the run root is made now, as Slurm writes the tasks' logs there and makes no folders."""
    unknown = [arch for arch in archs if arch not in list_models()]
    if unknown:
        raise ConfigError(f"--slurm-archs {unknown[0]}: unknown; see train.py --list-models")
    script = batch_script(train_argv, archs, folds, str(runs), os.getcwd(), sys.executable, str(scripts), settings)
    Path(runs).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, script)
    Path(path).chmod(0o755)
