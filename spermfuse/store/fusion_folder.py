"""A fusion folder, ``<runs>/fusion/`` (fuse.py's output): ``fusion.json`` (:class:`FusionSettings`,
what prediction and export repeat), Table 1 (``grid.csv``/``grid.md``), the fused logits of
every split in the logits schema, the other weight selections' fused test logits, and the
manifest that binds them (``output_folder.py``). Written and read only here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.conformal import SetCalibrator
from ..core.errors import FusionError
from ..core.files import atomic_write_csv, atomic_write_json, atomic_write_text, file_sha256
from ..core.fusion import deployed_weights, fuse
from ..core.logits import LogitsSet, save_logits
from ..core.selective import Certificate
from . import run_folder
from .output_folder import verify_folder, write_folder
from .run_folder import FUSION_JSON, GRID_CSV, GRID_MD, SINGLE_SPLIT_FOLDER, fold_folder, logits_path


def write_fused_logits(
    folder: Path,
    per_fold: Sequence[Sequence[LogitsSet]],
    chosen: Sequence[Sequence[float]],
    arch: str,
    split: str = "test",
) -> None:
    """``folder/fold<k>/<split>_logits.npz`` of the fused models (weights ``chosen[k]``), in the logits schema."""
    for sets, weights in zip(per_fold, chosen):
        fused = fuse([s.logits for s in sets], weights)
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
        return [
            deployed_weights(
                self.weights_per_fold[position[k]],
                temperatures[position[k]] if temperatures else None,
                fused[position[k]] if fused else 1.0,
            )
            for k in folds
        ]

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
    """Write ``settings`` as the folder's fusion.json (atomically)."""
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


def fused_folds(
    runs: Path, models: Sequence[str], folds: Sequence[int], weights: Sequence[Sequence[float]], split: str = "test"
) -> list[LogitsSet]:
    """The members' ``split`` logits of ``folds`` fused with each fold's ``weights`` (as
    ``--predict`` mixes them: ``FusionSettings.prediction_weights``), one set per fold."""
    per_fold = {sets[0].fold: sets for sets in run_folder.collect_folds(runs, models, split)}
    missing = [k for k in folds if k not in per_fold]
    if missing:
        raise FusionError(f"{runs}: no {split}_logits.npz of fold(s) {missing} for {', '.join(models)}")
    return [
        replace(per_fold[k][0], logits=fuse([s.logits for s in per_fold[k]], w), arch="fusion")
        for k, w in zip(folds, weights)
    ]
