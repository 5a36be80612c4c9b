"""Real-data suites (docs/REAL_DATA.md): a classical baseline on the same folds as the networks,
and what the duplicate check costs beside a training epoch.

- ``baseline``: a support-vector machine (RBF) on each image's letterboxed grey pixels at 32 px,
  standardised, trained on every fold's other folds and tested on the fold; the folds are the
  data's own (HuSHeM's fold<k>/ folders), else a ``folds.csv`` (``--folds-csv``, the networks'
  split), else made as train.py makes them (stratified 5-fold, seed 42, duplicates tied).
- ``duplicates``: listing the files; decoding every image (the check that was there before), and
  decoding with the duplicate detection (fingerprints, then groups), in one process and in as many
  as ``discover`` uses for this set: the difference is what the check costs in wall time; the
  detection alone on images decoded beforehand (its CPU time; the thumbnails and the pair search
  also on their own). Every step once a round, medians over ``--rounds``, against the mean epoch
  of a run's ``history.csv`` (``--epoch-from``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import ConfigError
from ..core.files import read_csv
from ..core.metrics import mean_std_ci
from ..data import splits
from ..data.duplicates import Fingerprinter, fingerprint, near_pairs, resolve, unit_thumbnails
from ..data.folders import Samples, discover
from ..data.images import check_image, load_rgb, read_image
from ..data.reading import forked_pool, read_every_image, reading_processes, stretches
from ..page import markdown_table
from .context import Benchmark
from .profiling import time_interleaved

BASELINE_SIDE = 32


def grey_pixels(path: Path, side: int = BASELINE_SIDE) -> np.ndarray:
    """The image letterboxed onto its own border's grey, reduced to ``side`` x ``side``, as a vector."""
    grey = load_rgb(path).convert("L")
    values = np.asarray(grey)
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    square = max(grey.size)
    canvas = Image.new("L", (square, square), int(np.median(border)))
    canvas.paste(grey, ((square - grey.width) // 2, (square - grey.height) // 2))
    return np.asarray(canvas.resize((side, side), Image.Resampling.BOX), dtype=np.float32).ravel() / 255.0


def folds_of(samples: Samples, folds_csv: Path | None) -> np.ndarray:
    """The data's own folds, else ``folds_csv``'s, else train.py's default split of ``samples``."""
    if samples.folds is not None:
        return samples.folds
    if folds_csv is not None:
        if not Path(folds_csv).is_file():
            raise ConfigError(f"--folds-csv {folds_csv}: not found; give the folds.csv train.py wrote under its --out")
        return splits.read_folds(folds_csv, samples)
    folds = splits.make_folds(samples.labels, samples.classes, 5, 42, samples.groups)
    for copy, first in samples.copies.items():
        folds[copy] = folds[first]
    return folds


def svm_fold_accuracies(features: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> list[float]:
    """Accuracy of an RBF support-vector machine on standardised features, fold by fold."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    accuracies = []
    for fold in sorted(set(folds.tolist())):
        test = folds == fold
        model = make_pipeline(StandardScaler(), SVC(C=10.0, kernel="rbf", gamma="scale"))
        model.fit(features[~test], labels[~test])
        accuracies.append(float((model.predict(features[test]) == labels[test]).mean()))
    return accuracies


def baseline_suite(bench: Benchmark) -> dict:
    """The classical baseline beside the networks (module docstring)."""
    if bench.data is None:
        raise ConfigError("--suite baseline needs --data DIR (the data the networks were trained on)")
    samples = discover(bench.data, duplicates=bench.duplicates)
    folds = folds_of(samples, bench.folds_csv)
    start = time.perf_counter()
    features = np.stack([grey_pixels(path) for path in samples.absolute_paths])
    accuracies = svm_fold_accuracies(features, samples.labels, folds)
    seconds = time.perf_counter() - start
    test_share = float(np.mean([np.mean(folds == k) for k in set(folds.tolist())]))
    summary = mean_std_ci(accuracies, test_train_ratio=test_share / (1 - test_share))
    low, high = summary["ci95_corrected"]
    rows = [[f"fold {k}", f"{a:.4f}"] for k, a in zip(sorted(set(folds.tolist())), accuracies)]
    rows.append(["mean (corrected 95 % interval)", f"{summary['mean']:.4f} [{low:.4f}, {high:.4f}]"])
    source = "the data's own folds" if samples.folds is not None else (bench.folds_csv or "train.py's 5-fold split")
    bench.table(
        markdown_table(["SVM (RBF) on 32 px grey pixels", "accuracy"], rows)
        + f"\n\n{len(samples)} images, {len(samples.classes)} classes, folds: {source}; {seconds:.1f} s in all.",
        f"--data {bench.data} --duplicates {bench.duplicates}"
        + (f" --folds-csv {bench.folds_csv}" if bench.folds_csv else ""),
    )
    return {"accuracy_per_fold": accuracies, **summary, "seconds": seconds}


def decode_stretch(paths: list[Path]) -> list[str | None]:
    """Decode each file, as the check did before duplicates were looked for."""
    return [check_image(path) for path in paths]


def duplicates_suite(bench: Benchmark) -> dict:
    """The cost of the duplicate check on ``--data`` beside a training epoch (module docstring)."""
    if bench.data is None or bench.epoch_from is None:
        raise ConfigError("--suite duplicates needs --data DIR and --epoch-from RUN (a run folder with history.csv)")
    history_file = Path(bench.epoch_from) / "history.csv"
    if not history_file.is_file():
        raise ConfigError(
            f"--epoch-from {bench.epoch_from}: no history.csv there; give a fold folder train.py wrote "
            "(<runs>/<arch>/fold1)"
        )
    epoch = statistics.mean(float(row["seconds"]) for row in read_csv(history_file))
    listed = discover(bench.data, check_images=False)
    paths = listed.absolute_paths
    processes = sorted({1, reading_processes(len(paths))})

    def decode_in(count: int) -> None:
        if count == 1:
            decode_stretch(paths)
            return
        with forked_pool(count) as pool:
            list(pool.map(decode_stretch, stretches(paths, count)))

    def read_and_group(count: int) -> None:
        fingerprints = read_every_image(paths, count)[1]
        fingerprints.groups(lambda i: read_image(paths[i])[0])

    # The detection alone, on images decoded beforehand, so that the decoding's noise is not
    # charged to it; the pixel digests re-read their files, as discover does.
    images = [read_image(path)[0] for path in paths]

    def detect() -> list:
        fingerprints = Fingerprinter()
        for image in images:
            fingerprints.add(image)
        return fingerprints.groups(lambda i: read_image(paths[i])[0])

    unit = unit_thumbnails([fingerprint(image) for image in images])
    steps = {"listing": lambda: discover(bench.data, check_images=False), "detection": detect}
    steps |= {"thumbnails": lambda: [fingerprint(image) for image in images], "pair_search": lambda: near_pairs(unit)}
    for count in processes:
        steps[f"decoding_{count}"] = lambda count=count: decode_in(count)
        steps[f"reading_{count}"] = lambda count=count: read_and_group(count)
    timed = time_interleaved(steps, torch.device("cpu"), warmup=1, iters=bench.rounds)
    seconds = {name: latency.median_ms / 1000 for name, latency in timed.items()}
    found, _ = resolve(detect(), [listed.classes[label] for label in listed.labels], len(paths), "keep")

    def share(cost: float) -> str:
        return f"{cost:.2f} s, {100 * cost / epoch:.1f} % of an epoch"

    rows = [["listing the files", f"{seconds['listing']:.2f}", ""]]
    for count in processes:
        decoding, reading = seconds[f"decoding_{count}"], seconds[f"reading_{count}"]
        name = f"{count} process" + ("es (as discover reads this set here)" if count > 1 else "")
        rows += [
            [f"{name}: decoding every image once (the check before duplicates)", f"{decoding:.2f}", ""],
            [
                f"{name}: decoding, fingerprints and duplicate groups",
                f"{reading:.2f}",
                f"the check: {share(reading - decoding)}",
            ],
        ]
    rows += [
        [
            "fingerprints and duplicate groups alone (1 process, images decoded beforehand)",
            f"{seconds['detection']:.2f}",
            f"{share(seconds['detection'])}, {seconds['detection'] / seconds['decoding_1']:.2f} of decoding",
        ],
        ["- of which the grey thumbnails", f"{seconds['thumbnails']:.2f}", ""],
        ["- of which the near-duplicate pair search", f"{seconds['pair_search']:.2f}", ""],
        [f"one training epoch (mean of {bench.epoch_from}/history.csv)", f"{epoch:.2f}", ""],
    ]
    bench.table(
        markdown_table(["step", "seconds (median)", ""], rows)
        + f"\n\n{len(paths)} images, {bench.rounds} rounds, every step once a round. Found: {found.summary()}.",
        f"--data {bench.data} --epoch-from {bench.epoch_from} --rounds {bench.rounds}",
    )
    return {**seconds, "epoch": epoch, "images": len(paths), "processes": processes[-1]}
