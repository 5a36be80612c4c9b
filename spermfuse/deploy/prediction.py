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

from ..core.conformal import SetCalibrator
from ..core.errors import FusionError
from ..core.files import atomic_write_text, csv_text
from ..flags import setting
from ..runtime import DEVICE_HELP, resolve_device
from ..store import fusion_folder, run_folder
from ..store.output_folder import check_replaceable, check_writable, refuse_overlap, write_folder
from ..store.run_folder import load_fold_members
from . import inference, sample_report

log = logging.getLogger(__name__)


@dataclass
class PredictionRequest:
    """What ``fuse.py --predict IMAGES`` classifies with which runs, and where the results go."""

    images: Path  # a folder, one image, or a glob pattern such as 'cells/*.png'
    runs: Path
    fusion: Path  # the fusion folder (fusion.json)
    models: list[str] | None = None  # the model folders under ``runs``; None: every trained one
    fold: str = "all"
    overwrite: bool = False
    output: Path = setting(Path("predictions.csv"), "--predict: the CSV to write", "prediction")
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
    if images is None:
        return inputs
    # a folder or a file is the input itself; a glob pattern stands for the folder of its matches
    given = inference.prediction_inputs(images)[0] if inference.is_pattern(images) else images
    return inputs | {"--predict": given}


def check_outputs(request: PredictionRequest) -> None:
    """--output, --explain and --samples: never an input, never a folder for the CSV; all before any work."""
    inputs = input_folders(request.runs, request.models, request.fusion, request.images)
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
class Predicted:
    """What one --predict computed: the images, their fused probabilities and classes, the
    certified rules applied, and the predictions CSV's text."""

    images: list[Path]
    probabilities: np.ndarray
    classes: list[str]
    threshold: float | None
    set_calibrator: SetCalibrator | None
    csv: str


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


def predict(request: PredictionRequest, sample_options: sample_report.SampleSettings) -> None:
    """Classify the images with the fused models of ``request.fold`` and write every output asked for."""
    device = resolve_device(request.device)
    check_outputs(request)
    root, listed = inference.prediction_inputs(request.images)
    images, bad = inference.usable_images(root, request.skip_bad, listed)
    samples = sample_report.split_samples(root, images) if request.samples else None
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
    probabilities = inference.fused_probabilities(images, members, weights, device)
    classes = members[0][0].classes
    table = inference.prediction_table(root, images, bad, probabilities, classes, threshold, set_calibrator)
    predicted = Predicted(images, probabilities, classes, threshold, set_calibrator, csv_text(*table))
    if held_out is not None:  # the samples and the predictions they come from, as one record
        provenance = sample_report.Provenance(
            settings.models, folds[0], request.fusion / run_folder.FUSION_JSON, held_out[1].source, len(bad)
        )
        write_samples(request, held_out, samples, predicted, provenance)
    else:
        atomic_write_text(request.output, predicted.csv)
    if request.explain is not None:
        with write_folder(request.explain, "--explain", request.overwrite, inference.explanation_files) as folder:
            inference.write_explanations(root, folder, images, members, settings.models, weights, device)
        log.info(
            "wrote %s: a Grad-CAM figure per image (members %s and their fusion) and explanations.csv",
            request.explain,
            settings.models,
        )
    shown = "; ".join(f"fold {k}: " + ", ".join(f"{w:.3f}" for w in ws) for k, ws in zip(folds, weights))
    log.info(
        "wrote %s: %d images%s, models %s, effective weights (w / T) %s%s",
        request.output,
        len(images),
        f" ({len(bad)} unusable, listed as skipped)" if bad else "",
        settings.models,
        shown,
        f", refer below confidence {threshold:.4f}" if threshold is not None else "",
    )
