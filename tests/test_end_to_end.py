"""The demo pipeline at a tiny size: train both backbones, fuse, evaluate, predict new images."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script
from PIL import Image

from spermfuse.core.files import read_csv
from spermfuse.store.output_folder import write_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_demo_pipeline_end_to_end(tiny_sperm, demo_output, tmp_path):
    runs = demo_output / "runs"
    for arch in ("efficientnet_tiny", "resnetv2_tiny"):
        for fold in (1, 2):
            assert (runs / arch / f"fold{fold}" / "test_logits.npz").is_file()
    fusion = json.loads((runs / "fusion" / "fusion.json").read_text())
    assert fusion["models"] == ["efficientnet_tiny", "resnetv2_tiny"] and len(fusion["weights"]) == 2
    report = json.loads((demo_output / "reports" / "tiny" / "report.json").read_text())
    assert set(report["models"]) == {"efficientnet_tiny", "resnetv2_tiny", "fusion", "fusion_nested", "fusion_val"}
    total = sum(report["models"]["fusion"]["aggregate"]["per_class"][c]["support"] for c in report["classes"])
    assert total == 18 * 6  # every image tested exactly once over the folds
    assert (demo_output / "reports" / "tiny" / "confusion_fusion.png").is_file()

    new_images = tmp_path / "new"
    new_images.mkdir()
    for name, new_name in (
        ("Normal/Normal_00000.png", "normal, 1.png"),
        ("PinHead/PinHead_00001.png", 'pin "head".png'),
    ):
        shutil.copy(tiny_sperm / name, new_images / new_name)
    predict = [
        "fuse.py",
        "--predict",
        str(new_images),
        "--runs",
        str(runs),
        "--models",
        "efficientnet_tiny",
        "resnetv2_tiny",
        "--output",
        str(tmp_path / "predictions.csv"),
    ]
    result = run_script(*predict)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == ["normal, 1.png", 'pin "head".png']  # quoted, one field each
    probabilities = np.array([[float(r[f"p_{c}"]) for c in report["classes"]] for r in rows])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert all(r["predicted"] == report["classes"][int(p.argmax())] for r, p in zip(rows, probabilities))

    fused = shutil.copytree(runs / "fusion", tmp_path / "fusion")  # a copy: the module's other tests use the original
    settings = json.loads((fused / "fusion.json").read_text())
    certificate = {
        "threshold": 0.3,
        "target_accuracy": 0.9,
        "delta": 0.1,
        "method": "sgr",
        "n_calibration": 20,
        "n_accepted": 9,
        "errors": 0,
        "risk_upper_bound": 0.1,
    }
    settings["referral"] = {
        "per_fold": [{"certificate": certificate}, {"certificate": certificate | {"threshold": 0.5}}]
    }  # as --refer-accuracy writes it
    (fused / "fusion.json").write_text(json.dumps(settings))
    write_manifest(fused)  # a hand edit must re-list the folder: readers check it
    refused = run_script(*predict, "--out", str(fused))
    assert (
        refused.returncode == 2 and "certified per fold" in refused.stderr
    )  # --fold all: the average has no calibration cells
    result = run_script(*predict, "--out", str(fused), "--fold", "2")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["refer"] for r in rows] == [
        str(int(float(r["confidence"]) < 0.5)) for r in rows
    ]  # fold 2's certified threshold


def reversed_classes(model_json: Path) -> None:
    spec = json.loads(model_json.read_text())
    model_json.write_text(json.dumps(spec | {"classes": spec["classes"][::-1]}))


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100_000])


def readme_client() -> str:
    readme = (ROOT / "docs" / "PREDICTION.md").read_text()  # the deployment section holds the client
    return "# client.py:" + readme.split("# client.py:", 1)[1].split("```", 1)[0]


def test_exported_model_runs_without_spermfuse_and_matches_predict(tiny_sperm, demo_output, tmp_path):
    from spermfuse.core.fused_model import load_classifier
    from spermfuse.data.images import load_rgb
    from spermfuse.deploy.inference import fused_probabilities
    from spermfuse.store import fusion_folder

    runs = demo_output / "runs"
    export = [
        "fuse.py",
        "--export",
        str(tmp_path / "deploy"),
        "--runs",
        str(runs),
        "--models",
        "efficientnet_tiny",
        "resnetv2_tiny",
    ]
    result = run_script(*export)
    assert result.returncode == 0, result.stderr
    images = [
        tiny_sperm / "Normal" / "Normal_00000.png",
        tiny_sperm / "PinHead" / "PinHead_00003.png",
        tiny_sperm / "ThinNeck" / "ThinNeck_00001.png",
    ]
    client = tmp_path / "client.py"
    client.write_text(
        "import importlib.util\nassert importlib.util.find_spec('spermfuse') is None\n"
        + readme_client()
        + f"\nnp.save({str(tmp_path / 'p.npy')!r}, probabilities)\n"
    )
    isolated = subprocess.run(
        [sys.executable, "-I", str(client), str(tmp_path / "deploy"), *map(str, images)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert isolated.returncode == 0, isolated.stderr
    for name, damage in (("model.json", reversed_classes), ("model.pt2", truncated)):  # review B3, C2
        damaged = shutil.copytree(tmp_path / "deploy", tmp_path / f"damaged-{name}")
        damage(damaged / name)
        refused = subprocess.run(
            [sys.executable, "-I", str(client), str(damaged), str(images[0])],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert (
            refused.stderr.strip()
            == f"error: {damaged}: {name} not as exported (edited, truncated or missing); export it again"
        )
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    members = [[load_classifier(runs / n / f"fold{k}" / "best.pt") for n in settings.models] for k in settings.folds]
    expected = fused_probabilities(images, members, settings.prediction_weights(settings.folds))
    assert np.abs(np.load(tmp_path / "p.npy") - expected).max() <= 1e-5
    onnxruntime = pytest.importorskip("onnxruntime")  # the optional export extra (requirements-dev installs it)
    session = onnxruntime.InferenceSession(str(tmp_path / "deploy" / "model.onnx"))
    pipeline = members[0][0].pipeline
    batch = np.stack(
        [np.asarray(pipeline.geometry(load_rgb(p), np.random.default_rng(0))).transpose(2, 0, 1) for p in images]
    )
    assert np.abs(session.run(None, {session.get_inputs()[0].name: batch})[0] - expected).max() <= 1e-5
    again = run_script(*export)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # an existing export is not replaced silently


def test_a_one_fold_export_carries_the_certified_rules_and_the_readme_client_applies_them_as_predict_does(
    tiny_sperm, demo_output, tmp_path
):
    runs, fused = demo_output / "runs", tmp_path / "fusion"
    models = ["--runs", str(runs), "--models", "efficientnet_tiny", "resnetv2_tiny", "--out", str(fused)]
    promised = run_script(
        "fuse.py", "--grid", "--select", "val", "--refer-accuracy", "0.2", "--sets-alpha", "0.2", *models
    )
    assert promised.returncode == 0, promised.stderr
    new_images = tmp_path / "new"
    new_images.mkdir()
    for index, name in enumerate(
        [
            "Normal/Normal_00000.png",
            "PinHead/PinHead_00003.png",
            "ThinNeck/ThinNeck_00001.png",
            "CurlyTail/CurlyTail_00002.png",
        ]
    ):
        shutil.copy(tiny_sperm / name, new_images / f"cell{index}.png")
    predict = [
        "fuse.py",
        "--predict",
        str(new_images),
        "--fold",
        "2",
        "--output",
        str(tmp_path / "p.csv"),
        *models,
    ]
    assert run_script(*predict).returncode == 0
    export = ["fuse.py", "--export", str(tmp_path / "deploy"), "--fold", "2", *models]
    assert run_script(*export).returncode == 0
    assert set(json.loads((tmp_path / "deploy" / "model.json").read_text())["decision"]) == {
        "referral",
        "prediction_sets",
    }
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    for field in ("## Intended use", "not a diagnostic device", "classes (18)", "95 % Wilson interval", "## Limits"):
        assert field in card
    assert "- referral: " in card and "prediction sets:" in card
    assert "fuse.py --export" in card  # the command that wrote it
    (tmp_path / "client.py").write_text(readme_client())
    images = sorted(new_images.iterdir())[::-1]  # not --predict's order: a cell's set depends on that cell alone
    client = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "client.py"), str(tmp_path / "deploy"), *map(str, images)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert client.returncode == 0, client.stderr
    printed = [line.split(" ") for line in client.stdout.strip().splitlines()]
    expected = {row["path"]: row for row in read_csv(tmp_path / "p.csv")}
    for (path, predicted, _, referral, members), image in zip(printed, images):
        row = expected[image.name]
        assert (
            predicted == row["predicted"]
            and referral == ("refer" if row["refer"] == "1" else "accept")
            and members == row["set"]
        )


def test_explain_writes_a_figure_per_image_and_an_index_that_agrees_with_the_predictions(
    tiny_sperm, demo_output, tmp_path
):
    from PIL import Image

    new_images = tmp_path / "new"
    (new_images / "sub").mkdir(parents=True)
    shutil.copy(tiny_sperm / "Normal/Normal_00000.png", new_images / "normal.png")
    shutil.copy(tiny_sperm / "CurlyTail/CurlyTail_00002.png", new_images / "sub" / "curly.png")
    command = [
        "fuse.py",
        "--predict",
        str(new_images),
        "--runs",
        str(demo_output / "runs"),
        "--models",
        "efficientnet_tiny",
        "resnetv2_tiny",
        "--output",
        str(tmp_path / "predictions.csv"),
        "--explain",
        str(tmp_path / "why"),
    ]
    result = run_script(*command)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "predictions.csv", newline="") as handle:
        predictions = {r["path"]: r for r in csv.DictReader(handle)}
    with open(tmp_path / "why" / "explanations.csv", newline="") as handle:
        explanations = list(csv.DictReader(handle))
    assert [r["path"] for r in explanations] == ["normal.png", "sub/curly.png"]
    for row in explanations:
        assert row["predicted"] == predictions[row["path"]]["predicted"]
        assert abs(float(row["probability"]) - float(predictions[row["path"]]["confidence"])) < 1e-4
        height, width = np.asarray(Image.open(new_images / row["path"])).shape[:2]
        assert 0 <= int(row["peak_row"]) < height and 0 <= int(row["peak_column"]) < width  # in the file's own geometry
        assert Image.open(tmp_path / "why" / row["figure"]).format == "PNG"

    again = run_script(*command)
    assert again.returncode == 2 and "--explain" in again.stderr and "--overwrite" in again.stderr


def test_explain_without_predict_is_one_clear_line(tmp_path):
    result = run_script("fuse.py", "--grid", "--explain", str(tmp_path / "why"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --explain DIR explains predictions: give it with --predict FOLDER"
    ]


def test_evaluate_explain_writes_a_gallery_and_the_pointing_game_against_the_part_masks(
    tiny_sperm, demo_output, tmp_path
):
    from spermfuse import synthetic

    masks = synthetic.generate(
        tmp_path / "masks", "sperm18", seed=42, per_class=6, masks=True
    )  # the tested images, with masks
    command = [
        "evaluate.py",
        "--runs",
        str(demo_output / "runs"),
        "--reports",
        str(tmp_path / "reports"),
        "--name",
        "x",
        "--no-figures",
        "--explain",
        "--masks",
        str(masks),
        "--summary",
        str(tmp_path / "summary.md"),
    ]
    result = run_script(*command)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "x"
    gallery = (out / "gallery.md").read_text()
    assert (
        gallery.count("_correct.png") + gallery.count("_wrong.png") >= 18
    )  # every class has a correct or a wrong image
    for line in [row for row in gallery.splitlines() if row.startswith("|")][2:]:  # the table's rows
        name, kind, _, predicted = [cell.strip() for cell in line.strip("|").split("|")][:4]
        assert (predicted == name) == (kind == "correct"), line
    pointing = json.loads((out / "pointing_game.json").read_text())
    every = {row["group"]: row for row in pointing["rows"] if row["cells"] == "all"}
    assert set(every) == {"head", "neck", "tail", "sperm"}
    assert sum(row["n"] for row in every.values()) == 18 * 6  # every test image once
    for row in every.values():
        assert 0 < row["area_share"] <= 1 and row["ci_low"] <= row["hit_rate"] <= row["ci_high"]
        assert all(0 <= row[key] <= 1 for key in ("centre", "darkest", "untrained", "energy"))
        assert (row["part_switch"] is None) == (row["group"] == "sperm")  # Normal has no part to switch from
    assert pointing["setting"]["input_size"] == 32 and pointing["setting"]["median_radius"] > 0
    curve = json.loads((out / "randomisation.json").read_text())
    assert len(curve["spearman"]) == len(curve["steps"]) and curve["steps"][-1] == "all" and curve["images"] > 0
    assert isinstance(curve["fails"], bool) and (out / "randomisation.png").is_file()
    assert "Pointing game" in (tmp_path / "summary_details.md").read_text()  # the details beside the summary
    assert "| model | accuracy |" in (tmp_path / "summary.md").read_text()  # the headline table


def test_masks_of_other_images_are_refused_naming_the_image(tiny_sperm, demo_output, tmp_path):
    from spermfuse import synthetic

    masks = synthetic.generate(tmp_path / "masks", "sperm18", seed=7, per_class=6, masks=True)
    command = [
        "evaluate.py",
        "--runs",
        str(demo_output / "runs"),
        "--reports",
        str(tmp_path / "reports"),
        "--name",
        "x",
        "--no-figures",
        "--explain",
        "--masks",
        str(masks),
        "--explain-limit",
        "1",
    ]
    result = run_script(*command)
    assert (
        result.returncode == 2
        and "differs from the tested" in result.stderr
        and "gallery" not in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "reports" / "x" / "pointing_game.json").exists()


def test_predict_lists_every_bad_image_and_skip_bad_goes_on_with_one_figure_per_file(
    tiny_sperm, demo_output, tmp_path
):  # review B6, B22
    new_images = tmp_path / "new"
    new_images.mkdir()
    Image.open(tiny_sperm / "Normal/Normal_00000.png").convert("RGB").save(new_images / "cell.jpg")
    shutil.copy(tiny_sperm / "CurlyTail/CurlyTail_00002.png", new_images / "cell.png")
    (new_images / "empty.png").write_bytes(b"")
    (new_images / "fake.tif").write_text("not an image")
    command = [
        "fuse.py",
        "--predict",
        str(new_images),
        "--runs",
        str(demo_output / "runs"),
        "--models",
        "efficientnet_tiny",
        "resnetv2_tiny",
        "--output",
        str(tmp_path / "predictions.csv"),
    ]
    refused = run_script(*command)
    assert (
        refused.returncode == 2
        and "2 of 4 images unusable" in refused.stderr
        and "empty.png" in refused.stderr
        and "fake.tif" in refused.stderr
    )
    assert not (tmp_path / "predictions.csv").exists()
    result = run_script(*command, "--skip-bad", "--explain", str(tmp_path / "why"))
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in read_csv(tmp_path / "predictions.csv")}
    assert rows["empty.png"]["skipped"] == "zero-byte file" and rows["empty.png"]["predicted"] == ""
    assert rows["cell.jpg"]["skipped"] == "" and rows["cell.jpg"]["predicted"]
    figures = sorted(r["figure"] for r in read_csv(tmp_path / "why" / "explanations.csv"))
    assert figures == ["cell.jpg.png", "cell.png.png"] and all((tmp_path / "why" / f).is_file() for f in figures)


def sample_folders(tiny_sperm: Path, root: Path) -> Path:
    """Two samples (patients) of 12 cells each: root/patientA, root/patient B."""
    for sample, classes in (("patientA", ("Normal", "PinHead")), ("patient B", ("CurlyTail", "ThinNeck"))):
        (root / sample).mkdir(parents=True)
        for name in classes:
            for image in sorted((tiny_sperm / name).glob("*.png")):
                shutil.copy(image, root / sample / image.name)
    return root


def samples_command(runs: Path, images: Path, output: Path, *extra: str) -> list[str]:
    models = ["--runs", str(runs), "--models", "efficientnet_tiny", "resnetv2_tiny"]
    return ["fuse.py", "--predict", str(images), "--output", str(output), *models, *extra]


def test_samples_write_a_row_and_a_page_per_sample_with_the_adjusted_fractions(tiny_sperm, demo_output, tmp_path):
    """The tiny demo's 18 calibration cells of fold 1 cannot separate 18 classes (see the next
    test); here they are replaced by a classifier that is always right on them, so the adjusted
    count runs end to end (its interval is then the cells' bootstrap)."""
    from spermfuse.core.logits import load_logits, save_logits

    runs = tmp_path / "runs"
    shutil.copytree(demo_output / "runs", runs)
    for arch in ("efficientnet_tiny", "resnetv2_tiny"):
        path = runs / arch / "fold1" / "cal_logits.npz"
        held_out = load_logits(path)
        right = 6.0 * np.eye(len(held_out.classes))[held_out.labels]
        save_logits(path, right, held_out.labels, held_out.paths, held_out.classes, arch, 1, held_out.split)
    images = sample_folders(tiny_sperm, tmp_path / "samples")
    output = tmp_path / "out" / "predictions.csv"
    result = run_script(*samples_command(runs, images, output, "--fold", "1", "--samples"))
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "out" / "samples.csv")
    assert [(r["sample"], r["cells"], r["method"]) for r in rows] == [
        ("patient B", "12", "acc"),
        ("patientA", "12", "acc"),
    ]
    predictions = read_csv(output)
    for row in rows:
        mine = [p for p in predictions if p["path"].startswith(row["sample"] + "/")]
        counted = 100 * sum(p["predicted"] == "Normal" for p in mine) / len(mine)
        # M is the identity: the adjusted count is the count, inside its interval
        assert float(row["normal_forms_percent"]) == pytest.approx(counted, abs=0.05)
        assert float(row["normal_forms_low"]) <= counted <= float(row["normal_forms_high"])
        assert row["normal_forms_flag"] in ("below", "above", "undetermined")
        assert "fewer than the 200 WHO asks for" in row["warning"]
        assert {f"{g}_percent" for g in ("head", "neck", "tail", "normal")} <= set(row)
        page = tmp_path / "out" / row["page"]
        assert page.is_file() and page.with_suffix(".md").is_file()
        assert f"Sample {row['sample']}" in page.read_text() and "calibration cells" in page.read_text()
    reports = tmp_path / "out" / "sample_reports"
    assert (reports / "sample_patient_B_fractions.png").is_file() and (reports / "manifest.json").is_file()
    # The pages record the predictions and samples.csv they go with (review B8): sha256sum -c checks them,
    # and fails on a predictions file of another run (what a kill between the writes would leave).
    check = ["sha256sum", "-c", "predictions.sha256"]
    assert subprocess.run(check, cwd=reports, capture_output=True, text=True).returncode == 0
    output.write_text(output.read_text().replace("Normal", "PinHead"))
    mixed = subprocess.run(check, cwd=reports, capture_output=True, text=True)
    assert mixed.returncode == 1 and "../predictions.csv: FAILED" in mixed.stdout


def test_samples_refuse_a_confusion_that_cannot_separate_the_classes_before_writing_anything(
    tiny_sperm, demo_output, tmp_path
):
    images = sample_folders(tiny_sperm, tmp_path / "samples")
    output = tmp_path / "out" / "predictions.csv"
    result = run_script(*samples_command(demo_output / "runs", images, output, "--fold", "1", "--samples"))
    assert result.returncode != 0
    assert "cannot tell" in result.stderr and "--estimate-on groups" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--samples"], "give --fold K"),
        (["--samples", "--fold", "1", "--normal-class", "Healthy"], "--normal-class Healthy: not a class"),
        (["--samples", "--fold", "1", "--estimate-on", "groups", "--sample-groups", "missing.json"], "--sample-groups"),
    ],
)
def test_samples_refuse_what_they_cannot_estimate_with_one_line(tiny_sperm, demo_output, tmp_path, extra, message):
    images = sample_folders(tiny_sperm, tmp_path / "samples")
    result = run_script(*samples_command(demo_output / "runs", images, tmp_path / "p.csv", *extra))
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_samples_need_every_image_in_a_sample_folder(tiny_sperm, demo_output, tmp_path):
    images = sample_folders(tiny_sperm, tmp_path / "samples")
    shutil.copy(tiny_sperm / "Normal" / "Normal_00000.png", images / "loose.png")
    result = run_script(*samples_command(demo_output / "runs", images, tmp_path / "p.csv", "--fold", "1", "--samples"))
    assert result.returncode != 0 and "loose.png is not in a sample folder" in result.stderr


def test_predict_takes_one_image_or_a_glob_pattern(tiny_sperm, demo_output, tmp_path):
    models = ["--runs", str(demo_output / "runs"), "--models", "efficientnet_tiny", "resnetv2_tiny"]
    one = tiny_sperm / "Normal" / "Normal_00000.png"
    result = run_script("fuse.py", "--predict", str(one), "--output", str(tmp_path / "one.csv"), *models)
    assert result.returncode == 0, result.stderr
    assert [row["path"] for row in read_csv(tmp_path / "one.csv")] == ["Normal_00000.png"]
    pattern = str(tiny_sperm / "PinHead" / "*.png")
    result = run_script("fuse.py", "--predict", pattern, "--output", str(tmp_path / "glob.csv"), *models)
    assert result.returncode == 0, result.stderr
    names = [row["path"] for row in read_csv(tmp_path / "glob.csv")]
    assert names == sorted(p.name for p in (tiny_sperm / "PinHead").glob("*.png"))
    missing = run_script("fuse.py", "--predict", str(tmp_path / "nothing*.png"), *models)
    assert missing.returncode == 2 and "matches no image" in missing.stderr


class Payload:
    """What a hostile checkpoint carries: unpickling it would create ``marker`` (code run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payloads_in_best_pt_and_last_pt_never_run(demo_output, tiny_sperm, tmp_path):
    """Review reliability-v0.3, "not run": a payload placed in a run's best.pt (read by --predict
    and --export) and last.pt (read by train.py --resume) is refused and its code never runs."""
    import torch

    from spermfuse.core.files import CheckpointError
    from spermfuse.training.config import TrainConfig
    from spermfuse.training.train_state import resumable_checkpoint

    runs = shutil.copytree(demo_output / "runs", tmp_path / "runs")
    marker = tmp_path / "payload-ran"
    run = runs / "efficientnet_tiny" / "fold1"
    torch.save({"model": {}, "payload": Payload(marker)}, run / "best.pt")
    torch.save({"arch": "efficientnet_tiny", "payload": Payload(marker)}, run / "last.pt")
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(tiny_sperm / "Normal" / "Normal_00000.png", images / "cell.png")
    models = ["--runs", str(runs), "--models", "efficientnet_tiny", "resnetv2_tiny", "--fold", "1"]
    commands = (
        ["fuse.py", "--predict", str(images), "--output", str(tmp_path / "p.csv"), *models],
        ["fuse.py", "--export", str(tmp_path / "deploy"), *models],
    )
    for command in commands:
        result = run_script(*command)
        assert result.returncode == 2 and "best.pt" in result.stderr and "Traceback" not in result.stderr, result.stderr
    config = TrainConfig(arch="efficientnet_tiny", out=str(runs), fold=1, resume=True)
    with pytest.raises(CheckpointError, match="last.pt: refused: it holds objects other than tensors"):
        resumable_checkpoint(run, config, [], "")
    assert not marker.exists() and not (tmp_path / "p.csv").exists() and not (tmp_path / "deploy").exists()
    torch.load(run / "best.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
