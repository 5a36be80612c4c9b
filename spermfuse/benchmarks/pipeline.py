"""Data suites: the own augmentation against torchvision's, the loader against the training step,
and the folds at the paper's size."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import synthetic
from ..core.models import create_model
from ..core.transforms import IMAGENET_MEAN, IMAGENET_STD, PAD_COLOR, build
from ..data import loaders, splits
from ..data.folders import discover
from ..data.images import load_rgb
from ..page import markdown_table
from . import profiling
from .context import Benchmark


def sample_images(bench: Benchmark, count: int = 200) -> list:
    """``count`` images of ``--data``, else rendered sperm18 cells."""
    if bench.data is not None:
        samples = discover(bench.data)
        return [load_rgb(samples.root / p) for p in samples.paths[:count]]
    classes = synthetic.SPERM18_CLASSES
    return [synthetic.render("sperm18", classes[i % len(classes)], 42, i)[0] for i in range(count)]


def transforms_suite(bench: Benchmark) -> dict:
    """Own train pipeline vs the equivalent torchvision.transforms.v2 one, same 200 images."""
    from torchvision.transforms import v2

    images = sample_images(bench)
    size = bench.img_size
    ours = build(True, size)

    class LetterboxV2(torch.nn.Module):  # v2 has no letterbox: resize longer side + centred pad
        def forward(self, img):
            h, w = img.shape[-2:]
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            img = v2.functional.resize(img, [nh, nw], antialias=True)
            left, top = (size - nw) // 2, (size - nh) // 2
            return v2.functional.pad(img, [left, top, size - nw - left, size - nh - top], fill=list(PAD_COLOR))

    theirs = v2.Compose(
        [
            v2.PILToTensor(),
            LetterboxV2(),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.3),
            v2.RandomRotation(15, fill=list(PAD_COLOR)),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.3),
            v2.RandomApply([v2.GaussianNoise(sigma=0.04)], p=0.2),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    rng = np.random.default_rng(0)
    times = {"spermfuse": [], "torchvision_v2": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside DataLoader workers, where augmentation runs
    for _ in range(5):  # alternate to share the machine's noise fairly
        start = time.perf_counter()
        for image in images:
            ours(image, rng)
        times["spermfuse"].append((time.perf_counter() - start) / len(images) * 1000)
        start = time.perf_counter()
        for image in images:
            theirs(image)
        times["torchvision_v2"].append((time.perf_counter() - start) / len(images) * 1000)
    torch.set_num_threads(threads)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    bench.say(
        markdown_table(
            ["pipeline", "median ms / image", "images / s"],
            [[k, f"{v:.3f}", f"{1000 / v:.0f}"] for k, v in medians.items()],
        )
    )
    bench.say(
        f"torchvision v2 / spermfuse time ratio: {medians['torchvision_v2'] / medians['spermfuse']:.2f}x ({len(images)} images, {size} px, 5 rounds, 1 thread)\n"
    )
    return {"ms_per_image": medians, "rounds": times}


def loader_suite(bench: Benchmark) -> dict:
    """Images/s of the data loader alone and of the full training step (resnet50v2, batch 8)."""

    with tempfile.TemporaryDirectory() as tmp:
        root = bench.data or synthetic.generate(Path(tmp) / "s", "sperm18", per_class=12)
        samples = discover(root)
        dataset = loaders.ImageDataset(samples, np.arange(len(samples)), build(True, bench.img_size))
        results = {}
        for workers in (0, 2):
            loader = loaders.make_loader(dataset, 8, train=True, num_workers=workers)
            start, seen = time.perf_counter(), 0
            for images, _, _ in loader:
                seen += len(images)
            results[f"loader_workers{workers}"] = seen / (time.perf_counter() - start)
        model = create_model(bench.models[-1], len(samples.classes))
        cost = profiling.training_cost(
            model, bench.device, 8, bench.img_size, bench.amp, bench.train_steps, 3, len(samples.classes)
        )
        results[f"train_step_{bench.models[-1]}"] = cost.images_per_second
    bench.say(markdown_table(["what", "images / s"], [[k, f"{v:.1f}"] for k, v in results.items()]))
    return results


def splits_suite(bench: Benchmark) -> dict:
    """make_folds and one fold's split at the paper's size (18,456 images, 18 classes), by class
    alone and with 300 patient groups; medians of 5 runs after one warm-up (scikit-learn's import)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 18, 18456)
    groups = np.array([f"patient{g:03d}" for g in rng.integers(0, 300, len(labels))])
    classes = [f"class{c:02d}" for c in range(18)]

    def median_seconds(step) -> float:
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))

    times = {}
    for name, given in (("by class", None), ("by class, 300 groups", groups)):
        folds = splits.make_folds(labels, classes, 5, 42, given)  # warm-up: scikit-learn's import on the first
        times[f"make_folds, {name}"] = median_seconds(lambda: splits.make_folds(labels, classes, 5, 42, given))
        times[f"fold_split (+ leakage check), {name}"] = median_seconds(
            lambda: splits.fold_split(folds, labels, 1, 0.1, 42, given)
        )
    bench.say(
        markdown_table(["step (18,456 images, 5 folds)", "median s"], [[k, f"{v:.3f}"] for k, v in times.items()])
    )
    return times
