"""The report a lab signs: per sample (patient), % normal forms and defect groups with intervals.

``fuse.py --predict DIR --fold K --samples`` treats each subfolder of DIR as one sample. The
fractions are corrected for the deployed pair's own errors (``quantify.py``) with its confusion
on held-out cells of fold K: the calibration cells (``train.py --cal-fraction``) when the runs
have them, else fold K's test cells. This module owns ``samples.csv`` and the per-sample pages
(``sample_reports/sample_<id>.{md,html}`` and their figures).

Long because it is one path read top to bottom: the held-out confusion, the samples, their
corrected fractions, the table and the pages; its parts are used nowhere else.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import __version__, page
from ..core import fusion
from ..core.calibration import CalibrationError, fit_bias_corrected_temperature
from ..core.conformal import SetCalibrator, predict_sets
from ..core.errors import DataError, FusionError
from ..core.files import atomic_write_text, file_sha256
from ..core.metrics import confusion_counts
from ..core.quantify import (
    METHODS,
    NEEDS_PROBABILITIES,
    SEPARATE_ADVICE,
    WHO_MINIMUM_CELLS,
    WHO_NORMAL_LIMIT,
    FractionEstimate,
    check_confusion,
    class_fractions,
    flag,
    merge_classes,
)
from ..data.images import IMAGE_EXTENSIONS, is_image_file, load_rgb
from ..data.taxonomy import MORPHOLOGY_GROUP
from ..flags import setting
from ..reporting.figures import contact_sheet, plot_fractions
from ..runtime import git_commit
from ..selection import promises
from ..store import fusion_folder
from ..store.fusion_folder import FusionSettings

log = logging.getLogger(__name__)

SAMPLES_CSV = "samples.csv"
REPORTS_FOLDER = "sample_reports"
PREDICTIONS_DIGEST = "predictions.sha256"  # in REPORTS_FOLDER: the predictions CSV and samples.csv it goes with
LEAST_CERTAIN = 12  # cells on a page's contact sheet
LIMITS = (
    "Each cell carries one label; WHO counts a cell with several defects in each defect group, so group "
    "shares here are of cells, not of defects.",
    "The correction assumes the classifier errs on this sample's cells as it did on the held-out cells "
    "(same lab, stain and microscope). For another lab's cells, label a few hundred local cells and "
    "recalibrate before trusting the interval.",
)


@dataclass
class SampleSettings:
    """How ``--samples`` estimates: the quantify method and level, the class of normal forms and
    its reference limit, the class → group map (None: classes only)."""

    method: str = setting(
        "acc",
        "acc adjusts the count by the held-out confusion; cc counts (biased); pcc / em use probabilities",
        "samples",
        option="--sample-method",
        choices=METHODS,
    )
    level: float = setting(0.95, "the intervals' level", "samples", option="--sample-level")
    normal_class: str = setting("Normal", "the class of normal forms", "samples", option="--normal-class")
    normal_limit: float = setting(
        WHO_NORMAL_LIMIT,
        "the reference limit of normal forms the flag compares with (WHO 6th edition)",
        "samples",
        option="--normal-limit",
    )
    groups: dict[str, str] | None = None
    estimate_on: str = setting(
        "classes",
        "groups = estimate the groups' fractions from their merged confusion (when classes are too alike)",
        "samples",
        option="--estimate-on",
        choices=["classes", "groups"],
    )
    n_boot: int = 2000
    seed: int = 0

    @property
    def merge(self) -> bool:
        """Estimate on the groups (their merged confusion) instead of the classes."""
        return self.estimate_on == "groups"

    @property
    def normal_name(self) -> str:
        """The row of normal forms: the class, or its group when estimating on groups."""
        return self.groups[self.normal_class] if self.merge else self.normal_class


@dataclass
class HeldOutConfusion:
    """The deployed pair's confusion on cells it never trained on, where they came from, and
    (for ``pcc``/``em``, which recalibrate on them) their fused logits and labels."""

    confusion: np.ndarray
    classes: list[str]
    source: str
    logits: np.ndarray | None = None
    labels: np.ndarray | None = None
    split: str = ""  # which held-out cells: "cal" or "test"
    paths: np.ndarray | None = None  # the cells' files, relative to the runs' data root


@dataclass
class Sample:
    """One sample's cells (indices into the predicted images) and its estimate."""

    name: str
    page: str  # file stem of its page: sample_<name with unsafe characters replaced>
    cells: list[int]
    estimate: FractionEstimate | None = None
    counted: np.ndarray | None = None  # predicted cells of each estimated class (or group)
    warnings: list[str] = field(default_factory=list)


def held_out_confusion(runs: Path, models: Sequence[str], fold: int, weights: Sequence[float]) -> HeldOutConfusion:
    """Fold ``fold``'s fused predictions (mixed with ``weights``, as ``--predict`` mixes them) on its
    calibration cells, or on its test cells when the runs have no calibration split."""
    for split, words in (("cal", "calibration cells"), ("test", "test cells")):
        try:
            (fused,) = fusion_folder.fused_folds(runs, models, [fold], [weights], split)
        except fusion.FusionError:
            continue
        confusion = confusion_counts(fused.labels, fused.logits.argmax(axis=1), len(fused.classes))
        source = f"fold {fold}'s {len(fused.labels)} held-out {words} ({split}_logits.npz of {', '.join(models)})"
        return HeldOutConfusion(confusion, fused.classes, source, fused.logits, fused.labels, split, fused.paths)
    raise fusion.FusionError(f"--samples: fold {fold} of {', '.join(models)} has no cal_logits.npz or test_logits.npz")


def average_held_out_confusion(
    runs: Path, models: Sequence[str], folds: Sequence[int], weights: Sequence[Sequence[float]]
) -> HeldOutConfusion | None:
    """The average of ``folds``' fused pairs (as ``--predict --fold all`` computes) on the
    calibration holdout they share (``train.py --cal-holdout``); None without one."""
    try:
        average = promises.shared_average(fusion_folder.fused_folds(runs, models, folds, weights, "cal"))
    except fusion.FusionError:
        return None
    if average is None:
        return None  # per-fold calibration cells (--cal-fraction): each fold trained on the others'
    logits, labels = average.logits, average.labels
    confusion = confusion_counts(labels, logits.argmax(axis=1), len(average.classes))
    source = f"the {len(labels)} cells of the calibration holdout shared by folds {list(folds)} (cal_logits.npz of {', '.join(models)})"
    return HeldOutConfusion(confusion, average.classes, source, logits, labels, "cal", average.paths)


def deployed_held_out(runs: Path, fusion_settings: FusionSettings, folds: Sequence[int]) -> HeldOutConfusion:
    """The held-out confusion of the deployed pair of ``folds``: one fold's (:func:`held_out_confusion`)
    or the folds' average on a shared calibration holdout; refused when there is none."""
    weights = fusion_settings.prediction_weights(folds)
    if len(folds) == 1:
        return held_out_confusion(runs, fusion_settings.models, folds[0], weights[0])
    if (held_out := average_held_out_confusion(runs, fusion_settings.models, folds, weights)) is None:
        raise FusionError(
            "--samples: the correction needs the confusion of the deployed model on cells it never trained on; the "
            f"average of the folds has none (each trained on the others' cells): give --fold K, one of "
            f"{fusion_settings.folds}, or train with --cal-holdout F"
        )
    return held_out


def warn_if_tuned_on_test(held_out: HeldOutConfusion, tuned_on_test: bool) -> None:
    """Say so when the confusion's test cells also chose the fusion weight (``--select test``)."""
    if tuned_on_test and held_out.split == "test":
        log.warning(
            "--samples: the confusion comes from test cells that also chose the fusion weight (--select test); "
            "fuse with --select val, or train with --cal-fraction, for a confusion nothing was tuned on"
        )


def sample_request(
    runs: Path,
    fusion_settings: FusionSettings,
    folds: Sequence[int],
    options: SampleSettings,
    groups_file: Path | None = None,
) -> tuple[SampleSettings, HeldOutConfusion]:
    """``--samples``' settings and the held-out confusion of the deployed pair (fold ``folds[0]``),
    checked before any model loads (:func:`sample_settings`)."""
    held_out = deployed_held_out(runs, fusion_settings, folds)
    warn_if_tuned_on_test(held_out, fusion_settings.select == "test")
    return sample_settings(held_out, options, groups_file)


def sample_settings(
    held_out: HeldOutConfusion, options: SampleSettings, groups_file: Path | None = None
) -> tuple[SampleSettings, HeldOutConfusion]:
    """``options`` with the groups from ``groups_file`` (JSON class -> group) or, for sperm18's
    classes, the morphology groups; checked against the held-out confusion's classes."""
    groups = (
        read_group_map(groups_file) if groups_file is not None else default_groups(held_out.classes, MORPHOLOGY_GROUP)
    )
    chosen = replace(options, groups=groups)
    check_sample_settings(chosen, held_out)
    return chosen, held_out


def estimated_space(held_out: HeldOutConfusion, settings: SampleSettings) -> tuple[HeldOutConfusion, np.ndarray]:
    """The confusion on what is estimated (the classes, or their groups with ``merge``) and the
    [classes, estimated] indicator that maps a cell's probabilities into it."""
    if not settings.merge:
        return held_out, np.eye(len(held_out.classes))
    names = list(dict.fromkeys(settings.groups[c] for c in held_out.classes))
    index = [names.index(settings.groups[c]) for c in held_out.classes]
    merged = merge_classes(held_out.confusion, index, len(names))
    merged_source = held_out.source + ", classes merged into groups"
    return HeldOutConfusion(merged, names, merged_source, split=held_out.split), np.eye(len(names))[index]


def read_group_map(path: Path) -> dict[str, str]:
    """``--sample-groups FILE.json``: one JSON object, class name → group name."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"--sample-groups {path}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DataError(f'--sample-groups {path}: give one JSON object of class → group, e.g. {{"Normal": "normal"}}')
    return data


def check_sample_settings(settings: SampleSettings, held_out: HeldOutConfusion) -> None:
    """Everything ``--samples`` can refuse, before any model loads."""
    if settings.normal_class not in held_out.classes:
        raise DataError(
            f"--normal-class {settings.normal_class}: not a class of these models ({', '.join(held_out.classes[:6])}, ...)"
        )
    if not 0.0 < settings.normal_limit < 1.0:
        raise DataError(f"--normal-limit {settings.normal_limit}: give a fraction, e.g. 0.04 for WHO's 4 %")
    if not 0.0 < settings.level < 1.0:
        raise DataError(f"--sample-level {settings.level}: give the intervals' level in (0, 1), e.g. 0.95")
    if settings.groups is not None:
        missing = [c for c in held_out.classes if c not in settings.groups]
        if missing:
            raise DataError(f"--sample-groups: no group for class {', '.join(missing[:3])}; give every class one")
    elif settings.merge:
        raise DataError("--estimate-on groups: needs the groups; give --sample-groups FILE.json (class -> group)")
    estimated, _ = estimated_space(held_out, settings)
    advice = (  # on groups already: estimating on groups is the flag given, not a way out
        "give a --sample-groups that joins them into one group, or --sample-method em"
        if settings.merge
        else SEPARATE_ADVICE
    )
    check_confusion(estimated.confusion, estimated.classes, settings.method, advice)


def split_samples(root: Path, images: Sequence[Path]) -> list[Sample]:
    """Each first-level subfolder of ``root`` is a sample; an image directly in ``root`` is refused,
    and so is a sample folder that would vanish from the report without a word: one with no usable
    image, or a link to a folder (its images are not listed). Files that are not images of a
    supported type are named in their sample's warnings (the cell count is the result)."""
    by_name: dict[str, list[int]] = {}
    for index, path in enumerate(images):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise DataError(
                f"--samples: {path} is not in a sample folder; put each sample's images in its own subfolder "
                f"({root}/<sample>/...)"
            )
        by_name.setdefault(parts[0], []).append(index)
    _refuse_vanishing_folders(root, by_name)
    samples = [
        Sample(name, "sample_" + re.sub(r"[^A-Za-z0-9._-]", "_", name), cells) for name, cells in by_name.items()
    ]
    by_page: dict[str, list[str]] = {}
    for sample in samples:
        by_page.setdefault(sample.page, []).append(sample.name)
    clashing = next((names for names in by_page.values() if len(names) > 1), None)
    if clashing:
        raise DataError(
            f"--samples: sample folders {' and '.join(repr(n) for n in clashing)} of {root} differ only in characters "
            "a file name cannot hold (their pages would be one file); rename one"
        )
    for sample in samples:
        unread = sorted(p for p in (root / sample.name).rglob("*") if p.is_file() and not is_image_file(p))
        if unread:
            shown = ", ".join(p.relative_to(root).as_posix() for p in unread[:3])
            sample.warnings.append(
                f"{len(unread)} file(s) not read, not a supported image type ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                f"{shown}{' ...' if len(unread) > 3 else ''}"
            )
            log.warning("sample %s: %s", sample.name, sample.warnings[-1])
    return samples


def _refuse_vanishing_folders(root: Path, by_name: dict[str, list[int]]) -> None:
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.is_symlink():
            raise DataError(
                f"--samples: {folder} is a link to a folder, whose images are not read; copy them into {root} "
                "(or link each image file)"
            )
        if folder.name not in by_name:
            raise DataError(
                f"--samples: {folder} holds no usable image, so that sample would have no row; remove the folder "
                "or put its images in"
            )


def estimate_samples(
    samples: Sequence[Sample], probabilities: np.ndarray, held_out: HeldOutConfusion, settings: SampleSettings
) -> None:
    """Each sample's :class:`FractionEstimate`, counts and warnings, in place."""
    estimated, indicator = estimated_space(held_out, settings)
    if settings.method in NEEDS_PROBABILITIES:  # per-class calibration on the held-out cells (BCTS)
        try:
            recalibrated = fit_bias_corrected_temperature(held_out.logits, held_out.labels)
        except CalibrationError as error:
            raise FusionError(
                f"--samples --method {settings.method}: the held-out cells' calibration: {error}"
            ) from None
        probabilities = recalibrated.probabilities(np.log(np.clip(probabilities, 1e-300, None)))
    for sample in samples:
        cells = probabilities[sample.cells] @ indicator
        data = cells if settings.method in NEEDS_PROBABILITIES else cells.argmax(axis=1)
        sample.counted = np.bincount(cells.argmax(axis=1), minlength=len(estimated.classes))
        sample.estimate = class_fractions(
            data,
            estimated.confusion,
            estimated.classes,
            settings.level,
            settings.method,
            settings.n_boot,
            settings.seed,
            None if settings.merge else settings.groups,
        )
        if len(sample.cells) < WHO_MINIMUM_CELLS:
            sample.warnings.append(
                f"{len(sample.cells)} cells: fewer than the {WHO_MINIMUM_CELLS} WHO asks for per sample"
            )
            log.warning("sample %s: %s", sample.name, sample.warnings[-1])


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def samples_table(samples: Sequence[Sample], settings: SampleSettings) -> tuple[list[str], list[list[object]]]:
    """samples.csv: sample, cells, % normal forms with interval and flag, each group's % with
    interval, method, level, warning, page (percentages with one decimal)."""
    groups = samples[0].estimate.groups.classes if samples[0].estimate.groups is not None else []
    header = ["sample", "cells", "normal_forms_percent", "normal_forms_low", "normal_forms_high", "normal_forms_flag"]
    for group in groups:
        header += [f"{group}_percent", f"{group}_low", f"{group}_high"]
    header += ["method", "level", "warning", "page"]
    rows = []
    for sample in samples:
        value, low, high = sample.estimate.of(settings.normal_name)
        row = [sample.name, len(sample.cells), _percent(value), _percent(low), _percent(high)]
        row.append(flag(low, high, settings.normal_limit))
        for group in groups:
            row += [_percent(v) for v in sample.estimate.of(group)]
        row += [settings.method, settings.level, "; ".join(sample.warnings), f"{REPORTS_FOLDER}/{sample.page}.html"]
        rows.append(row)
    return header, rows


@dataclass
class Provenance:
    """What made a report: models, fold, fusion.json's digest, the held-out cells, code and date."""

    models: list[str]
    fold: int
    fusion_json: Path
    held_out: str
    skipped: int = 0
    deployed: str | None = None  # the exported model file that predicted, with --deployed

    def lines(self) -> list[str]:
        """The report's provenance, one fact a line: models, settings file and its digest, version, time."""
        commit = git_commit(short=True)
        return [
            f"models: {', '.join(self.models)}, fold {self.fold}'s pair"
            + (f", deployed as {self.deployed}" if self.deployed else ""),
            f"fusion settings: {self.fusion_json} (SHA-256 {file_sha256(self.fusion_json)[:16]}...)",
            f"confusion: {self.held_out}",
            f"spermfuse {__version__}" + (f", commit {commit}" if commit else ""),
            f"written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        ] + ([f"{self.skipped} unusable image(s) of the folder skipped (--skip-bad)"] if self.skipped else [])


def _headline(sample: Sample, settings: SampleSettings) -> str:
    value, low, high = sample.estimate.of(settings.normal_name)
    state = flag(low, high, settings.normal_limit)
    reading = {
        "below": f"the whole interval lies below {settings.normal_limit:.0%}",
        "above": f"the whole interval lies above {settings.normal_limit:.0%}",
        "undetermined": f"the interval contains {settings.normal_limit:.0%}: undetermined, count more cells or review",
    }[state]
    return (
        f"{settings.normal_name}: {_percent(value)} % ({sample.estimate.level:.0%} interval "
        f"{_percent(low)}–{_percent(high)} %); {reading}."
    )


def _page_blocks(
    sample: Sample,
    probabilities: np.ndarray,
    classes: Sequence[str],
    settings: SampleSettings,
    provenance: Provenance,
    threshold: float | None,
    set_calibrator: SetCalibrator | None,
) -> list[tuple]:
    """The page as blocks (heading, paragraph, table, image, list), rendered to Markdown and HTML."""
    estimate, cells = sample.estimate, probabilities[sample.cells]
    blocks: list[tuple] = [("h1", f"Sample {sample.name}"), ("p", _headline(sample, settings), "strong")]
    blocks += [("p", f"Warning: {w}.", "warning") for w in sample.warnings]
    blocks.append(("img", "estimated fractions with intervals", f"{sample.page}_fractions.png"))
    counted = [f"{len(sample.cells)} cells classified"]
    if threshold is not None:
        counted.append(f"{int((cells.max(axis=1) < threshold).sum())} referred (below the certified threshold)")
    if set_calibrator is not None:
        counted.append(f"mean prediction-set size {predict_sets(cells, set_calibrator).sum(axis=1).mean():.2f}")
    blocks.append(("p", "; ".join(counted) + ".", ""))
    if estimate.groups is not None:
        blocks.append(("h2", "Groups"))
        blocks.append(("table", ["group", "estimate %", "low %", "high %"], _rows(estimate.groups)))
    blocks.append(("h2", "Groups" if settings.merge else "Classes"))
    blocks.append(
        (
            "table",
            ["name", "predicted cells", "counted %", "estimate %", "low %", "high %"],
            [[row[0], int(n), _percent(n / len(cells)), *row[1:]] for n, row in zip(sample.counted, _rows(estimate))],
        )
    )
    blocks.append(("h2", "Least certain cells"))
    blocks.append(("img", "the least certain cells", f"{sample.page}_uncertain.png"))
    blocks.append(("h2", "How this was obtained"))
    blocks.append(
        (
            "ul",
            [f"method {estimate.method} (quantify.py), {estimate.level:.0%} bootstrap interval"] + provenance.lines(),
        )
    )
    blocks.append(("h2", "Limits"))
    blocks.append(("ul", list(LIMITS)))
    return blocks


def _rows(estimate: FractionEstimate) -> list[list[str]]:
    return [
        [name, _percent(v), _percent(lo), _percent(hi)]
        for name, v, lo, hi in zip(estimate.classes, estimate.estimate, estimate.low, estimate.high)
    ]


def write_sample_pages(
    folder: Path,
    samples: Sequence[Sample],
    images: Sequence[Path],
    probabilities: np.ndarray,
    classes: Sequence[str],
    settings: SampleSettings,
    provenance: Provenance,
    threshold: float | None = None,
    set_calibrator: SetCalibrator | None = None,
) -> None:
    """Per sample: ``<page>.md``, ``<page>.html``, the fractions figure and the least-certain contact sheet."""
    for number, sample in enumerate(samples, 1):
        plot_fractions(
            sample.estimate,
            (settings.normal_name, settings.normal_limit),
            folder / f"{sample.page}_fractions.png",
            f"sample {sample.name}: {len(sample.cells)} cells",
        )
        cells = probabilities[sample.cells]
        order = np.argsort(cells.max(axis=1), kind="stable")[:LEAST_CERTAIN]
        contact_sheet(
            [load_rgb(images[sample.cells[i]]) for i in order],
            [f"{classes[int(cells[i].argmax())]} {cells[i].max():.2f}" for i in order],
            folder / f"{sample.page}_uncertain.png",
        )
        blocks = _page_blocks(sample, probabilities, classes, settings, provenance, threshold, set_calibrator)
        atomic_write_text(folder / f"{sample.page}.md", page.markdown(blocks))
        atomic_write_text(folder / f"{sample.page}.html", page.html_page(blocks, f"Sample {sample.name}"))
        log.info("sample report %d/%d: %s", number, len(samples), sample.name)


def report_files(folder: Path) -> set[str]:
    """Nothing predates manifests here: a reports folder without one is never replaced."""
    return set()


def default_groups(classes: Sequence[str], known: Mapping[str, str]) -> dict[str, str] | None:
    """``known`` when it names every class (sperm18's head / neck / tail / normal), else None."""
    return {c: known[c] for c in classes} if all(c in known for c in classes) else None
