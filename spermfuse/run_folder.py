"""The run root on disk, written and read only here (docs/DESIGN.md, "On-disk formats").

``<runs>/<arch>/fold<k>/`` (``holdout/`` for a holdout split) is written by the trainer:

- ``config.json``: every setting, the input normalisation, the data folder, the environment;
- ``history.csv``: one row per epoch (``HISTORY_COLUMNS``);
- ``best.pt``: the selected weights and what prediction needs to rebuild the network and
  its test-time preprocessing (:func:`checkpoint_metadata`); ``last.pt``: the resumable state;
- ``val_logits.npz`` / ``test_logits.npz``: the logits schema (``LOGITS_KEYS``).

``<runs>/fusion/`` is written by ``fuse.py`` in the same layout (``fold<k>/test_logits.npz``
and ``val_logits.npz`` of the fused models, the other weight selections in
``optimistic/``, ``val/`` or ``nested/`` likewise), with ``fusion.json``
(:class:`FusionSettings`), ``grid.csv``/``grid.md`` (Table 1) and a manifest
(``output_folder.py``). ``<runs>/folds.csv`` is the split every model shares (``splits.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .files import (
    CheckpointError,
    atomic_savez,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    safe_np_load,
)
from .conformal import SetCalibrator
from .output_folder import MANIFEST_NAME, verify_folder, write_folder
from .selective import Certificate
from .errors import ConfigError, FusionError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .config import TrainConfig
    from .transforms import PipelineSpec

LOGITS_KEYS = ("logits", "labels", "paths", "classes", "arch", "fold")
SPLIT_KEY = "split"  # optional in a logits file: the digest of the split its model trained on (split_digest)


def split_digest(
    classes: Sequence[str], train: Sequence[str], val: Sequence[str], test: Sequence[str], cal: Sequence[str] = ()
) -> str:
    """SHA-256 of the class list, the images a run learned from (train and validation) and
    those it was tested on. How the learning part divides into train and validation is left
    out: it follows from --seed and --val-fraction, which --resume checks among the settings,
    and two members of a fusion may differ there without any leak.

    Recorded in last.pt, best.pt and the logits files; --resume, fusion, prediction and export
    refuse runs whose digests differ where they must agree."""
    record = {"classes": list(classes), "learned_from": sorted([*train, *val]), "tested_on": sorted(test)}
    if cal:  # the calibration cells, held out from learning (--cal-fraction)
        record["calibrated_on"] = sorted(cal)
    text = json.dumps(record)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class LogitsSet:
    """One logits file (docs/DESIGN.md, "On-disk formats")."""

    logits: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    classes: list[str]
    arch: str
    fold: int
    source: str = ""
    split: str = ""  # split_digest of the run that wrote it ("" when not recorded)


def save_logits(
    path: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    classes: Sequence[str],
    arch: str,
    fold: int,
    split: str = "",
) -> None:
    """Write a logits file (``LOGITS_KEYS``, and ``SPLIT_KEY`` when known), atomically."""
    atomic_savez(
        path,
        logits=np.asarray(logits, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        paths=np.array(list(paths), dtype=str),
        classes=np.array(list(classes), dtype=str),
        arch=np.array(arch),
        fold=np.array(fold, dtype=np.int64),
        **({SPLIT_KEY: np.array(split)} if split else {}),
    )


def load_logits(path: str | Path) -> LogitsSet:
    """Read and check a logits file: every key present, shapes consistent, no NaN/inf."""
    try:
        arrays = safe_np_load(path)
    except CheckpointError as error:
        raise FusionError(str(error)) from None
    missing = [k for k in LOGITS_KEYS if k not in arrays]
    if missing:
        raise FusionError(f"{path}: not a logits file, missing {', '.join(missing)}")
    logits = arrays["logits"].astype(np.float32)
    labels = arrays["labels"].astype(np.int64)
    classes = [str(c) for c in arrays["classes"]]
    if logits.ndim != 2 or logits.shape != (len(labels), len(classes)) or len(arrays["paths"]) != len(labels):
        raise FusionError(f"{path}: logits {logits.shape}, {len(labels)} labels, {len(classes)} classes do not agree")
    if not np.isfinite(logits).all():
        raise FusionError(f"{path}: contains NaN or infinite logits; re-run the model that wrote it")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise FusionError(
            f"{path}: labels outside 0..{len(classes) - 1} (the class list has {len(classes)}); re-run the model that wrote it"
        )
    fold = arrays["fold"]
    if fold.shape != () or fold.dtype.kind not in "iu":
        raise FusionError(f"{path}: fold {fold!r} is not one integer; re-run the model that wrote it")
    split = str(arrays[SPLIT_KEY]) if SPLIT_KEY in arrays else ""
    return LogitsSet(
        logits, labels, arrays["paths"].astype(str), classes, str(arrays["arch"]), int(fold), str(path), split
    )


HISTORY_COLUMNS = [
    "epoch",
    "stage",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_second",
    "peak_memory_mb",
    "skipped_steps",
]


def write_history(path: Path, history: list[dict]) -> None:
    atomic_write_csv(path, HISTORY_COLUMNS, ([row[c] for c in HISTORY_COLUMNS] for row in history))


def write_config(
    run_dir: Path,
    config: "TrainConfig",
    data_root: Path,
    normalization: dict,
    environment: dict,
    classes: Sequence[str],
) -> None:
    """``config.json``: the settings as given, and what they resolved to."""
    atomic_write_json(
        run_dir / "config.json",
        {
            **asdict(config),
            "data_root": str(data_root),
            "normalization": normalization,
            "environment": environment,
            "classes": list(classes),
        },
    )


def data_root_of_run(run_dir: Path) -> Path:
    """The data folder a run trained on, from its ``config.json``."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: cannot read the run's settings ({error})") from None
    if "data_root" not in config:
        raise ConfigError(
            f"{Path(run_dir) / 'config.json'}: records no data folder (written before v0.2); retrain the run"
        )
    return Path(config["data_root"])


def checkpoint_metadata(config: "TrainConfig", classes: list[str], spec: "PipelineSpec", split: str) -> dict:
    """What best.pt records beside the weights, so that prediction rebuilds the network and its
    exact test-time preprocessing (``pipeline``: the spec's dict), and knows the test-time
    augmentation and the split it was evaluated with."""
    return {
        "arch": config.arch,
        "classes": list(classes),
        "dropout": config.dropout,
        "padding": config.padding,
        "pipeline": spec.to_dict(),
        "tta": config.tta,
        "split": split,
    }


# --------------------------------------------------------------------------- the run root

FUSION_FOLDER = "fusion"  # fuse.py's output under the run root
LAST_CHECKPOINT = "last.pt"  # a run's resumable state, rewritten atomically after every epoch
FUSION_JSON = "fusion.json"
GRID_CSV, GRID_MD = "grid.csv", "grid.md"  # the fusion folder's Table 1 (fuse.py --grid)
SINGLE_SPLIT_FOLDER = "holdout"  # train.py's run folder of a train/val/test split (method B)
_FOLD_FOLDER = re.compile(r"fold(\d+)")


def fold_folder(root: Path, fold: int) -> Path:
    """``root/fold<k>``: one fold of a model (trained or fused)."""
    return Path(root) / f"fold{fold}"


def logits_path(run_dir: Path, split: str = "test") -> Path:
    """``run_dir/<split>_logits.npz``."""
    return Path(run_dir) / f"{split}_logits.npz"


def find_fold_files(model_folder: Path, split: str = "test") -> dict[int, Path]:
    """``<model_folder>/fold<k>/<split>_logits.npz`` by fold number."""
    found = {}
    for path in sorted(Path(model_folder).glob(f"fold*/{split}_logits.npz")):
        match = _FOLD_FOLDER.fullmatch(path.parent.name)
        if match:
            found[int(match.group(1))] = path
    return found


def align(sets: Sequence[LogitsSet]) -> list[LogitsSet]:
    """Reorder every set to the first one's sample order, joining on ``paths``.

    Refuses sets whose classes differ, whose samples differ, whose labels disagree, or whose
    models learned from other images (:func:`split_digest`).
    """
    reference = sets[0]
    order = {p: i for i, p in enumerate(reference.paths)}
    aligned = [reference]
    for other in sets[1:]:
        if other.classes != reference.classes:
            raise FusionError(
                f"{other.source}: classes differ from {reference.source}; both must be trained on the same class list"
            )
        if len(other.paths) != len(reference.paths) or set(other.paths) != set(order):
            raise FusionError(
                f"{other.source}: holds other samples than {reference.source}; were both trained on the same folds.csv?"
            )
        position = np.argsort([order[p] for p in other.paths])
        moved = replace(
            other, logits=other.logits[position], labels=other.labels[position], paths=other.paths[position]
        )
        if not np.array_equal(moved.labels, reference.labels):
            raise FusionError(f"{other.source}: labels differ from {reference.source} for the same images")
        if other.split and reference.split and other.split != reference.split:
            raise FusionError(
                f"{other.source}: fold {other.fold} learned from other images than {reference.source} "
                "(folds.csv or the data changed between them); retrain one of them on the same folds.csv"
            )
        aligned.append(moved)
    return aligned


def collect_folds(runs: Path, archs: Sequence[str], split: str = "test") -> list[list[LogitsSet]]:
    """For every fold, the aligned logits sets of all ``archs``; every model must have every fold."""
    files = {arch: find_fold_files(Path(runs) / arch, split) for arch in archs}
    for arch, by_fold in files.items():
        if not by_fold:
            raise FusionError(
                f"{Path(runs) / arch}: no fold*/{split}_logits.npz; train it first (python train.py --fold all --arch {arch})"
            )
    all_folds = sorted(set().union(*[set(f) for f in files.values()]))
    for arch, by_fold in files.items():
        missing = [k for k in all_folds if k not in by_fold]
        if missing:
            raise FusionError(
                f"{Path(runs) / arch}: fold(s) {missing} missing ({split}_logits.npz); train them or leave that model out"
            )
    return [align([load_logits(files[arch][k]) for arch in archs]) for k in all_folds]


def pooled(folds: Sequence[LogitsSet]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of all folds together."""
    return np.concatenate([f.labels for f in folds]), np.concatenate([f.logits for f in folds])


def is_single_split(sets: Sequence[LogitsSet]) -> bool:
    """True for the one test set of a holdout run, which has no fold statistics."""
    return len(sets) == 1 and Path(sets[0].source).parent.name == SINGLE_SPLIT_FOLDER


def load_fold_sets(folder: Path, split: str = "test") -> list[LogitsSet]:
    """All folds of one model, trained or fused: ``fold<k>/<split>_logits.npz``, or the one split
    of a holdout run: ``holdout/<split>_logits.npz``, or the run folder itself. A fusion folder is
    checked against its manifest first."""
    folder = Path(folder)
    paths = (
        sorted(find_fold_files(folder, split).values())
        or sorted(folder.glob(f"{SINGLE_SPLIT_FOLDER}/{split}_logits.npz"))
        or sorted(folder.glob(f"{split}_logits.npz"))
    )
    if not paths:
        raise FusionError(f"{folder}: no fold*/{split}_logits.npz or {SINGLE_SPLIT_FOLDER}/{split}_logits.npz files")
    fusion_folder = (folder / MANIFEST_NAME).is_file() or (folder / FUSION_JSON).is_file()
    if fusion_folder:  # its files must be the ones fuse.py wrote together
        verify_folder(folder)
    sets = sorted((load_logits(p) for p in paths), key=lambda s: s.fold)
    for s in sets[1:]:
        if s.classes != sets[0].classes:
            raise FusionError(f"{s.source}: classes differ from {sets[0].source}")
    return sets


def _has_logits(folder: Path) -> bool:
    return bool(find_fold_files(folder)) or (folder / SINGLE_SPLIT_FOLDER / "test_logits.npz").is_file()


def discover_models(runs: Path) -> dict[str, Path]:
    """Every model folder under ``runs`` that holds fold (or holdout) logits; the fusion, then its
    other weight selections (``fusion_val``, ``fusion_nested``, ...) last."""
    runs = Path(runs)
    if not runs.is_dir():
        return {}
    found = {p.name: p for p in sorted(runs.iterdir()) if p.is_dir() and p.name != FUSION_FOLDER and _has_logits(p)}
    fused = runs / FUSION_FOLDER
    if fused.is_dir() and find_fold_files(fused):
        found[FUSION_FOLDER] = fused
        for selection in sorted(
            p for p in fused.iterdir() if p.is_dir() and not _FOLD_FOLDER.fullmatch(p.name) and find_fold_files(p)
        ):
            found[f"{FUSION_FOLDER}_{selection.name}"] = selection  # fuse.py's other weight selections
    return found


def trained_models(runs: Path) -> list[str]:
    """The trained (not fused) model folders under ``runs``, by name."""
    return [name for name in discover_models(runs) if not name.startswith(FUSION_FOLDER)]


def find_run_root(runs: Path | None, default: Path = Path("runs")) -> Path:
    """``--runs`` when given; else ``runs/`` when it holds trained models, else the run root below
    it (``runs/demo``, ``runs/tiny``, ...) whose logits are the most recent. A root without
    trained models is a FusionError naming where it looked and how to train."""
    if runs is not None:
        return Path(runs)
    if trained_models(default):
        return default
    roots = [p for p in sorted(default.iterdir()) if p.is_dir() and trained_models(p)] if default.is_dir() else []
    if not roots:
        raise FusionError(
            f"no trained models in {default}/ or its subfolders; train a pair first (bash demo.sh on a CPU, or "
            "python train.py --fold all --arch efficientnetv2_s and --arch resnet50v2), or give --runs DIR"
        )

    def newest(root: Path) -> float:
        return max(f.stat().st_mtime for name in trained_models(root) for f in find_fold_files(root / name).values())

    chosen = max(roots, key=newest)
    log.info("--runs %s (the most recent of %s; give --runs to choose)", chosen, ", ".join(str(r) for r in roots))
    return chosen


def fusion_members(runs: Path, models: Sequence[str] | None) -> list[str]:
    """``--models`` when given, else every trained model under ``runs``; two different ones at least."""
    chosen = list(models) if models else trained_models(runs)
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        found = ", ".join(trained_models(runs)) or "none"
        raise FusionError(
            f"--models {' '.join(chosen) or '(none given)'}: fusion needs two or more different trained models "
            f"(under {runs}: {found}); train the other one (python train.py --fold all --arch ARCH --out {runs})"
        )
    return chosen


def write_fused_logits(
    folder: Path,
    per_fold: Sequence[Sequence[LogitsSet]],
    chosen: Sequence[Sequence[float]],
    arch: str,
    split: str = "test",
) -> None:
    """``folder/fold<k>/<split>_logits.npz`` of the fused models (weights ``chosen[k]``), in the logits schema."""
    for sets, weights in zip(per_fold, chosen):
        fused = sum(float(w) * s.logits for w, s in zip(weights, sets))
        first = sets[0]
        save_logits(
            logits_path(fold_folder(folder, first.fold), split),
            fused,
            first.labels,
            first.paths,
            first.classes,
            arch,
            first.fold,
            first.split,
        )


# --------------------------------------------------------------------------- fusion.json


def _all_numbers(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _under_runs(runs: Path, source: Path, model: str) -> Path:
    """``source`` (a logits file as fuse.py named it, e.g. ``old/runs/m/fold1/test_logits.npz``)
    under ``runs``: its path from the model's folder on (``runs/m/fold1/test_logits.npz``), so a
    runs folder moved or named relative to another directory is still found."""
    parts = source.parts
    if model not in parts:
        return source
    last = len(parts) - 1 - parts[::-1].index(model)
    return Path(runs, *parts[last:])


FUSION_SETTINGS_VERSION = 3  # 2: referral as per-fold certificates, prediction sets; 3: sets without randomisation


@dataclass
class FusionSettings:
    """``fusion.json``: how fuse.py fused the members, what prediction and export repeat.

    ``weights_per_fold[i]`` are the mix of fold ``folds[i]``'s members (in ``models`` order);
    ``weights`` the one mix of all folds when the rule gives one. ``temperatures`` (with
    ``--calibrate``): ``{"models", "per_fold", "fitted_on"}``; ``referral`` (with
    ``--refer-accuracy``): each fold's certificate (``selective.Certificate``) and test outcome;
    ``sets`` (with ``--sets-alpha``): each fold's ``conformal.SetCalibrator`` and test metrics.
    Both are certified per fold, for that fold's pair: prediction applies them with ``--fold K``;
    with a calibration holdout shared by the folds (``train.py --cal-holdout``) also for the
    average of every fold (``referral["average"]``, ``sets["average"]``: ``--fold all``).
    """

    models: list[str]
    folds: list[int]
    weights_per_fold: list[list[float]]
    rule: str
    select: str
    alphas: str
    inputs: list[str] = field(default_factory=list)
    input_digests: list[str] = field(default_factory=list)  # SHA-256 of each of ``inputs``, in its order
    weights: list[float] | None = None
    selection_comparison: dict | None = None
    temperatures: dict | None = None
    referral: dict | None = None
    sets: dict | None = None
    version: int = FUSION_SETTINGS_VERSION

    def to_json(self) -> dict:
        """The JSON object (None fields left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: object, source: str = FUSION_JSON) -> "FusionSettings":
        """Read and check a ``fusion.json`` object; a file of another version or shape is refused."""
        if not isinstance(data, dict):
            raise FusionError(f"{source}: not a JSON object; run python fuse.py --grid again")
        if data.get("version") != FUSION_SETTINGS_VERSION:
            raise FusionError(
                f"{source}: version {data.get('version')}, this spermfuse reads {FUSION_SETTINGS_VERSION}; run python fuse.py --grid again"
            )
        names = {f.name for f in fields(cls)}
        unknown, missing = (
            set(data) - names,
            {"models", "folds", "weights_per_fold", "rule", "select", "alphas", "inputs", "input_digests"} - set(data),
        )
        if unknown or missing:
            raise FusionError(
                f"{source}: {'unknown keys ' + ', '.join(sorted(unknown)) if unknown else 'missing ' + ', '.join(sorted(missing))}; run python fuse.py --grid again"
            )
        settings = cls(**data)
        if len(settings.weights_per_fold) != len(settings.folds) or any(
            len(w) != len(settings.models) for w in settings.weights_per_fold
        ):
            raise FusionError(
                f"{source}: weights_per_fold does not match its folds and models; run python fuse.py --grid again"
            )
        settings._check_values(source)
        if len(settings.input_digests) != len(settings.inputs):
            raise FusionError(f"{source}: input_digests does not match its inputs; run python fuse.py --grid again")
        return settings

    def check_inputs(self, runs: Path, folds: Sequence[int] | None = None) -> None:
        """Refuse a fusion whose members' test logits of ``folds`` (default: all) are gone or changed
        since fuse.py read them: a fold retrained, or its ``--overwrite`` run killed before it
        wrote them, whose half-trained best.pt prediction would otherwise load."""
        for i, (source, digest) in enumerate(zip(self.inputs, self.input_digests)):
            fold, model = self.folds[i // len(self.models)], self.models[i % len(self.models)]
            if folds is not None and fold not in folds:
                continue
            path = _under_runs(runs, Path(source), model)
            if not path.is_file():
                raise FusionError(
                    f"{path}: missing, but the fusion was made from it (fold {fold} of {model} retrained and not "
                    "finished?); finish that run (train.py --resume) and run python fuse.py --grid again"
                )
            if file_sha256(path) != digest:
                raise FusionError(
                    f"{path}: changed since the fusion was made from it (fold {fold} of {model} retrained); "
                    "run python fuse.py --grid again"
                )

    def _check_values(self, source: str) -> None:
        """What a rewritten manifest cannot vouch for: each fold's weights a mix (finite, >= 0,
        summing to 1), temperatures finite and > 0, and the members in the order of the logits
        files they were fused from (``inputs``), so a swapped ``models`` cannot swap the weights."""
        mixes = [*self.weights_per_fold, *([self.weights] if self.weights is not None else [])]
        for weights in mixes:
            values = np.asarray(weights, dtype=np.float64) if _all_numbers(weights) else np.array([np.nan])
            if not (np.isfinite(values).all() and (values >= 0).all() and abs(values.sum() - 1.0) <= 1e-6):
                raise FusionError(
                    f"{source}: weights {weights} are not a mix (finite, >= 0, summing to 1); run python fuse.py --grid again"
                )
        for key in ("per_fold", "fused_per_fold"):
            given = (self.temperatures or {}).get(key)
            flat = [t for row in given for t in (row if isinstance(row, list) else [row])] if given else []
            if flat and not (_all_numbers(flat) and all(math.isfinite(t) and t > 0 for t in flat)):
                raise FusionError(
                    f"{source}: temperatures.{key} must be finite and > 0; run python fuse.py --grid again"
                )
        if self.inputs:
            expected = [(model, f"fold{k}") for k in self.folds for model in self.models]
            parts = [Path(p).parts for p in self.inputs]
            if len(parts) != len(expected) or any(
                model not in found or (fold not in found and SINGLE_SPLIT_FOLDER not in found)
                for found, (model, fold) in zip(parts, expected)
            ):
                raise FusionError(
                    f"{source}: models {self.models} and folds {self.folds} are not the ones its inputs were fused from; "
                    "run python fuse.py --grid again"
                )

    def chosen_folds(self, text: str) -> list[int]:
        """The folds of ``fuse.py --fold TEXT`` (a fold number, or 'all'), refused unless fused here."""
        folds = self.folds if text == "all" else [int(text)] if text.isdigit() else None
        if folds is None or any(k not in self.folds for k in folds):
            raise FusionError(f"--fold {text}: fusion.json has folds {self.folds} (or 'all')")
        return folds

    def prediction_weights(self, folds: Sequence[int]) -> list[list[float]]:
        """The mix each fold's members are fused with at prediction: that fold's own choice (the
        same a* for all with the paper's rule; per fold with ``--select val|nested``), divided by
        each member's temperature of that fold and by the fused logits' temperature when
        calibrated. With ``--fold all`` the folds' fused logits are then averaged."""
        position = {k: i for i, k in enumerate(self.folds)}
        temperatures = (self.temperatures or {}).get("per_fold")
        fused = (self.temperatures or {}).get("fused_per_fold")
        weights = []
        for k in folds:
            chosen = self.weights_per_fold[position[k]]
            scale = temperatures[position[k]] if temperatures else [1.0] * len(chosen)
            after = fused[position[k]] if fused else 1.0  # the fused logits' own temperature
            weights.append([w / (t * after) for w, t in zip(chosen, scale)])
        return weights

    def fused_temperatures(self) -> list[float] | None:
        """The temperature of each fold's fused logits (``--calibrate``), in ``folds`` order."""
        return (self.temperatures or {}).get("fused_per_fold")

    def certified_for(self, folds: Sequence[int]) -> bool:
        """Whether the certified rules (if any) hold for ``folds``' model: one fold's pair, or the
        average of every fold when they were certified on a shared calibration holdout."""
        if len(folds) == 1:
            return True
        rules = [block for block in (self.referral, self.sets) if block is not None]
        return sorted(folds) == sorted(self.folds) and all("average" in block for block in rules)

    def _per_fold(self, block: dict, folds: Sequence[int], flag: str) -> dict:
        if not self.certified_for(folds):
            raise FusionError(
                f"fusion.json's {flag} is certified per fold, on that fold's own calibration cells; the average of the folds' "
                f"models has none (each trained on the others' cells): predict with --fold K, one of {self.folds}, "
                "or train with --cal-holdout F (cells no fold trains on) and fuse again"
            )
        return block["average"] if len(folds) > 1 else block["per_fold"][self.folds.index(folds[0])]

    def prediction_threshold(self, folds: Sequence[int]) -> float | None:
        """The certified referral threshold of one fold's pair (+inf: refer every cell); None without referral."""
        if self.referral is None:
            return None
        return Certificate.from_dict(self._per_fold(self.referral, folds, "referral")["certificate"]).threshold

    def decision(self, folds: Sequence[int]) -> dict:
        """The certified rules of ``folds``' model as data (``model.json``'s ``decision``)."""
        rules = {}
        if self.referral is not None:
            rules["referral"] = self._per_fold(self.referral, folds, "referral")["certificate"]
        if self.sets is not None:
            rules["prediction_sets"] = self._per_fold(self.sets, folds, "prediction sets")["calibrator"]
        return rules

    def prediction_sets(self, folds: Sequence[int]) -> SetCalibrator | None:
        """The conformal set calibrator of one fold's pair; None without prediction sets."""
        if self.sets is None:
            return None
        return SetCalibrator.from_dict(self._per_fold(self.sets, folds, "prediction sets")["calibrator"])


def write_fusion_settings(folder: Path, settings: FusionSettings) -> None:
    atomic_write_json(Path(folder) / FUSION_JSON, settings.to_json())


@dataclass
class Selection:
    """What fuse.py writes (fusion.select chooses it, :func:`write_fusion_folder` writes it): the settings (fusion.json), the logits it fused (temperature-scaled
    with --calibrate), Table 1, and the other rules' weights by folder name."""

    settings: FusionSettings
    per_fold: list[list[LogitsSet]]
    per_fold_val: list[list[LogitsSet]] | None
    per_fold_cal: list[list[LogitsSet]] | None
    grid: tuple[list[str], list[list[str]]] | None
    others: dict[str, list[tuple[float, ...]]]


def write_fusion_folder(out: Path, overwrite: bool, chosen: Selection, grid_table: str | None) -> None:
    """fuse.py's fusion folder, written as a unit (a refused or killed run changes nothing): Table 1
    (grid.csv, and ``grid_table``'s Markdown as grid.md), the fused logits of every split, the other
    rules' fused test logits (fusion_val, fusion_nested, ... so evaluate.py tests the members
    against an honestly selected fusion as well as the chosen one) and fusion.json."""
    settings = chosen.settings
    with write_folder(out, "--out", overwrite, legacy_fusion_files) as folder:
        if chosen.grid is not None:
            atomic_write_csv(folder / GRID_CSV, *chosen.grid)
            atomic_write_text(folder / GRID_MD, grid_table)
        for split, logits in (("test", chosen.per_fold), ("val", chosen.per_fold_val), ("cal", chosen.per_fold_cal)):
            if logits is not None:
                write_fused_logits(folder, logits, settings.weights_per_fold, "fusion", split=split)
        for name, weights in chosen.others.items():
            write_fused_logits(folder / name, chosen.per_fold, weights, f"fusion_{name}")
        write_fusion_settings(folder, settings)


def grid_markdown(folders: Sequence[Path]) -> str | None:
    """Table 1 (grid.md) of the last of ``folders`` that holds one (a fusion folder), else None."""
    found = [folder / GRID_MD for folder in folders if (folder / GRID_MD).is_file()]
    return found[-1].read_text() if found else None


def read_fusion_settings(folder: Path) -> FusionSettings:
    """``folder/fusion.json``, after checking the folder against its manifest."""
    path = Path(folder) / FUSION_JSON
    verify_folder(Path(folder))
    if not path.is_file():
        raise FusionError(f"{path}: not found; run python fuse.py --grid first")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise FusionError(f"{path}: not readable JSON ({error}); run python fuse.py --grid again") from None
    return FusionSettings.from_json(data, str(path))


_FUSION_FILE = re.compile(
    r"(fusion\.json|grid\.(csv|md)|([a-z]+/)?fold\d+(_val)?_logits\.npz|([a-z]+/)?fold\d+/(test|val)_logits\.npz)"
)


def legacy_fusion_files(folder: Path) -> set[str]:
    """The files of a fusion folder written before manifests (what a new fuse.py may replace)."""
    names = (p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
    return {name for name in names if _FUSION_FILE.fullmatch(name)}
