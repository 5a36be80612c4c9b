"""docs/FIDELITY.md against the code: every preset setting the fidelity table names is the
preset's value, and every item it must cover is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from spermfuse.training.config import preset_config

TABLE = (Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md").read_text()


def named_settings() -> list[tuple[str, str, object]]:
    """(preset, field, value) of every `preset: key=value, ...` cell of the table."""
    found = []
    for cell in re.findall(r"`(paper_[ab]): ([^`]+)`", TABLE):
        preset, assignments = cell
        for key, value in re.findall(r"(\w+)=((?:\([^)]*\))|'[^']*'|[^,]+)", assignments):
            found.append((preset, key, ast.literal_eval(value.strip())))
    return found


def test_the_table_names_settings_of_both_presets():
    presets = {preset for preset, _, _ in named_settings()}
    assert presets == {"paper_a", "paper_b"} and len(named_settings()) >= 30


@pytest.mark.parametrize(("preset", "key", "value"), named_settings(), ids=lambda v: str(v))
def test_each_setting_the_table_names_is_the_presets(preset, key, value):
    actual = getattr(preset_config(preset), key)
    assert (tuple(actual) if isinstance(actual, (list, tuple)) else actual) == value


@pytest.mark.parametrize(
    "point",
    "ImageNet mean/std,Gaussian noise,rotation,input size,resize filter,drop-connect,"
    "BatchNorm momentum,loss normalisation,aspect ratio,zoom,split".split(","),
)
def test_every_deviation_the_review_named_has_a_row(point):
    assert point.lower() in TABLE.lower()
