"""The command lines: no abbreviations, a "did you mean" for a mistyped flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

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
    result = run_script(script, *flags)
    assert result.returncode == 2
    assert hint in result.stderr and len(result.stderr.strip().splitlines()) == 2  # the error and the --help pointer


def test_a_bad_value_of_a_real_flag_suggests_no_other_flag():
    result = run_script("train.py", "--cal-fraction", "abc")
    assert result.returncode == 2 and "invalid float value: 'abc'" in result.stderr
    assert "did you mean" not in result.stderr


def test_the_demo_script_prints_its_usage():
    result = subprocess.run(["bash", "demo.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--preset" in result.stdout and "--data" in result.stdout


def test_the_cpu_demo_without_imagenet_weights_says_what_to_give_and_trains_nothing(tmp_path):
    command = [
        "bash",
        "demo.sh",
        "--preset",
        "cpu",
        "--out",
        str(tmp_path / "runs"),
        "--weights1",
        str(tmp_path / "a.pth"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and not (tmp_path / "runs").exists()
    (line,) = result.stderr.strip().splitlines()
    assert "none were given for tv:efficientnet_b0" in line and "--pretrained" in line and "--weights2 FILE" in line


def test_the_cpu_demo_dry_run_lists_both_members_runs_with_a_time_and_writes_nothing(tiny_sperm, tmp_path):
    command = [
        "bash",
        "demo.sh",
        "--preset",
        "cpu",
        "--data",
        str(tiny_sperm),
        "--out",
        str(tmp_path / "runs"),
        "--dry-run",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable}
    )
    assert result.returncode == 0, result.stderr
    for member in ("tv:mobilenet_v3_large", "tv:efficientnet_b0"):
        rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {member} |")]
        assert len(rows) == 5 and all(" | 128 | 20 | new | about " in row for row in rows)
    assert not (tmp_path / "runs").exists()


def test_config_replays_a_run_and_the_command_line_overrides_it_and_says_so(tiny_sperm, tmp_path):
    import json

    first = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--fold", "1"]
    assert run_script("train.py", *first, "--out", str(tmp_path / "a"), "--lr", "0.002").returncode == 0
    recorded = tmp_path / "a" / "efficientnet_tiny" / "fold1" / "config.json"
    replay = [
        "train.py",
        "--config",
        str(recorded),
        "--out",
        str(tmp_path / "b"),
        "--epochs",
        "2",
        "--fold",
        "1",
    ]
    result = run_script(*replay)
    assert result.returncode == 0, result.stderr
    assert "the command line overrides --out, --epochs" in result.stderr
    before, after = (
        json.loads(p.read_text()) for p in (recorded, tmp_path / "b" / "efficientnet_tiny" / "fold1" / "config.json")
    )
    changed = {key for key in before if before[key] != after.get(key) and key != "environment"}
    assert changed == {"out", "epochs"} and after["lr"] == 0.002 and after["img_size"] == 32


def test_a_prediction_loads_neither_scipys_optimisers_and_statistics_nor_scikit_learn(
    demo_output, tiny_sperm, tmp_path
):
    """They take about a second to load (spermfuse/core/metrics.py) and a prediction needs none of them."""
    models = ["--runs", str(demo_output / "runs"), "--models", "efficientnet_tiny", "resnetv2_tiny"]
    flags = ["--predict", str(tiny_sperm / "Normal"), "--output", str(tmp_path / "p.csv"), *models]
    probe = (
        "import sys, fuse; status = fuse.main(sys.argv[1:]); "
        "print(sorted(m for m in ('scipy.optimize', 'scipy.stats', 'sklearn') if m in sys.modules)); sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *flags], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
