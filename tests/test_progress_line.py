"""The terminal lines of the command-line programs: what they show and when they warn."""

import logging

from spermfuse.training.config import preset_config
from spermfuse.training.progress_line import ProgressLine, clock


def test_the_clock_shows_minutes_or_hours():
    assert clock(62) == "1:02" and clock(6300) == "1:45:00"


def test_the_progress_line_tells_fold_epoch_batch_and_the_run_eta(capsys):

    line = ProgressLine(preset_config("demo", fold=2, device="cpu"))
    line.live = True
    line.epoch_done({"epoch": 2})
    line(40, 110, 12.0)
    shown = capsys.readouterr().err
    assert "fold 2/5 · epoch 3/10 · batch 40/110 · 12 img/s · epoch ETA " in shown and "run ETA <= " in shown


def test_a_gpu_sized_run_on_the_cpu_says_how_long_it_will_take_after_its_first_steps(caplog):

    line = ProgressLine(preset_config("paper_a", device="cpu"))
    with caplog.at_level(logging.WARNING):
        for batch in range(1, 8):
            line(batch, 1800, 3.0)
    warnings = [r.getMessage() for r in caplog.records if "on this CPU an epoch takes about" in r.getMessage()]
    assert len(warnings) == 1 and "(100 epochs max)" in warnings[0] and "--preset demo" in warnings[0]
    quiet = ProgressLine(preset_config("demo", device="cpu"))  # 64 px: no warning
    caplog.clear()
    quiet(5, 30, 50.0)
    assert not caplog.records
