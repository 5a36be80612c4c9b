"""report.html in a real headless browser: it renders, and every embedded figure loads.

.ci/run installs Chromium (apt, as root) when it is missing; without a browser the test is skipped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_runs
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-widths', "
    "[...document.images].map(image => image.naturalWidth).join(',')));</script>"
)


def headless(*flags: str) -> subprocess.CompletedProcess:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(BROWSER is None, reason="needs Chromium (.ci/run installs it)")
def test_report_html_renders_in_a_browser_with_every_figure_loaded(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    python = [sys.executable]
    assert (
        subprocess.run(python + ["fuse.py", "--grid", "--select", "val", "--runs", str(runs)], cwd=ROOT).returncode == 0
    )
    evaluate = python + ["evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "page"]
    assert subprocess.run(evaluate, cwd=ROOT, capture_output=True).returncode == 0
    page = tmp_path / "r" / "page" / "report.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = headless("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    widths = [int(w) for w in re.search(r'data-widths="([0-9,]*)"', dom).group(1).split(",")]
    assert len(widths) == page.read_text().count("<img") >= 5 and min(widths) > 100  # every image decoded
    assert "test cells of 3 classes" in dom and "sensitivity (recall)" in dom
    shot = tmp_path / "shot.png"
    headless("--window-size=1000,2500", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
    assert colourful > 0.01  # the figures' colours are on the screen, not broken-image icons
