"""train.py --dry-run (run_plan.py): each run's state and expected time, nothing trained."""

from conftest import run_train


def test_a_dry_run_lists_each_run_with_its_state_and_trains_nothing(tiny_sperm, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--out", str(tmp_path)]
    assert run_train(*common, "--fold", "1").returncode == 0
    result = run_train(*common, "--fold", "all", "--dry-run")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| efficientnet_tiny")]
    assert rows[0].startswith("| efficientnet_tiny | 1 | cpu | 32 | 1 | finished | - |")
    assert "| 2 | cpu | 32 | 1 | new | at most " in rows[1] and " min |" in rows[1]  # timed from fold 1's epoch
    assert not (tmp_path / "efficientnet_tiny" / "fold2").exists()
