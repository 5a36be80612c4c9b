"""The run root on disk, written and read only here (docs/DESIGN.md, "On-disk formats").

``<runs>/<arch>/fold<k>/`` (``holdout/`` for a holdout split) is written by the trainer:

- ``config.json``: every setting, the input normalisation, the data folder, the environment;
- ``history.csv``: one row per epoch (``HISTORY_COLUMNS``);
- ``best.pt``: the selected weights and what prediction needs to rebuild the network and
  its test-time preprocessing (``trainer.checkpoint_metadata``); ``last.pt``: the resumable state;
- ``val_logits.npz`` / ``test_logits.npz``: the logits schema (``LOGITS_KEYS``).

``<runs>/fusion/`` is written by ``fuse.py`` in the same layout (``fold<k>/test_logits.npz``
and ``val_logits.npz`` of the fused models, the other weight selections in
``optimistic/``, ``val/`` or ``nested/`` likewise), with ``fusion.json``
(``fusion_folder.py``), ``grid.csv``/``grid.md`` (Table 1) and a manifest
(``output_folder.py``). ``<runs>/folds.csv`` is the split every model shares (``splits.py``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

from ..core.errors import ConfigError, FusionError
from ..core.files import atomic_write_csv, atomic_write_json
from ..core.fused_model import Classifier, load_classifier
from ..core.logits import LogitsSet, align, load_logits
from .output_folder import MANIFEST_NAME, verify_folder

log = logging.getLogger(__name__)

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
    """Write the epoch rows as history.csv (atomically), in ``HISTORY_COLUMNS`` order."""
    atomic_write_csv(path, HISTORY_COLUMNS, ([row[c] for c in HISTORY_COLUMNS] for row in history))


def write_config(
    run_dir: Path,
    settings: dict,
    data_root: Path,
    normalization: dict,
    environment: dict,
    classes: Sequence[str],
) -> None:
    """``config.json``: the settings as given, and what they resolved to."""
    atomic_write_json(
        run_dir / CONFIG_JSON,
        {
            **settings,
            "data_root": str(data_root),
            "normalization": normalization,
            "environment": environment,
            "classes": list(classes),
        },
    )


def data_root_of_run(run_dir: Path) -> Path:
    """The data folder a run trained on, from its ``config.json``."""
    try:
        config = json.loads((Path(run_dir) / CONFIG_JSON).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: cannot read the run's settings ({error})") from None
    if "data_root" not in config:
        raise ConfigError(
            f"{Path(run_dir) / 'config.json'}: records no data folder (written before v0.2); retrain the run"
        )
    return Path(config["data_root"])


# --------------------------------------------------------------------------- the run root

FUSION_FOLDER = "fusion"  # fuse.py's output under the run root
BEST_CHECKPOINT = "best.pt"  # the selected weights and what prediction needs (trainer.checkpoint_metadata)
LAST_CHECKPOINT = "last.pt"  # a run's resumable state, rewritten atomically after every epoch
CONFIG_JSON, HISTORY_CSV = "config.json", "history.csv"
FUSION_JSON = "fusion.json"
GRID_CSV, GRID_MD = "grid.csv", "grid.md"  # the fusion folder's Table 1 (fuse.py --grid)
SINGLE_SPLIT_FOLDER = "holdout"  # train.py's run folder of a train/val/test split (method B)
_FOLD_FOLDER = re.compile(r"fold(\d+)")


def model_run_dir(out: str | Path, arch: str, fold: int | None) -> Path:
    """``out/<arch>/fold<k>``, or ``out/<arch>/holdout`` for the one split of a holdout run (``fold`` None)."""
    return Path(out) / arch / (f"fold{fold}" if fold is not None else SINGLE_SPLIT_FOLDER)


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
    trained models is a FusionError naming where it looked and how to train, and so is a
    ``--runs`` that is not a folder."""
    if runs is not None:
        if not Path(runs).is_dir():
            raise FusionError(
                f"--runs {runs}: no such folder; give the run root train.py wrote (its --out, runs/ by default)"
            )
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


def load_fold_members(
    runs: str | Path, models: Sequence[str], folds: Sequence[int], device: str = "cpu"
) -> list[list[Classifier]]:
    """The trained members of each fold, ``runs/<model>/fold<k>/best.pt``: ``[fold][model]``."""
    return [
        [load_classifier(fold_folder(Path(runs) / name, k) / BEST_CHECKPOINT, device) for name in models] for k in folds
    ]
