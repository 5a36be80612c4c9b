"""The export folder as the model (spermfuse/deploy/deployed.py, quantize.py): ``fuse.py --export
--precision int8`` and ``fuse.py --predict --deployed DIR [--precision int8] [--samples]``."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import calibration_cells, probabilities_of, recertified_rules, run_script, tiny_demo_export

from spermfuse.core.files import read_csv

ROOT = Path(__file__).resolve().parents[1]

onnxruntime = pytest.importorskip("onnxruntime")  # the optional export extra (requirements-dev installs it)


def fuse(*arguments: str) -> subprocess.CompletedProcess:
    return run_script("fuse.py", *arguments)


@pytest.fixture(scope="module")
def exported(demo_output, tmp_path_factory) -> dict:
    """The tiny demo's pair, fold 2 exported with its int8 model (conftest.tiny_demo_export)."""
    return tiny_demo_export(demo_output, tmp_path_factory, "int8")


def int8_probabilities(deploy: Path, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(deploy / "model_int8.onnx"))
    return session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float64)


def test_an_int8_model_below_the_agreement_floor_is_refused_and_nothing_is_written(
    exported, tmp_path, monkeypatch, capsys
):
    import dataclasses
    import shutil

    import fuse as fuse_script
    from spermfuse.deploy import quantize, reduced_precision

    measured = reduced_precision.compare_on_test_cells

    def below_the_floor(*args):  # the comparison as measured, its agreement set below the default 0.99
        return dataclasses.replace(measured(*args), agreement=0.9)

    # The guard is tested here, not the quantizer (the fixture's export runs it): a minute less.
    def fp32_as_int8(fp32_path, int8_path, *args, **kwargs):
        shutil.copyfile(fp32_path, int8_path)
        return quantize.MixedPrecision(0, [], 0, [], None)

    monkeypatch.setattr(reduced_precision, "compare_on_test_cells", below_the_floor)
    monkeypatch.setattr(quantize, "quantize_int8", fp32_as_int8)
    command = ["--export", str(tmp_path / "deploy"), "--fold", "2", "--precision", "int8", *exported["models"]]
    assert fuse_script.main(command) == 2
    error = capsys.readouterr().err
    assert "agreement with fp32 is 0.9000" in error and "--min-agreement 0.99" in error
    assert not (tmp_path / "deploy").exists() and not list(tmp_path.iterdir())
    assert fuse_script.main([*command, "--force-precision"]) == 0
    assert (
        json.loads((tmp_path / "deploy" / "model.json").read_text())["int8"]["test"]["top1_agreement_with_fp32"] == 0.9
    )


def test_an_int8_export_carries_rules_certified_on_its_own_probabilities(exported):
    deploy = exported["deploy"]
    description = json.loads((deploy / "model.json").read_text())
    assert "model_int8.onnx" in description["files"] and description["int8"]["calibration"]["split"] == "cal"
    batch, labels = calibration_cells(exported["runs"])
    probabilities = int8_probabilities(deploy, batch)
    fp32 = description["decision"]
    assert description["int8"]["decision"] == recertified_rules(fp32, probabilities, labels)
    assert description["int8"]["decision"] != fp32  # a different model, different rules
    assert "## The int8 model (model_int8.onnx)" in (deploy / "MODEL_CARD.md").read_text()


def test_the_deployed_fp32_model_predicts_what_the_runs_predict(exported, new_cells, tmp_path):
    with_runs = fuse(
        "--predict", str(new_cells), "--fold", "2", "--output", str(tmp_path / "runs.csv"), *exported["models"]
    )
    assert with_runs.returncode == 0, with_runs.stderr
    alone = fuse(
        "--predict", str(new_cells), "--deployed", str(exported["deploy"]), "--output", str(tmp_path / "d.csv")
    )
    assert alone.returncode == 0, alone.stderr
    expected, found = read_csv(tmp_path / "runs.csv"), read_csv(tmp_path / "d.csv")
    assert [r["path"] for r in found] == [r["path"] for r in expected]
    assert [(r["predicted"], r["refer"], r["set"]) for r in found] == [
        (r["predicted"], r["refer"], r["set"]) for r in expected
    ]
    assert np.abs(probabilities_of(found) - probabilities_of(expected)).max() <= 1e-5


def test_the_int8_model_quantizes_every_convolution_but_those_model_json_keeps_in_fp32(exported):
    onnx = pytest.importorskip("onnx")
    from spermfuse.deploy.quantize import convolutions_kept_fp32

    by_rule = set(convolutions_kept_fp32(onnx.load(exported["deploy"] / "model.onnx")))
    chosen = json.loads((exported["deploy"] / "model.json").read_text())["int8"]["fp32_convolutions"]
    kept = set(chosen["kept_fp32"])
    model = onnx.load(exported["deploy"] / "model_int8.onnx")
    producer = {output: node.op_type for node in model.graph.node for output in node.output}
    quantized = {node.name for node in model.graph.node if node.op_type == "Conv" and node.input[1] in producer}
    convolutions = {node.name for node in model.graph.node if node.op_type == "Conv"}
    # Both members' stems and the squeeze-and-excitation pairs of efficientnet_tiny's blocks, then
    # the most sensitive ones the search added.
    assert len(by_rule) >= 4 and by_rule <= kept < convolutions and chosen["kept_by_rule"] == len(by_rule)
    assert len(kept) - len(by_rule) == chosen["search"][-1][0] and chosen["convolutions"] == len(convolutions)
    assert quantized == convolutions - kept


def test_the_agreement_the_search_stopped_at_is_that_of_the_written_int8_model(exported):
    from spermfuse.deploy.quantize import cpu_session, onnx_probabilities, orientations, top1_agreement

    deploy = exported["deploy"]
    chosen = json.loads((deploy / "model.json").read_text())["int8"]["fp32_convolutions"]
    search, target = chosen["search"], chosen["target_agreement"]
    oriented = orientations(calibration_cells(exported["runs"])[0])
    reference = onnx_probabilities(cpu_session(deploy / "model.onnx"), oriented)
    # Kept convolutions beyond the rule double from one step to the next, starting from none.
    assert [step[0] for step in search] == [0] + [2**i for i in range(len(search) - 1)]
    assert top1_agreement(cpu_session(deploy / "model_int8.onnx"), oriented, reference) == search[-1][1]
    # The tiny pair is barely trained, so the search runs; it stops at the first step that reaches the target.
    assert len(search) > 1 and all(agreement < target for _, agreement in search[:-1])
    assert search[-1][1] >= target or 2 * search[-1][0] >= chosen["convolutions"] - chosen["kept_by_rule"]


def test_a_clean_process_runs_the_int8_model_as_predict_deployed_does(exported, new_cells, tmp_path):
    from test_end_to_end import readme_client

    deploy, images = exported["deploy"], sorted(new_cells.iterdir())
    predicted = fuse(
        "--predict",
        str(new_cells),
        "--deployed",
        str(deploy),
        "--precision",
        "int8",
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "model_int8.onnx" in predicted.stderr  # the log says which model predicted
    client = tmp_path / "client.py"
    client.write_text(
        "import importlib.util\nassert importlib.util.find_spec('spermfuse') is None\n"
        + readme_client()
        + "\nassert not {'torch', 'spermfuse'} & set(sys.modules)  # onnxruntime, numpy and Pillow only\n"
        + f"np.save({str(tmp_path / 'p.npy')!r}, probabilities)\n"
    )
    isolated = subprocess.run(
        [sys.executable, "-I", str(client), str(deploy), "--int8", *map(str, images)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert isolated.returncode == 0, isolated.stderr
    rows = read_csv(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == [p.name for p in images]
    assert np.abs(np.load(tmp_path / "p.npy") - probabilities_of(rows)).max() <= 1e-5
    printed = [line.split() for line in isolated.stdout.splitlines()]
    refer = {"1": "refer", "0": "accept"}
    assert [(line[1], line[3], line[4]) for line in printed] == [
        (r["predicted"], refer[r["refer"]], r["set"]) for r in rows
    ]


def test_samples_at_int8_are_corrected_by_the_int8_models_own_held_out_confusion(exported, tiny_sperm, tmp_path):
    from spermfuse.core.files import safe_np_load
    from spermfuse.deploy import deployed, sample_report

    deploy = exported["deploy"]
    held_out = safe_np_load(deploy / deployed.HELD_OUT_FILE)
    batch, labels = calibration_cells(exported["runs"])  # fold 2 has calibration cells: those are held out
    assert np.array_equal(held_out["labels"], labels)
    assert np.abs(held_out["logits_int8"] - np.log(int8_probabilities(deploy, batch))).max() <= 1e-5
    model = deployed.read_deployed(deploy, "int8")
    options = sample_report.SampleSettings(method="cc")
    _, confusion = deployed.sample_request(model, options)
    expected = np.zeros_like(confusion.confusion)
    np.add.at(expected, (labels, held_out["logits_int8"].argmax(axis=1)), 1)
    assert np.array_equal(confusion.confusion, expected) and "int8" in confusion.source

    samples = tmp_path / "samples"
    for sample, name in (("patientA", "Normal"), ("patientB", "PinHead")):
        shutil.copytree(tiny_sperm / name, samples / sample)
    output = tmp_path / "out" / "predictions.csv"
    command = ["--predict", str(samples), "--deployed", str(deploy), "--precision", "int8", "--samples"]
    result = fuse(*command, "--sample-method", "cc", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert [r["sample"] for r in read_csv(output.parent / "samples.csv")] == ["patientA", "patientB"]
    page = (output.parent / "sample_reports" / "sample_patientA.md").read_text()
    assert "model_int8.onnx" in page and "through the int8 model" in page


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fold", "2"], "--fold does not apply to --deployed"),
        (["--explain", "why"], "--explain does not apply to --deployed"),
        (["--min-agreement", "0.5"], "--min-agreement does not apply to --deployed"),
    ],
)
def test_deployed_refuses_the_runs_flags_in_one_line(exported, new_cells, tmp_path, extra, message):
    result = fuse("--predict", str(new_cells), "--deployed", str(exported["deploy"]), *extra)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_precision_without_an_export_or_a_deployed_model_is_refused(exported, new_cells):
    result = fuse("--predict", str(new_cells), "--precision", "int8", *exported["models"])
    assert result.returncode != 0 and "--precision refines --export DIR" in result.stderr


def test_a_deployed_folder_without_the_asked_model_or_with_a_changed_file_is_refused(exported, new_cells, tmp_path):
    fp32_only = tmp_path / "fp32"
    assert fuse("--export", str(fp32_only), "--fold", "2", *exported["models"]).returncode == 0
    missing = fuse("--predict", str(new_cells), "--deployed", str(fp32_only), "--precision", "int8")
    assert missing.returncode != 0 and "holds no model_int8.onnx" in missing.stderr
    changed = shutil.copytree(exported["deploy"], tmp_path / "changed")
    (changed / "model_int8.onnx").write_bytes((changed / "model_int8.onnx").read_bytes()[:-10])
    refused = fuse("--predict", str(new_cells), "--deployed", str(changed), "--precision", "int8")
    assert refused.returncode != 0 and "changed: model_int8.onnx" in refused.stderr
