"""Shared fixtures: small real images written to a temporary folder."""

from __future__ import annotations

import os


def share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker's PyTorch and BLAS use its share of the cores, not all of
    them: their OpenMP threads spin while they wait, so more threads than cores in all slowed every
    test several fold (tests/test_training.py with -n 2 on 2 cores: 139 s, 40 s with one thread a
    worker). Set before torch and numpy load; the scripts the tests run inherit it. A variable the
    user set is kept."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


share_the_cores_between_workers()

import fcntl
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw
from script_runner import REPOSITORY, run_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts (train.py, evaluate.py) import as modules


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Tests never touch the network: resolving any host but this machine fails."""
    resolve = socket.getaddrinfo

    def local(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            raise OSError(f"the tests never touch the network (asked for {host})")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local)
    # Nor does a user's own setting reach them (subprocesses inherit this environment).
    for variable in ("SPERMFUSE_WEIGHTS_CATALOGUE", "SPERMFUSE_ALLOW_HTTP"):
        monkeypatch.delenv(variable, raising=False)


def draw_cell(size: tuple[int, int], radius: int, seed: int) -> Image.Image:
    """A dark stained ellipse on a light beige background, a little noisy."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (204, 191, 183))
    draw = ImageDraw.Draw(image)
    cx, cy = size[0] // 2 + int(rng.integers(-3, 4)), size[1] // 2 + int(rng.integers(-3, 4))
    draw.ellipse([cx - radius, cy - radius // 2, cx + radius, cy + radius // 2], fill=(120, 60, 140))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder with classes Big (6 images) and Small (5 images)."""
    root = tmp_path / "images"
    for name, radius, count in (("Small", 6, 5), ("Big", 14, 6)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            draw_cell((48 + i, 40), radius, seed=i + radius).save(root / name / f"{name.lower()}_{i}.png")
    return root


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build(folder)`` fills, built once for the whole test session: the README's
    command runs the tests in pytest-xdist workers, which share it (the first to need it builds
    it under a lock; the others wait, then read it)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (root / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_sperm(tmp_path_factory) -> Path:
    """A small synthetic sperm18 set (6 images per class), generated once per test session."""
    from spermfuse import synthetic

    def generate(folder: Path) -> None:
        synthetic.generate(folder / "sperm18", "sperm18", seed=42, per_class=6)

    return built_once(tmp_path_factory, "data", generate) / "sperm18"


@pytest.fixture(scope="session")
def demo_output(tiny_sperm, tmp_path_factory) -> Path:
    """demo.sh --preset tiny run once for the session: <folder>/runs and <folder>/reports (tests copy
    what they change)."""

    def run_demo(folder: Path) -> None:
        env = {**os.environ, "PYTHON": sys.executable}
        command = ["bash", "demo.sh", "--preset", "tiny", "--data", str(tiny_sperm)]
        command += ["--out", str(folder / "runs"), "--reports", str(folder / "reports")]
        result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "demo", run_demo)


def tiny_config(data: Path, out: Path, **overrides):
    """A TrainConfig that trains in seconds: tiny model, 32 px, two epochs, no workers."""
    from spermfuse.training.trainer import TrainConfig

    settings = dict(
        arch="resnetv2_tiny", data=str(data), out=str(out), img_size=32, epochs=2, workers=0, lr=1e-3, val_fraction=0.2
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def fold_trainer_for(config, **options):
    """A FoldTrainer of ``config`` with its setup made, as train.py does."""
    from spermfuse.training import fold_setup, trainer

    setup = fold_setup.setup_fold(config)
    return trainer.FoldTrainer(setup, fold_setup.build_fold(config, setup), **options)


# Logits files of made-up models, for the fusion and evaluation tests.
CLASSES = ["A", "B", "C"]


def write_logits(path, logits, labels, paths, arch, fold, classes=CLASSES, **extra):
    """A logits file in the schema of run_folder.save_logits (``extra``: more keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        logits=np.asarray(logits, np.float32),
        labels=np.asarray(labels, np.int64),
        paths=np.array(paths, dtype=str),
        classes=np.array(classes, dtype=str),
        arch=np.array(arch),
        fold=np.array(fold, dtype=np.int64),
        **extra,
    )


def write_calibration_logits(root, folds=5, n=80, shared=False, seed=7, noise=1.0):
    """cal_logits.npz of modelx and modely in every fold: per-fold cells (train.py --cal-fraction)
    or, ``shared``, the same ``n`` cells in every fold (--cal-holdout), in a different order per file."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    for k in range(1, folds + 1):
        names = [f"held_{i}.png" if shared else f"cal_{k}_{i}.png" for i in range(n)]
        order = rng.permutation(n)  # files need not share an order
        for arch in ("modelx", "modely"):
            logits = np.eye(3)[labels] * 2 + rng.normal(0, noise, (n, 3))
            write_logits(
                root / arch / f"fold{k}" / "cal_logits.npz",
                logits[order],
                labels[order],
                [names[i] for i in order],
                arch,
                k,
            )


def fake_runs(root, folds=5, n=60, seed=0, classes=CLASSES):
    """Two models whose errors differ: fusing them beats both (three ``classes``)."""
    rng = np.random.default_rng(seed)
    for k in range(1, folds + 1):
        labels = rng.integers(0, 3, n)
        paths = [f"img_{k}_{i}.png" for i in range(n)]
        truth = np.eye(3)[labels]
        for arch, noise in (("modelx", 1.2), ("modely", 1.2)):
            for split in ("test", "val"):
                logits = truth * 1.0 + rng.normal(0, noise, (n, 3))
                order = rng.permutation(n)  # files need not share an order
                write_logits(
                    root / arch / f"fold{k}" / f"{split}_logits.npz",
                    logits[order],
                    labels[order],
                    [paths[i] for i in order],
                    arch,
                    k,
                    classes,
                )
    return root


def run_train(*flags: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script("train.py", *flags, **kwargs)


def fuse_fake_pair(runs: Path, *flags: str) -> subprocess.CompletedProcess:
    """``fuse.py FLAGS`` on the two models of :func:`fake_runs`."""
    return run_script("fuse.py", *flags, "--runs", str(runs), "--models", "modelx", "modely")


# Deployed models (tests/test_deployed.py, tests/test_bf16.py): an export of the tiny demo, cells
# to classify, and the cells an export's rules were certified on.
def tiny_demo_export(demo_output: Path, tmp_path_factory, precision: str) -> dict:
    """The tiny demo's pair fused with a certified referral and sets, and fold 2 exported with its
    ``precision`` model (forced: whether the barely trained pair's reduced twin reaches the default
    floor varies with the packages' versions; each guard has its own test); the paths by name."""
    runs = demo_output / "runs"
    members = ["--runs", str(runs), "--models", "efficientnet_tiny", "resnetv2_tiny"]

    def export(folder: Path) -> None:
        fusion = [*members, "--out", str(folder / "fusion")]
        grid = run_script(
            "fuse.py", "--grid", "--select", "val", "--refer-accuracy", "0.2", "--sets-alpha", "0.2", *fusion
        )
        assert grid.returncode == 0, grid.stderr
        command = ["--export", str(folder / "deploy"), "--fold", "2", "--precision", precision, "--force-precision"]
        forced = run_script("fuse.py", *command, *fusion)
        assert forced.returncode == 0, forced.stderr

    folder = built_once(tmp_path_factory, f"exported_{precision}", export)
    return {"runs": runs, "models": [*members, "--out", str(folder / "fusion")], "deploy": folder / "deploy"}


NEW_CELLS = ("Normal/Normal_00000.png", "PinHead/PinHead_00003.png", "ThinNeck/ThinNeck_00001.png")


@pytest.fixture
def new_cells(tiny_sperm, tmp_path) -> Path:
    """Three cells to classify, in a folder of their own."""
    folder = tmp_path / "new"
    folder.mkdir()
    for index, name in enumerate(NEW_CELLS):
        shutil.copy(tiny_sperm / name, folder / f"cell{index}.png")
    return folder


def calibration_cells(runs: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fold 2's calibration cells letterboxed as the exported graph takes them, and their labels."""
    from spermfuse.core.fused_model import load_classifier
    from spermfuse.core.logits import load_logits
    from spermfuse.data.images import load_rgb

    cells = load_logits(runs / "efficientnet_tiny" / "fold2" / "cal_logits.npz")
    pipeline = load_classifier(runs / "efficientnet_tiny" / "fold2" / "best.pt").pipeline
    root = Path(json.loads((runs / "efficientnet_tiny" / "fold2" / "config.json").read_text())["data_root"])
    rng = np.random.default_rng(0)
    batch = np.stack([np.asarray(pipeline.geometry(load_rgb(root / p), rng)).transpose(2, 0, 1) for p in cells.paths])
    return batch, cells.labels


def probabilities_of(rows: list[dict]) -> np.ndarray:
    """The ``p_<class>`` columns of predictions.csv rows, as a matrix."""
    return np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in rows])


def recertified_rules(fp32_rules: dict, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """What a reduced model's ``decision`` must be: the fp32 rules' settings certified anew on its
    own calibration probabilities, by the core functions (not by the export's code)."""
    from spermfuse.core.conformal import calibrate_sets
    from spermfuse.core.selective import certify_threshold

    referral, sets = fp32_rules["referral"], fp32_rules["prediction_sets"]
    correct = probabilities.argmax(1) == labels
    threshold = certify_threshold(
        probabilities.max(1), correct, referral["target_accuracy"], referral["delta"], referral["method"]
    )
    return {
        "referral": threshold.to_dict(),
        "prediction_sets": calibrate_sets(probabilities, labels, sets["alpha"], sets["method"]).to_dict(),
    }
