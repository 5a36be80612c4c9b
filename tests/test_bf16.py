"""The bf16 deployment (spermfuse/deploy/bf16.py): ``fuse.py --export --precision bf16`` writes a
program traced under bf16 autocast with rules re-certified on its own probabilities, and
``fuse.py --predict --deployed DIR --precision bf16`` runs it."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import calibration_cells, probabilities_of, recertified_rules, run_script, tiny_demo_export

from spermfuse.core.files import read_csv


def fuse(*arguments: str):
    return run_script("fuse.py", *arguments)


@pytest.fixture(scope="module")
def exported(demo_output, tmp_path_factory) -> dict:
    """The tiny demo's pair, fold 2 exported with its bf16 model (conftest.tiny_demo_export)."""
    return tiny_demo_export(demo_output, tmp_path_factory, "bf16")


def bf16_probabilities(deploy: Path, batch: np.ndarray) -> np.ndarray:
    from spermfuse.deploy.bf16 import load_program, program_probabilities

    return program_probabilities(load_program(deploy / "model_bf16.pt2"), batch, bf16=True)


def test_the_bf16_program_runs_in_bf16_and_differs_from_fp32(exported):
    from spermfuse.deploy.bf16 import load_program, program_probabilities

    batch, _ = calibration_cells(exported["runs"])
    fp32 = program_probabilities(load_program(exported["deploy"] / "model.pt2"), batch, bf16=False)
    bf16 = bf16_probabilities(exported["deploy"], batch)
    assert np.allclose(bf16.sum(axis=1), 1.0, atol=1e-3) and 0 < np.abs(bf16 - fp32).max() < 0.05


def test_a_bf16_export_carries_rules_certified_on_its_own_probabilities(exported):
    description = json.loads((exported["deploy"] / "model.json").read_text())
    assert "model_bf16.pt2" in description["files"] and description["bf16"]["calibration"]["split"] == "cal"
    batch, labels = calibration_cells(exported["runs"])
    probabilities = bf16_probabilities(exported["deploy"], batch)
    assert description["bf16"]["decision"] == recertified_rules(description["decision"], probabilities, labels)
    assert "## The bf16 model (model_bf16.pt2)" in (exported["deploy"] / "MODEL_CARD.md").read_text()


def test_predict_deployed_at_bf16_gives_the_programs_probabilities_and_its_own_rules(exported, new_cells, tmp_path):
    from spermfuse.core.transforms import PipelineSpec, from_spec
    from spermfuse.deploy.reduced_precision import letterboxed_batch

    deploy = exported["deploy"]
    result = fuse(
        "--predict",
        str(new_cells),
        "--deployed",
        str(deploy),
        "--precision",
        "bf16",
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "p.csv")
    description = json.loads((deploy / "model.json").read_text())
    pipeline = from_spec(PipelineSpec.from_dict(description["pipeline"], "model.json"))
    images = [new_cells / row["path"] for row in rows]
    expected = bf16_probabilities(deploy, letterboxed_batch(pipeline, images))
    assert np.abs(probabilities_of(rows) - expected).max() <= 1e-5
    threshold = description["bf16"]["decision"]["referral"]["threshold"]
    refer = [row["refer"] == "1" for row in rows]
    assert refer == [threshold is None or float(row["confidence"]) < threshold for row in rows]


def test_a_bf16_model_below_the_agreement_floor_is_refused_and_nothing_is_written(
    exported, tmp_path, monkeypatch, capsys
):
    import dataclasses

    import fuse as fuse_script
    from spermfuse.deploy import reduced_precision

    measured = reduced_precision.compare_on_test_cells

    def below_the_floor(*args):  # the comparison as measured, its agreement set below the default 0.99
        return dataclasses.replace(measured(*args), agreement=0.9)

    monkeypatch.setattr(reduced_precision, "compare_on_test_cells", below_the_floor)
    command = ["--export", str(tmp_path / "deploy"), "--fold", "2", "--precision", "bf16", *exported["models"]]
    assert fuse_script.main(command) == 2
    error = capsys.readouterr().err
    assert "--precision bf16: top-1 agreement with fp32 is 0.9000" in error and "--min-agreement 0.99" in error
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.iterdir())


def test_an_export_without_a_bf16_model_is_refused_naming_the_file_and_the_flag(
    demo_output, tmp_path_factory, new_cells
):
    int8_only = tiny_demo_export(demo_output, tmp_path_factory, "int8")["deploy"]
    missing = fuse("--predict", str(new_cells), "--deployed", str(int8_only), "--precision", "bf16")
    assert missing.returncode != 0
    assert "holds no model_bf16.pt2; export it again with --precision bf16" in missing.stderr
