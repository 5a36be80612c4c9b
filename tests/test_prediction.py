"""fuse.py --predict's workflow (prediction.py): every output checked against every input first."""

from __future__ import annotations

import pytest
from conftest import fake_runs

from spermfuse.core.errors import ConfigError, FusionError
from spermfuse.deploy.prediction import PredictionRequest, check_outputs, input_folders


def request(tmp_path, **given) -> PredictionRequest:
    runs = fake_runs(tmp_path / "runs", folds=2, n=12)
    images = tmp_path / "cells"
    images.mkdir(exist_ok=True)
    return PredictionRequest(images, runs, runs / "fusion", **given)


def test_the_inputs_are_every_trained_model_the_fusion_and_the_images(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=2, n=12)
    inputs = input_folders(runs, None, runs / "fusion", tmp_path / "cells")
    assert inputs == {
        "--models modelx": runs / "modelx",
        "--models modely": runs / "modely",
        "--out": runs / "fusion",
        "--predict": tmp_path / "cells",
    }


def test_a_glob_pattern_stands_for_the_folder_of_its_matches(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=2, n=12)
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "a.png").write_bytes(b"")
    inputs = input_folders(runs, ["modelx"], runs / "fusion", tmp_path / "cells" / "*.png")
    assert inputs["--predict"] == tmp_path / "cells" and "--models modely" not in inputs


def test_a_csv_path_that_is_a_folder_is_refused_with_the_file_to_give(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(FusionError, match=f"--output {folder}: is a folder; give the CSV file to write"):
        check_outputs(request(tmp_path, output=folder))


@pytest.mark.parametrize(
    "where, named",
    [("cells", "--predict"), ("runs/modelx/fold1", "--models modelx"), ("runs/fusion", "--out")],
)
def test_the_csv_may_not_lie_inside_any_input(tmp_path, where, named):
    with pytest.raises(ConfigError, match=f"--output .* lies inside or contains {named}"):
        check_outputs(request(tmp_path, output=tmp_path / where / "predictions.csv"))


def test_an_explanation_folder_inside_a_model_is_refused(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=2, n=12)
    with pytest.raises(ConfigError, match="--explain .* lies inside or contains --models modely"):
        check_outputs(request(tmp_path, explain=runs / "modely" / "fold1" / "why"))


def test_the_sample_pages_beside_the_csv_may_not_be_the_images(tmp_path):
    images = tmp_path / "sample_reports"  # the pages' folder name, beside the default CSV
    images.mkdir()
    runs = fake_runs(tmp_path / "runs", folds=2, n=12)
    given = PredictionRequest(images, runs, runs / "fusion", output=tmp_path / "predictions.csv", samples=True)
    with pytest.raises(ConfigError, match="--samples .* lies inside or contains --predict"):
        check_outputs(given)
