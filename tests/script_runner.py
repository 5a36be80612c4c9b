"""The repository's scripts run as a user runs them, each in a process of its own, without paying
for the interpreter's start each time.

``python fuse.py ...`` spends about 3 of its first seconds importing PyTorch, SciPy and the
library, and the suite runs the scripts a few hundred times. Here each run is a process forked
from a server that imported them once (multiprocessing's forkserver, one per test worker): the
script then runs as ``__main__`` with its own ``sys.argv``, working folder, environment (the
test's, as a subprocess inherits it), standard output and error, exit status and exit handlers,
as under ``python SCRIPT``.

What a forked process cannot show still starts a fresh interpreter (:func:`run_script` with
``fresh=True``, or ``subprocess`` directly): an environment read when a library loads (such as
``OMP_NUM_THREADS``), what a script imports, or a process that gets signals.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
# What the scripts import before their main() runs; spermfuse's modules from the scripts'
# own imports (the server imports each script as a module: its __main__ block does not run).
PRELOADED = [
    "torch",
    "numpy",
    "scipy.optimize",
    "sklearn.metrics",
    "PIL.Image",
    "train",
    "fuse",
    "evaluate",
    "benchmark",
]

_server = multiprocessing.get_context("forkserver")
_server.set_forkserver_preload(PRELOADED)


def _exit_status(code: object) -> int:
    """The status ``python`` exits with for ``sys.exit(code)`` (a message goes to standard error)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_as_main(script: str, flags: list[str], cwd: str, environment: dict, output: str, error: str) -> None:
    """In the forked process: become ``python SCRIPT FLAGS`` run from ``cwd``, then exit."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    for descriptor, path in ((1, output), (2, error)):
        file = os.open(path, os.O_WRONLY)
        os.dup2(file, descriptor)
        os.close(file)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    sys.stdin = open(os.devnull, encoding="utf-8")
    sys.argv = [script, *flags]
    sys.path.insert(0, str((Path(cwd) / script).resolve().parent))
    try:
        runpy.run_path(os.path.abspath(script), run_name="__main__")  # python's __file__ is absolute
        status = 0
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:  # what python prints for an uncaught exception, and its status
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_script(
    script: str, *flags: str, cwd: Path = REPOSITORY, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """``python SCRIPT FLAGS`` run from ``cwd`` (module docstring); its output is captured as
    text. ``fresh=True`` starts a fresh interpreter instead."""
    command = [sys.executable, script, *flags]
    if fresh:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory() as folder:
        output, error = Path(folder) / "stdout", Path(folder) / "stderr"
        output.touch()
        error.touch()
        process = _server.Process(
            target=_run_as_main, args=(script, list(flags), str(cwd), dict(os.environ), str(output), str(error))
        )
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, output.read_text(), error.read_text())
        return subprocess.CompletedProcess(command, process.exitcode, output.read_text(), error.read_text())
