"""train.py --dry-run (run_plan.py): each run's state and expected time, nothing trained."""

from conftest import run_train


def test_a_dry_run_lists_each_run_with_its_state_and_trains_nothing(tiny_sperm, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--out", str(tmp_path)]
    assert run_train(*common, "--fold", "1").returncode == 0
    result = run_train(*common, "--fold", "all", "--dry-run")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| efficientnet_tiny")]
    assert rows[0].startswith("| efficientnet_tiny | 1 | cpu | 32 | 1 | finished | - |")
    assert "| 2 | cpu | 32 | 1 | new | at most " in rows[1] and " min (timed epochs) |" in rows[1]
    assert not (tmp_path / "efficientnet_tiny" / "fold2").exists()


def test_before_any_epoch_the_expected_time_comes_from_a_timed_step_and_counts_both_stages(tiny_sperm, tmp_path):
    common = ["--preset", "cpu", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--out", str(tmp_path)]
    result = run_train(*common, "--img-size", "32", "--freeze-epochs", "2", "--finetune-epochs", "3", "--dry-run")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| efficientnet_tiny")]
    assert row.startswith("| efficientnet_tiny | 1 | cpu | 32 | 5 | new | about ")
    assert row.endswith(" min (a timed training step, without validation and loading) |")
    assert list(tmp_path.iterdir()) == []
