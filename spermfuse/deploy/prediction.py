"""``fuse.py --predict``: the fused models on new images, and what it writes beside the CSV.

A :class:`PredictionRequest` (its flags declared on its fields) names the images, the fused
runs and the outputs; :func:`predict` checks every output before any model loads, computes the
fused probabilities once, then writes the predictions CSV, with ``--samples`` the per-sample
report (``sample_report.py``) and with ``--explain`` a Grad-CAM figure per image. An output is
never an input, and a folder is replaced only when this program wrote it (``output_folder.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.conformal import SetCalibrator
from ..core.errors import FusionError
from ..core.files import atomic_write_text, csv_text
from ..flags import setting
from ..runtime import DEVICE_HELP, resolve_device
from ..store import fusion_folder, run_folder
from ..store.output_folder import check_replaceable, check_writable, refuse_overlap, write_folder
from ..store.run_folder import load_fold_members
from . import deployed, inference, sample_report

log = logging.getLogger(__name__)


@dataclass
class PredictionRequest:
    """What ``fuse.py --predict IMAGES`` classifies with which runs, and where the results go."""

    images: Path  # a folder, one image, or a glob pattern such as 'cells/*.png'
    runs: Path | None  # None with ``deployed``: the export folder is the model
    fusion: Path | None  # the fusion folder (fusion.json)
    models: list[str] | None = None  # the model folders under ``runs``; None: every trained one
    fold: str = "all"
    overwrite: bool = False
    output: Path = setting(Path("predictions.csv"), "--predict: the CSV to write", "prediction")
    deployed: Path | None = setting(
        None,
        "--predict: run the model that fuse.py --export wrote to DIR (on the CPU, the rules in its "
        "model.json) instead of the runs' members; with --precision int8 or bf16 that model and its own rules",
        "prediction",
        metavar="DIR",
    )
    precision: str = "fp32"  # with ``deployed``: which of the folder's models (fuse.py's --precision)
    device: str = setting("auto", f"--predict: {DEVICE_HELP}", "prediction")
    skip_bad: bool = setting(
        False, "--predict: skip unreadable images and list them in the CSV instead of stopping", "prediction"
    )
    explain: Path | None = setting(
        None,
        "--predict: also a Grad-CAM figure per image (each member's map and the fused map) and DIR/explanations.csv",
        "prediction",
        metavar="DIR",
    )
    samples: bool = setting(
        False,
        "--predict --fold K: each subfolder of FOLDER is one sample (patient); writes samples.csv beside --output "
        f"and a page per sample in {sample_report.REPORTS_FOLDER}/: % normal forms and defect groups, corrected "
        "for the pair's errors",
        "prediction",
    )
    sample_groups: Path | None = setting(
        None,
        "--samples: a JSON object class -> group for the roll-up (default for sperm18's classes: head, neck, tail, "
        "normal)",
        "samples",
        metavar="FILE.json",
    )

    @property
    def reports_folder(self) -> Path:
        """Where --samples writes the per-sample pages: beside the CSV."""
        return self.output.parent / sample_report.REPORTS_FOLDER


def input_folders(runs: Path, models: list[str] | None, fusion: Path, images: Path | None = None) -> dict[str, Path]:
    """The inputs of --predict and --export, by flag: no output may be, lie in or contain one."""
    names = models or run_folder.trained_models(runs)
    inputs = {f"--models {name}": runs / name for name in names} | {"--out": fusion}
    return inputs if images is None else inputs | {"--predict": images_input(images)}


def images_input(images: Path) -> Path:
    """What --predict reads: a folder or a file itself; a glob pattern stands for the folder of its matches."""
    return inference.prediction_inputs(images)[0] if inference.is_pattern(images) else images


def request_inputs(request: PredictionRequest) -> dict[str, Path]:
    """The request's inputs by flag: the runs' models and fusion, or the export folder; and the images."""
    if request.deployed is None:
        return input_folders(request.runs, request.models, request.fusion, request.images)
    return {"--deployed": request.deployed, "--predict": images_input(request.images)}


def check_outputs(request: PredictionRequest) -> None:
    """--output, --explain and --samples: never an input, never a folder for the CSV; all before any work."""
    inputs = request_inputs(request)
    refuse_overlap(request.output, "--output", inputs)  # e.g. a CSV inside the fusion folder would break its manifest
    if request.output.is_dir():
        raise FusionError(
            f"--output {request.output}: is a folder; give the CSV file to write, e.g. {request.output / 'predictions.csv'}"
        )
    check_writable(request.output, "--output")
    if request.explain is not None:
        refuse_overlap(request.explain, "--explain", inputs)
        check_replaceable(request.explain, "--explain", request.overwrite, inference.explanation_files)
    if request.samples:
        refuse_overlap(request.reports_folder, "--samples", inputs)
        check_replaceable(request.reports_folder, "--samples", request.overwrite, sample_report.report_files)


@dataclass(frozen=True)
class Inputs:
    """The images --predict classifies: their root (the CSV names them relative to it), the usable
    ones, and the unusable ones with why (listed with --skip-bad)."""

    root: Path
    images: list[Path]
    bad: list[tuple[Path, str]]


@dataclass(frozen=True)
class Predicted:
    """What one --predict computed: the images, their fused probabilities and classes, the
    certified rules applied, and the predictions CSV's text."""

    images: list[Path]
    probabilities: np.ndarray
    classes: list[str]
    threshold: float | None
    set_calibrator: SetCalibrator | None
    csv: str
    model: str  # what predicted them, for the log

    @classmethod
    def table(
        cls,
        inputs: Inputs,
        probabilities: np.ndarray,
        classes: list[str],
        rules: tuple[float | None, SetCalibrator | None],
        model: str,
    ) -> "Predicted":
        """The prediction of ``inputs`` with its CSV, the certified ``rules`` (referral threshold,
        set calibrator) applied."""
        table = inference.prediction_table(inputs.root, inputs.images, inputs.bad, probabilities, classes, *rules)
        return cls(inputs.images, probabilities, classes, *rules, csv_text(*table), model)


def write_samples(request: PredictionRequest, held_out, samples, predicted: Predicted, provenance) -> None:
    """--samples: every sample's estimates first, then the per-sample pages (a unit folder) with
    ``predictions.sha256``, the digests of the predictions CSV and of samples.csv it goes with,
    then samples.csv and the predictions beside it. A kill between those writes leaves files
    whose digests differ from the record (``sha256sum -c`` in the folder says which), never a
    silent mix of two runs."""
    chosen, confusion = held_out
    sample_report.estimate_samples(samples, predicted.probabilities, confusion, chosen)
    table = csv_text(*sample_report.samples_table(samples, chosen))
    samples_csv = request.output.parent / sample_report.SAMPLES_CSV
    record = "".join(
        f"{hashlib.sha256(text.encode()).hexdigest()}  {os.path.relpath(path, request.reports_folder)}\n"
        for text, path in ((predicted.csv, request.output), (table, samples_csv))
    )
    with write_folder(request.reports_folder, "--samples", request.overwrite, sample_report.report_files) as folder:
        sample_report.write_sample_pages(
            folder,
            samples,
            predicted.images,
            predicted.probabilities,
            predicted.classes,
            chosen,
            provenance,
            predicted.threshold,
            predicted.set_calibrator,
        )
        atomic_write_text(folder / sample_report.PREDICTIONS_DIGEST, record)
    atomic_write_text(samples_csv, table)
    atomic_write_text(request.output, predicted.csv)
    log.info(
        "wrote %s and %s: %d samples (%s, %s)",
        samples_csv,
        request.reports_folder,
        len(samples),
        chosen.method,
        confusion.source,
    )


def predict_with_runs(
    request: PredictionRequest, sample_options: sample_report.SampleSettings, inputs: Inputs, device: torch.device
) -> tuple:
    """The runs' fused members on ``images``: (what was predicted, --samples' held-out confusion or
    None, the samples' provenance or None, what --explain needs: members, names, weights, device)."""
    settings = fusion_folder.read_fusion_settings(request.fusion)
    folds = settings.chosen_folds(request.fold)
    settings.check_inputs(request.runs, folds)
    held_out = (  # checked before any model loads
        sample_report.sample_request(request.runs, settings, folds, sample_options, request.sample_groups)
        if request.samples
        else None
    )
    threshold, set_calibrator = settings.prediction_threshold(folds), settings.prediction_sets(folds)  # --fold K
    members = load_fold_members(request.runs, settings.models, folds, device)
    weights = settings.prediction_weights(folds)
    probabilities = inference.fused_probabilities(inputs.images, members, weights, device)
    shown = "; ".join(f"fold {k}: " + ", ".join(f"{w:.3f}" for w in ws) for k, ws in zip(folds, weights))
    model = f"models {settings.models}, effective weights (w / T) {shown}"
    rules = (threshold, set_calibrator)
    predicted = Predicted.table(inputs, probabilities, members[0][0].classes, rules, model)
    provenance = (
        sample_report.Provenance(
            settings.models, folds[0], request.fusion / run_folder.FUSION_JSON, held_out[1].source, len(inputs.bad)
        )
        if held_out is not None
        else None
    )
    return predicted, held_out, provenance, (members, settings.models, weights, device)


def predict_deployed(request: PredictionRequest, sample_options: sample_report.SampleSettings, inputs: Inputs) -> tuple:
    """The export folder's model on ``images`` (deployed.py): (what was predicted, --samples'
    held-out confusion or None, the samples' provenance or None)."""
    model = deployed.read_deployed(request.deployed, request.precision)
    held_out = deployed.sample_request(model, sample_options, request.sample_groups) if request.samples else None
    probabilities = deployed.deployed_probabilities(model, inputs.images)
    shown = f"{model.file} ({model.precision}, {deployed.RUNTIMES[model.precision]}; models {model.models}, folds {model.folds})"
    rules = (model.threshold, model.set_calibrator)
    predicted = Predicted.table(inputs, probabilities, model.classes, rules, shown)
    provenance = (
        sample_report.Provenance(
            model.models, model.folds[0], model.folder / "model.json", held_out[1].source, len(inputs.bad), shown
        )
        if held_out is not None
        else None
    )
    return predicted, held_out, provenance


def predict(request: PredictionRequest, sample_options: sample_report.SampleSettings) -> None:
    """Classify the images with the fused models of ``request.fold``, or the exported model of
    ``request.deployed``, and write every output asked for."""
    device = resolve_device(request.device) if request.deployed is None else None  # a bad --device first
    check_outputs(request)
    root, listed = inference.prediction_inputs(request.images)
    images, bad = inference.usable_images(root, request.skip_bad, listed)
    samples = sample_report.split_samples(root, images) if request.samples else None
    inputs = Inputs(root, images, bad)
    if request.deployed is not None:
        predicted, held_out, provenance = predict_deployed(request, sample_options, inputs)
    else:
        predicted, held_out, provenance, explained = predict_with_runs(request, sample_options, inputs, device)
    if held_out is not None:  # the samples and the predictions they come from, as one record
        write_samples(request, held_out, samples, predicted, provenance)
    else:
        atomic_write_text(request.output, predicted.csv)
    if request.explain is not None:  # fuse.py refuses --explain with --deployed: Grad-CAM needs the members
        with write_folder(request.explain, "--explain", request.overwrite, inference.explanation_files) as folder:
            inference.write_explanations(root, folder, images, *explained)
        log.info(
            "wrote %s: a Grad-CAM figure per image (each member's and their fusion's) and explanations.csv",
            request.explain,
        )
    log.info(
        "wrote %s: %d images%s, %s%s",
        request.output,
        len(images),
        f" ({len(bad)} unusable, listed as skipped)" if bad else "",
        predicted.model,
        f", refer below confidence {predicted.threshold:.4f}" if predicted.threshold is not None else "",
    )
