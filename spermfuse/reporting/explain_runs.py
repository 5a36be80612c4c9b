"""Explanations of a cross-validated fusion's own test images: the gallery, the pointing game
(``pointing_game.py``: its baselines; here the maps of the trained, the untrained and the
part-switched model) and the cascading-randomisation check (``sanity_check.py``).

Every test image is explained by the members of the fold that tested it, fused with that
fold's weights (``fusion.json``), as ``fuse.py --predict --fold k`` would predict it. Needs
the runs' checkpoints (``best.pt``), not only their logits.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.calibration import probabilities_of
from ..core.errors import ConfigError
from ..core.files import atomic_write_json, atomic_write_text
from ..core.fused_model import Classifier
from ..data.images import load_rgb
from ..data.taxonomy import DEFECT_PART
from ..explain.gradcam import ImageExplanation, explain_files, layer_size
from ..explain.pointing_game import PointingCase, darkness_map, hits, score, summarise, tolerance
from ..explain.sanity_check import (
    RandomisationCurve,
    cascade_blocks,
    cascaded,
    randomisation_curve,
    randomly_initialised,
)
from ..flags import setting
from ..page import markdown_table
from ..runtime import DEVICE_HELP, resolve_device
from ..store.fusion_folder import read_fusion_settings
from ..store.run_folder import FUSION_FOLDER, data_root_of_run, load_fold_members, load_fold_sets
from .explanation_tables import pointing_game_markdown, randomisation_markdown
from .figures import explanation_figure, plot_randomisation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplanationSettings:
    """``evaluate.py --explain``'s options (its flags on the fields)."""

    masks: Path | None = setting(
        None,
        "with --explain: the pointing game against the part masks of DIR (python -m spermfuse.synthetic --out DIR "
        "--masks: the same images)",
        "explain",
        metavar="DIR",
    )
    limit: int | None = setting(
        None, "--masks: only the first N test images of each fold", "explain", option="--explain-limit", metavar="N"
    )
    randomisation_images: int = setting(
        100,
        "--explain: test images (spread over the folds) of the cascading-randomisation check",
        "explain",
        metavar="N",
    )
    device: str = setting("auto", f"--explain: {DEVICE_HELP}", "explain")


@dataclass
class TestImage:
    """A test image of the runs and what the fused pair predicted for it."""

    path: str  # relative to the data root
    label: int
    fold: int
    predicted: int
    probability: float
    probabilities: np.ndarray | None = None  # [C] under the fused logits


def fused_test_images(runs: Path) -> tuple[list[TestImage], list[str]]:
    """Each test image of ``runs/fusion`` with its fold, label, fused prediction and its probability."""
    images = []
    sets = load_fold_sets(runs / FUSION_FOLDER)
    for fold_set in sets:
        probabilities = probabilities_of(fold_set.logits)
        for path, label, p in zip(fold_set.paths, fold_set.labels, probabilities):
            images.append(TestImage(str(path), int(label), fold_set.fold, int(p.argmax()), float(p.max()), p))
    return images, sets[0].classes


def explain_test_images(
    runs: Path, images: Sequence[TestImage], device: torch.device | str = "cpu"
) -> Iterator[tuple[TestImage, ImageExplanation]]:
    """Grad-CAM of each test image under its own fold's fused members, fold by fold."""
    settings = read_fusion_settings(runs / FUSION_FOLDER)
    names = settings.models
    root = data_root_of_run(runs / names[0] / f"fold{images[0].fold}") if images else Path()
    for fold in sorted({image.fold for image in images}):
        members = load_fold_members(runs, names, [fold], device)
        weights = settings.prediction_weights([fold])
        chosen = [image for image in images if image.fold == fold]
        for image, explained in zip(
            chosen, explain_files([root / i.path for i in chosen], members, weights, names, device)
        ):
            yield image, explained


def gallery_images(images: Sequence[TestImage], classes: Sequence[str]) -> list[tuple[str, str, TestImage]]:
    """Per class, the most confident correct and the most confident wrong test image: (class, kind, image)."""
    chosen = []
    for index, name in enumerate(classes):
        of_class = [i for i in images if i.label == index]
        for kind, keep in (("correct", lambda i: i.predicted == i.label), ("wrong", lambda i: i.predicted != i.label)):
            candidates = [i for i in of_class if keep(i)]
            if candidates:
                chosen.append((name, kind, max(candidates, key=lambda i: i.probability)))
    return chosen


def read_masks(masks_root: Path) -> dict[str, Path]:
    """``path -> mask file`` from a ``--masks`` data set's metadata.csv (``python -m spermfuse.synthetic --masks``)."""
    manifest = masks_root / "metadata.csv"
    try:
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ConfigError(
            f"--masks {masks_root}: no readable metadata.csv ({error.strerror}); generate it with python -m spermfuse.synthetic --out DIR --masks"
        ) from None
    if not rows or "mask" not in rows[0]:
        raise ConfigError(
            f"--masks {manifest}: has no 'mask' column; generate the set with python -m spermfuse.synthetic --masks"
        )
    return {row["path"]: masks_root / row["mask"] for row in rows}


def check_masks(runs: Path, masks_root: Path) -> dict[str, Path]:
    """The masks of every test image of ``runs/fusion``, after checking that the mask set holds
    the very images that were tested (same generator, seed and scale), byte for byte."""
    images, classes = fused_test_images(runs)
    unknown = sorted({classes[i.label] for i in images} - set(DEFECT_PART))
    if unknown:
        raise ConfigError(f"--masks: the pointing game knows the sperm18 classes; not {', '.join(unknown)}")
    masks = read_masks(masks_root)
    data_root = data_root_of_run(runs / read_fusion_settings(runs / FUSION_FOLDER).models[0] / f"fold{images[0].fold}")
    for image in images:
        twin = masks_root / image.path
        if image.path not in masks or not twin.is_file() or twin.read_bytes() != (data_root / image.path).read_bytes():
            raise ConfigError(
                f"--masks {masks_root}: {image.path} is missing or differs from the tested {data_root / image.path}; "
                "generate the masks with the data set's kind, seed and scale"
            )
    return masks


def counterfactual_class(image: TestImage, classes: Sequence[str]) -> tuple[int, str] | None:
    """For the part-switch test: the most probable class (under the fused logits) whose defect
    lies on another part: a tail class for a head or neck defect, a head class for a tail
    defect; None for Normal (no defect part to switch from)."""
    part = DEFECT_PART[classes[image.label]]
    if part == "sperm":
        return None
    other = "head" if part == "tail" else "tail"
    candidates = [c for c, name in enumerate(classes) if DEFECT_PART.get(name) == other]
    return max(candidates, key=lambda c: image.probabilities[c]), other


def untrained_members(members: Sequence[Sequence[Classifier]], seed: int = 0) -> list[list[Classifier]]:
    """The same architectures, preprocessing and weights in the fusion, every network randomly initialised."""
    return [[replace(c, model=randomly_initialised(c.model, seed=seed)) for c in fold] for fold in members]


def pointing_cases(
    runs: Path, masks: dict[str, Path], device: torch.device | str = "cpu", limit: int | None = None
) -> tuple[list[PointingCase], dict]:
    """The pointing game of every test image (``limit``: the first N per fold): the fused map of
    its *true* class under its fold's fused pair, scored against the part that carries that
    class's defect within half the coarsest map's stride, beside the model-free baselines, the
    untrained pair's map of the same class, and the map of a counterfactual class of another
    part (:func:`counterfactual_class`); and the setting (input size, coarsest map size, median
    radius in original pixels). ``masks``: what :func:`check_masks` returned."""
    images, classes = fused_test_images(runs)
    if limit is not None:
        images = [i for fold in sorted({i.fold for i in images}) for i in [j for j in images if j.fold == fold][:limit]]
    settings = read_fusion_settings(runs / FUSION_FOLDER)
    root = data_root_of_run(runs / settings.models[0] / f"fold{images[0].fold}")
    cases, setting = [], {}
    for fold in sorted({image.fold for image in images}):
        chosen = [image for image in images if image.fold == fold]
        members = load_fold_members(runs, settings.models, [fold], device)
        setting["input_size"] = members[0][0].spec.img_size
        setting["map_size"] = min(min(layer_size(c.model, setting["input_size"])) for c in members[0])
        paths = [root / image.path for image in chosen]

        def maps(folds, targets):
            weights = settings.prediction_weights([fold])
            explained = explain_files(paths, folds, weights, settings.models, device, targets=targets)
            return (e.fused.numpy() for e in explained)

        switches = [counterfactual_class(image, classes) for image in chosen]
        truth = [image.label for image in chosen]
        for image, trained, untrained, switched, switch in zip(
            chosen,
            maps(members, truth),
            maps(untrained_members(members), truth),
            maps(members, [s[0] if s else image.label for s, image in zip(switches, chosen)]),
            switches,
        ):
            cases.append(
                pointing_case(
                    root / image.path,
                    np.asarray(Image.open(masks[image.path])),
                    image,
                    classes,
                    setting,
                    (trained, untrained, switched),
                    switch,
                )
            )
    setting["median_radius"] = float(np.median([c.radius for c in cases]))
    return cases, setting


def pointing_case(
    path: Path,
    mask: np.ndarray,
    image: TestImage,
    classes: Sequence[str],
    setting: dict,
    maps: tuple[np.ndarray, np.ndarray, np.ndarray],
    switch: tuple[int, str] | None,
) -> PointingCase:
    """One cell's scores: ``maps`` are the trained, untrained and part-switched pair's maps in the
    image's geometry; the tolerance follows ``setting``'s input and coarsest map sizes."""
    trained, untrained, switched = maps
    with Image.open(path) as picture:
        grey = np.asarray(picture.convert("L"), dtype=np.float64)
    radius = tolerance(grey.shape[1], grey.shape[0], setting["input_size"], setting["map_size"])
    part = DEFECT_PART[classes[image.label]]
    case = score(trained, mask, grey, part, radius, image.predicted == image.label)
    case.untrained = hits(untrained, mask, part, radius)
    case.part_switch = hits(switched, mask, switch[1], radius) if switch else None
    return case


def randomisation_check(
    runs: Path, device: torch.device | str = "cpu", count: int = 100, seed: int = 0
) -> RandomisationCurve:
    """Cascading randomisation (``sanity_check.py``) of the fused maps of ``count`` test images
    spread over every fold (a seeded draw), each map explaining the image's true class under its
    own fold's fused pair, with every member re-initialised block by block from the logits down."""
    images, _ = fused_test_images(runs)
    folds = sorted({image.fold for image in images})
    rng = np.random.default_rng(seed)
    chosen = []
    for fold in folds:
        of_fold = [image for image in images if image.fold == fold]
        share = -(-count // len(folds))
        chosen += [of_fold[i] for i in sorted(rng.permutation(len(of_fold))[:share])]
    settings = read_fusion_settings(runs / FUSION_FOLDER)
    names = settings.models
    root = data_root_of_run(runs / names[0] / f"fold{folds[0]}")
    trained, null_first, null_second, darkness, by_step = [], [], [], [], {}
    for fold in folds:
        of_fold = [image for image in chosen if image.fold == fold]
        members, weights = load_fold_members(runs, names, [fold], device), settings.prediction_weights([fold])
        paths, truth = [root / image.path for image in of_fold], [image.label for image in of_fold]
        steps = max(len(cascade_blocks(c.model)) for c in members[0])

        def maps(folds_of_members):
            explained = explain_files(paths, folds_of_members, weights, names, device, targets=truth)
            return [e.fused.numpy() for e in explained]

        def randomised(how):
            return [[replace(c, model=how(c.model)) for c in fold_members] for fold_members in members]

        trained += maps(members)
        for step in range(steps):
            by_step.setdefault(step, []).extend(maps(randomised(lambda m: cascaded(m, step, seed))))
        null_first += maps(randomised(lambda m: randomly_initialised(m, seed=seed + 1)))
        null_second += maps(randomised(lambda m: randomly_initialised(m, seed=seed + 2)))
        for path in paths:
            with Image.open(path) as picture:
                darkness.append(darkness_map(np.asarray(picture.convert("L"))))
    labels = ["head"] + [f"head + {k} block{'s' if k > 1 else ''}" for k in range(1, len(by_step) - 1)] + ["all"]
    return randomisation_curve(lambda step: by_step[step], labels, trained, (null_first, null_second), darkness)


def gallery_title(heading: str, image: TestImage, explained: ImageExplanation, classes: Sequence[str]) -> str:
    """A gallery figure's title: the class the maps explain (the plain forward's) with its
    probability and fold, the report's prediction (with TTA and temperatures) when it differs,
    and the next most likely class."""
    title = f"{heading}: maps of {classes[explained.predicted]} {explained.probability:.2f} (fold {image.fold})"
    if explained.predicted != image.predicted:
        title += f"; reported prediction {classes[image.predicted]}"
    runner_up = int(np.argsort(image.probabilities)[-2])
    return title + f"\nnext most likely: {classes[runner_up]} {image.probabilities[runner_up]:.2f}"


def write_gallery(runs: Path, out: Path, classes: list[str], device: torch.device | str = "cpu") -> None:
    """Per class the most confident correct and wrong test image, with its maps: ``out/gallery/``
    and ``out/gallery.md``."""
    images, _ = fused_test_images(runs)
    chosen = {image.path: (name, kind) for name, kind, image in gallery_images(images, classes)}
    rows = []
    for image, explained in explain_test_images(runs, [i for i in images if i.path in chosen], device):  # fold by fold
        name, kind = chosen[image.path]
        figure = out / "gallery" / f"{name}_{kind}.png"
        title = gallery_title(f"{name}, {kind}", image, explained, classes)
        explanation_figure(load_rgb(explained.path), explained.figure_maps(), title, figure)
        rows.append(
            [
                name,
                kind,
                image.path,
                classes[image.predicted],
                f"{image.probability:.4f}",
                f"![](gallery/{figure.name})",
            ]
        )
    rows.sort()  # by class, then correct before wrong
    atomic_write_text(
        out / "gallery.md",
        "# Grad-CAM gallery of the fused model\n\n"
        "The maps explain the plain forward pass (no test-time augmentation), members on the fused map's scale.\n\n"
        + markdown_table(["class", "kind", "image", "predicted", "probability", "maps"], rows),
    )
    log.info("wrote %s: %d Grad-CAM figures", out / "gallery.md", len(rows))


def write_explanations(
    runs: Path, out: Path, classes: list[str], settings: ExplanationSettings, masks: dict[str, Path] | None = None
) -> str:
    """``evaluate.py --explain``'s part of a report folder ``out``: the gallery (per class the
    most confident correct and wrong test image, ``gallery/`` and ``gallery.md``), the
    cascading-randomisation check (``randomisation.{json,md,png}``) and, with ``masks`` (what
    :func:`check_masks` returned for ``settings.masks``), the pointing game
    (``pointing_game.{json,md}``: ``settings.limit`` test images per fold); returns the checks'
    Markdown."""
    device, limit = resolve_device(settings.device), settings.limit
    write_gallery(runs, out, classes, device)
    curve = randomisation_check(runs, device, settings.randomisation_images)
    atomic_write_json(out / "randomisation.json", curve.to_dict())
    plot_randomisation(curve, out / "randomisation.png")
    text = randomisation_markdown(curve)
    atomic_write_text(out / "randomisation.md", text)
    if masks is not None:
        cases, setting = pointing_cases(runs, masks, device, limit)
        rows = summarise(cases)
        atomic_write_json(out / "pointing_game.json", {"setting": setting, "rows": rows})
        pointing = pointing_game_markdown(rows, setting)
        atomic_write_text(out / "pointing_game.md", pointing)
        text = pointing + "\n" + text
    return text
