"""tests/script_runner.py runs a script as ``python SCRIPT`` does: the same arguments, file name,
working folder, environment, output, exit status and exit handlers, from a forked process."""

import pytest
from script_runner import run_script

PROBE = """
import atexit, os, sys
atexit.register(lambda: print("exit handler ran"))
print("argv", sys.argv[1:], "file", __file__, "cwd", os.getcwd(), "probe", os.environ.get("PROBE"))
print("to stderr", file=sys.stderr)
{ending}
"""


@pytest.mark.parametrize(
    "ending", ["pass", "sys.exit(3)", "sys.exit('refused')", "raise ValueError('bad value')", "sys.exit(None)"]
)
def test_a_forked_run_gives_what_a_fresh_interpreter_gives(ending, tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text(PROBE.format(ending=ending))
    monkeypatch.setenv("PROBE", "set by the test")
    forked = run_script("probe.py", "--flag", "a b", cwd=tmp_path)
    fresh = run_script("probe.py", "--flag", "a b", cwd=tmp_path, fresh=True)
    assert forked.returncode == fresh.returncode and forked.stdout == fresh.stdout
    assert "exit handler ran" in forked.stdout and "set by the test" in forked.stdout
    # A traceback names the frames that led to it: the forked run's start adds its own frames.
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert forked.stderr.startswith("to stderr")
