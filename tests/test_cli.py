"""The command lines: no abbreviations, a "did you mean" for a mistyped flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "flags", "hint"),
    [
        ("train.py", ["--epoch", "1"], "--epoch: did you mean --epochs?"),
        ("train.py", ["--batchsize", "4"], "--batchsize: did you mean --batch-size?"),
        ("evaluate.py", ["--report", "r"], "--report: did you mean --reports?"),
    ],
)
def test_a_mistyped_or_abbreviated_flag_is_refused_with_a_suggestion(script, flags, hint):
    result = subprocess.run([sys.executable, script, *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert hint in result.stderr and len(result.stderr.strip().splitlines()) == 2  # the error and the --help pointer


def test_the_demo_script_prints_its_usage():
    result = subprocess.run(["bash", "demo.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--preset" in result.stdout and "--data" in result.stdout
