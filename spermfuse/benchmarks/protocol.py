"""Protocol suites: fusion and evaluation at the paper's size, what the file guarantees cost, the
promises (certified referral, prediction sets) at scale, per-sample fractions on simulated
patients, one sample report end to end, and training folds in parallel.

Long because it is a list: one function per suite, each read on its own."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import synthetic
from ..core.conformal import calibrate_sets, predict_sets, set_metrics
from ..core.fused_model import Classifier, FusedModel
from ..core.logits import pooled
from ..core.metrics import confusion_counts
from ..core.models import create_model
from ..core.quantify import class_fractions
from ..core.selective import accepted_accuracy, certify_threshold
from ..core.transforms import PipelineSpec, from_spec
from ..data.taxonomy import MORPHOLOGY_GROUP, SPERM18_CLASSES
from ..deploy.bf16 import BF16_FILE
from ..deploy.deployed import file_probabilities
from ..deploy.export import export_onnx, export_program, onnx_available
from ..deploy.inference import fused_probabilities, list_images
from ..deploy.quantize import quantize_int8
from ..deploy.reduced_precision import letterboxed_batch
from ..deploy.sample_report import (
    HeldOutConfusion,
    Provenance,
    SampleSettings,
    estimate_samples,
    split_samples,
    write_sample_pages,
)
from ..page import markdown_table
from ..reporting.sample_simulation import SimulationSetting, coverage_table
from ..store.lock import LOCK_NAME, FolderLock
from ..store.output_folder import discard, move_aside, verify_folder, write_manifest
from ..store.run_folder import load_fold_sets
from ..training import trainer
from ..training.config import preset_config
from .ceiling import fastest_matrix_rate, matrix_multiply_adds
from .context import Benchmark


def paper_size_runs(runs: Path) -> Path:
    """Made-up logits of the paper's size under ``runs``: 18,456 test samples in 5 folds, 18
    classes, efficientnetv2_s and resnet50v2, and a validation set per fold."""
    rng = np.random.default_rng(0)
    classes = np.array([f"class{c:02d}" for c in range(18)])

    def write(folder: Path, split: str, part: np.ndarray, labels: np.ndarray, arch: str, fold: int) -> None:
        logits = (np.eye(18)[labels] * 2 + rng.normal(0, 1.5, (len(part), 18))).astype(np.float32)
        np.savez(
            folder / f"{split}_logits.npz",
            logits=logits,
            labels=labels,
            paths=np.array([f"{split}{i}.png" for i in part]),
            classes=classes,
            arch=np.array(arch),
            fold=np.array(fold),
        )

    for k, part in enumerate(np.array_split(np.arange(18456), 5), start=1):
        val = part[: len(part) // 4]  # about the 10 % validation share of 14,765 training images
        test_labels, val_labels = rng.integers(0, 18, len(part)), rng.integers(0, 18, len(val))
        for arch in ("efficientnetv2_s", "resnet50v2"):
            folder = runs / arch / f"fold{k}"
            folder.mkdir(parents=True)
            write(folder, "test", part, test_labels, arch, k)
            write(folder, "val", val, val_labels, arch, k)
    return runs


def run_seconds(bench: Benchmark, command: list[str]) -> float:
    """Wall seconds of ``python COMMAND`` run in the scripts' folder (interpreter start included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, capture_output=True, cwd=bench.scripts)
    return time.perf_counter() - start


def script_main(bench: Benchmark, name: str) -> Callable[[list[str]], int]:
    """The ``main`` of one of the scripts (``fuse.py``...), loaded from the scripts' folder, to time
    a command's work in this process."""
    spec = importlib.util.spec_from_file_location(f"_benchmarked_{name}", bench.scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def fusion_suite(bench: Benchmark) -> dict:
    """fuse.py --grid and evaluate.py (with figures) on made-up logits of the paper's size
    (:func:`paper_size_runs`). Each command runs with and without what calibration and
    referral add, side by side, in --rounds interleaved rounds (medians)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = paper_size_runs(Path(tmp) / "runs")
        evaluate = ["evaluate.py", "--runs", str(runs), "--reports", str(Path(tmp) / "r"), "--overwrite"]
        commands = [
            ("fuse --grid (11 weights x 5 folds)", ["fuse.py", "--grid", "--runs", str(runs), "--overwrite"]),
            (
                "fuse --grid --select val --calibrate --refer-accuracy 0.9 --sets-alpha 0.1",
                [
                    "fuse.py",
                    "--grid",
                    "--runs",
                    str(runs),
                    "--select",
                    "val",
                    "--calibrate",
                    "--refer-accuracy",
                    "0.9",
                    "--sets-alpha",
                    "0.1",
                    "--overwrite",
                ],
            ),
            ("evaluate (5 models, tables + figures, with calibration)", evaluate),
        ]
        # The same runs without validation logits, fused once (untimed): evaluate without temperatures.
        plain = Path(tmp) / "runs_without_val"
        shutil.copytree(runs, plain, ignore=shutil.ignore_patterns("*val_logits.npz"))
        run_seconds(bench, ["fuse.py", "--grid", "--runs", str(plain)])
        commands.append(
            (
                "evaluate (5 models, without validation logits: no temperatures)",
                [
                    "evaluate.py",
                    "--runs",
                    str(plain),
                    "--reports",
                    str(Path(tmp) / "r"),
                    "--name",
                    "plain",
                    "--overwrite",
                ],
            )
        )
        times = {name: [] for name, _ in commands}
        for _ in range(bench.rounds):  # interleaved, so the with/without pairs share the machine's noise
            for name, command in commands:
                times[name].append(run_seconds(bench, command))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    bench.say(
        markdown_table(
            ["command (18,456 x 18 logits, 5 folds)", "median seconds (incl. interpreter start)"],
            [[k, f"{v:.1f}"] for k, v in medians.items()],
        )
    )
    return medians


def guarantees_suite(bench: Benchmark) -> dict:
    """What the file guarantees cost (docs/GUARANTEES.md): the fusion folder's manifest (written
    once, checked by every reader) against ``fuse.py --grid`` at the paper's size, and the run
    folder's lock and --overwrite's move-aside against a tiny training run. In one process,
    interleaved rounds, medians."""
    fuse_main = script_main(bench, "fuse")

    def seconds(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {
        key: [] for key in ("grid", "grid command", "manifest", "verify", "train", "train command", "lock", "aside")
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = paper_size_runs(Path(tmp) / "runs")
        data = synthetic.generate(Path(tmp) / "data", "hushem4", seed=0, per_class=8)
        config = preset_config(
            "tiny", arch="efficientnet_tiny", data=str(data), out=str(Path(tmp) / "tiny"), device="cpu"
        )
        train_command = [
            "train.py",
            "--preset",
            "tiny",
            "--arch",
            config.arch,
            "--data",
            config.data,
            "--out",
            config.out,
            "--device",
            "cpu",
            "--overwrite",
        ]
        for _ in range(bench.rounds):
            times["grid"].append(seconds(lambda: fuse_main(["--grid", "--runs", str(runs), "--overwrite"])))
            times["grid command"].append(run_seconds(bench, ["fuse.py", "--grid", "--runs", str(runs), "--overwrite"]))
            times["manifest"].append(seconds(lambda: write_manifest(runs / "fusion")))
            times["verify"].append(seconds(lambda: verify_folder(runs / "fusion")))
            times["train"].append(seconds(lambda: trainer.train_fold(replace(config, overwrite=True))))
            times["train command"].append(run_seconds(bench, train_command))
            times["lock"].append(
                seconds(
                    lambda: (
                        FolderLock(config.run_dir(), "benchmark").acquire() or (config.run_dir() / LOCK_NAME).unlink()
                    )
                )
            )
            times["aside"].append(seconds(lambda: discard(move_aside(config.run_dir(), keep=set()))))
            trainer.train_fold(replace(config, overwrite=True))  # the next round's move-aside has a run to move
    medians = {name: float(np.median(values)) for name, values in times.items()}
    unit = medians["manifest"] + medians["verify"]
    run_folder = medians["lock"] + medians["aside"]

    def share(cost: float, of: str) -> str:
        return f"{100 * cost / medians[of]:.2f} % of {medians[of]:.3f} s"

    rows = [
        [
            "fuse.py --grid, 18,456 x 18 logits, 5 folds: manifest written once + checked once",
            f"{unit:.4f}",
            share(unit, "grid"),
            share(unit, "grid command"),
        ],
        [
            "train.py --preset tiny, one fold (hushem4, 8 per class): lock + --overwrite's move-aside",
            f"{run_folder:.4f}",
            share(run_folder, "train"),
            share(run_folder, "train command"),
        ],
    ]
    bench.table(
        markdown_table(
            ["guard", "median s", "share of the work in process", "share of the command (python ..., incl. start-up)"],
            rows,
        ),
    )
    return medians | {
        "unit_share_of_grid": unit / medians["grid"],
        "run_folder_share_of_tiny_run": run_folder / medians["train"],
    }


def promises_suite(bench: Benchmark) -> dict:
    """The certified referral and the conformal sets at the paper's scale, on a simulated model
    that is calibrated by construction (18 classes, each cell's probabilities from a Dirichlet and
    its label drawn from them, about 70 % top-1): 5 folds of 1,500 calibration and 3,691 test cells.
    Per fold and pooled: the certified threshold, accepted share and accuracy with its interval,
    set coverage and size; and the seconds certification and set calibration take on 5 folds of
    18,456 x 18 probabilities (--rounds, medians)."""
    rng = np.random.default_rng(0)

    def cells(n: int) -> tuple[np.ndarray, np.ndarray]:
        probabilities = rng.dirichlet(np.full(18, 0.04), n)
        return probabilities, (probabilities.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1).clip(max=17)

    rows, covered, accepted_all, correct_all = [], [], [], []
    for fold in range(1, 6):
        (pc, yc), (pt, yt) = cells(1500), cells(3691)
        certificate = certify_threshold(pc.max(axis=1), pc.argmax(axis=1) == yc, 0.9, 0.1)
        outcome = accepted_accuracy(pt.max(axis=1), pt.argmax(axis=1) == yt, certificate.threshold)
        sets, lac = (
            set_metrics(predict_sets(pt, calibrate_sets(pc, yc, 0.1, method)), yt, [str(c) for c in range(18)])
            for method in ("aps", "lac")
        )
        rows.append(
            [
                fold,
                f"{certificate.threshold:.4f}",
                f"{1 - outcome['referred_share']:.3f}",
                f"{outcome['accepted_accuracy']:.4f}",
                f"[{outcome['interval'][0]:.4f}, {outcome['interval'][1]:.4f}]",
                f"{sets['coverage']:.4f}",
                f"{sets['mean_size']:.2f}",
                f"{lac['coverage']:.4f}",
                f"{lac['mean_size']:.2f}",
            ]
        )
        accepted_all.append(pt.max(axis=1) >= certificate.threshold)
        correct_all.append(pt.argmax(axis=1) == yt)
        covered.append((sets["coverage"], sets["mean_size"], lac["coverage"], lac["mean_size"]))
    pooled = accepted_accuracy(np.concatenate(accepted_all).astype(float), np.concatenate(correct_all), 0.5)
    rows.append(
        [
            "pooled",
            "",
            f"{1 - pooled['referred_share']:.3f}",
            f"{pooled['accepted_accuracy']:.4f}",
            f"[{pooled['interval'][0]:.4f}, {pooled['interval'][1]:.4f}]",
            *(
                f"{value:.4f}" if column % 2 == 0 else f"{value:.2f}"
                for column, value in enumerate(np.mean(covered, axis=0))
            ),
        ]
    )
    probabilities, labels = cells(18456)

    def certify_and_calibrate() -> None:
        for _ in range(5):
            certify_threshold(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels, 0.9, 0.1)
            predict_sets(probabilities, calibrate_sets(probabilities, labels, 0.1, "aps"))

    seconds = []
    for _ in range(bench.rounds):
        start = time.perf_counter()
        certify_and_calibrate()
        seconds.append(time.perf_counter() - start)
    table = markdown_table(
        [
            "fold",
            "certified threshold (TAU 0.9, delta 0.1)",
            "accepted share",
            "accepted accuracy",
            "95 % interval",
            "set coverage (alpha 0.1, aps)",
            "mean set size",
            "set coverage (lac)",
            "mean set size (lac)",
        ],
        rows,
    )
    timing = f"\nCertification and APS set calibration + prediction on 5 x 18,456 x 18 probabilities: median {np.median(seconds):.2f} s over {bench.rounds} rounds.\n"
    bench.table(table + timing)
    return {"seconds": float(np.median(seconds)), "pooled_accepted_accuracy": pooled["accepted_accuracy"]}


def samples_suite(bench: Benchmark) -> dict:
    """quantify.py's methods on simulated patients (sample_simulation.py): samples of 200 cells drawn
    from the held-out cells of --logits-from, the confusion from the other half (or 300 of them);
    then the seconds one 200-cell sample's estimate takes (acc, --boot replicates, medians)."""
    sets = load_fold_sets(bench.logits_from)
    labels, logits = pooled(sets)
    classes = sets[0].classes
    settings = [
        SimulationSetting(method, cells, samples=bench.simulated_samples, n_boot=bench.boot)
        for method in ("cc", "acc", "pcc", "em")
        for cells in (None, 300)
    ]
    table, results = coverage_table(logits, labels, classes, MORPHOLOGY_GROUP, settings)
    confusion = confusion_counts(labels, logits.argmax(axis=1), len(classes))
    seconds = []
    for round_ in range(bench.rounds):
        start = time.perf_counter()
        class_fractions(
            logits[:200].argmax(axis=1), confusion, classes, n_boot=2000, seed=round_, groups=MORPHOLOGY_GROUP
        )
        seconds.append(time.perf_counter() - start)
    source = f"{len(labels)} held-out cells of {bench.logits_from} ({len(sets)} folds)"
    timing = (
        f"\nHeld-out cells: {source}; {bench.simulated_samples} simulated patients of 200 cells per row, "
        f"{bench.boot} bootstrap replicates per interval. One sample's acc estimate with 2,000 replicates: "
        f"median {np.median(seconds):.2f} s over {bench.rounds} rounds.\n"
    )
    flags = f"--logits-from {bench.logits_from} --simulated-samples {bench.simulated_samples} --boot {bench.boot} --rounds {bench.rounds}"
    bench.table(table + timing, flags)
    return {"rows": results, "estimate_seconds": float(np.median(seconds))}


REPORT_CELLS = 200
# The matrix product each of the sample-report suite's runtimes is built on (ceiling.RUNTIMES).
MATRIX_RUNTIME = {
    "eager": "PyTorch fp32",
    "bf16 program (--precision bf16)": "PyTorch bf16",
    "ONNX Runtime": "ONNX Runtime fp32",
    "ONNX Runtime int8": "ONNX Runtime int8",
}


def sample_report_suite(bench: Benchmark) -> dict:
    """The seconds from a folder of 200 cell images to its sample report (--models, random weights,
    one fold, a = 0.5): read and letterbox the images, the fused probabilities (eager, the bf16
    program in PyTorch, or ONNX Runtime on the exported graph, fp32 or int8, as ``--predict
    --deployed`` runs each; the program or session loaded in each round), the acc estimate with
    2,000 replicates and the page with its two figures. Medians of --rounds rounds per runtime,
    interleaved; beside each, its arithmetic floor (ceiling.py): the pair's matrix work for the 200
    cells at the fastest matrix product that runtime runs here."""

    classes = list(SPERM18_CLASSES)
    spec = PipelineSpec(bench.img_size)
    pair = [Classifier(create_model(name, len(classes)).eval(), spec, classes, Path(name)) for name in bench.models]
    held_out = HeldOutConfusion(np.eye(len(classes)) * 40 + 2, classes, "a made-up confusion (timing only)")
    settings = SampleSettings(groups=dict(MORPHOLOGY_GROUP))
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.generate(Path(tmp) / "cells", "sperm18", seed=0, per_class=12)
        (Path(tmp) / "samples" / "patient").mkdir(parents=True)
        for path in list_images(data)[:REPORT_CELLS]:
            (Path(tmp) / "samples" / "patient" / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
        root = Path(tmp) / "samples"
        (Path(tmp) / "fusion.json").write_text("{}")
        provenance = Provenance(list(bench.models), 1, Path(tmp) / "fusion.json", held_out.source)
        pipeline = from_spec(spec)

        def report(probabilities_of) -> None:
            images = list_images(root)
            samples = split_samples(root, images)
            probabilities = probabilities_of(images)
            estimate_samples(samples, probabilities, held_out, settings)
            write_sample_pages(Path(tmp) / "report", samples, images, probabilities, classes, settings, provenance)

        runners = {"eager": lambda images: fused_probabilities(images, [pair], [[0.5, 0.5]])}
        bf16 = Path(tmp) / BF16_FILE
        bf16.write_bytes(export_program(FusedModel([pair], [[0.5, 0.5]]).eval(), bench.img_size, bf16=True))
        runners["bf16 program (--precision bf16)"] = lambda images: file_probabilities(bf16, pipeline, images, 16)
        if onnx_available(runtime=True):
            fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
            export_onnx(FusedModel([pair], [[0.5, 0.5]]).eval(), bench.img_size, fp32)
            # Random weights, calibrated on 32 of the cells: the speed of --deployed --precision int8, not its accuracy.
            quantize_int8(fp32, int8, letterboxed_batch(pipeline, list_images(root)[:32]))
            runners["ONNX Runtime"] = lambda images: file_probabilities(fp32, pipeline, images, 16)
            runners["ONNX Runtime int8"] = lambda images: file_probabilities(int8, pipeline, images, 16)
        seconds = {name: [] for name in runners}
        for _ in range(bench.rounds):
            for name, runner in runners.items():
                start = time.perf_counter()
                report(runner)
                seconds[name].append(time.perf_counter() - start)
    multiply_adds = matrix_multiply_adds([member.model for member in pair], bench.img_size)
    rates = {name: fastest_matrix_rate(MATRIX_RUNTIME[name]) for name in runners}
    floors = {name: REPORT_CELLS * multiply_adds / rate for name, rate in rates.items()}
    rows = [
        [
            name,
            f"{np.median(s):.2f}",
            f"{min(s):.2f}",
            f"{max(s):.2f}",
            f"{floors[name]:#.3g}",
            f"{np.median(s) / floors[name]:.1f}x",
        ]
        for name, s in seconds.items()
    ]
    title = f"One {REPORT_CELLS}-cell sample report: {' + '.join(bench.models)} at {bench.img_size} px, {torch.get_num_threads()} threads, {bench.rounds} rounds\n\n"
    products = ", ".join(f"{MATRIX_RUNTIME[name]} {rate / 1e9:.0f}" for name, rate in rates.items())
    note = (
        f"\nFloor: the pair's {multiply_adds / 1e9:.3g} G multiply-adds of convolutions and matrix products per cell, "
        f"times {REPORT_CELLS} cells, at the fastest square matrix product each runtime runs on this CPU "
        f"(G multiply-adds/s: {products}); nothing else of the report is counted.\n"
    )
    flags = f"--models {' '.join(bench.models)} --img-size {bench.img_size} --rounds {bench.rounds}"
    headers = ["runtime", "median s", "fastest s", "slowest s", "floor s", "median / floor"]
    bench.table(title + markdown_table(headers, rows) + note, flags)
    return {
        "median_s": {name: float(np.median(s)) for name, s in seconds.items()},
        "floor_s": floors,
        "matrix_multiply_adds_per_cell": multiply_adds,
        "fastest_matrix_product_per_s": {MATRIX_RUNTIME[name]: rate for name, rate in rates.items()},
    }


def scale_out_suite(bench: Benchmark) -> dict:
    """The wall time of training --models' first architecture on both folds of the tiny preset
    (10 epochs, 6 synthetic images a class): one fold after the other with 2 and with 1 CPU
    thread, and the two folds at once under torchrun --fold-parallel (2 processes, 1 thread each,
    what torchrun sets). Medians of --rounds rounds, interleaved."""

    arch = bench.models[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.generate(Path(tmp) / "data", "sperm18", seed=42, per_class=6)
        flags = ["--preset", "tiny", "--epochs", "10", "--early-stopping", "10", "--data", str(data), "--arch", arch]
        flags += ["--fold", "all", "--device", "cpu"]
        variants = {
            "sequential, 2 threads": ("2", [sys.executable, "train.py"]),
            "sequential, 1 thread": ("1", [sys.executable, "train.py"]),
            "--fold-parallel, 2 processes x 1 thread": (
                "1",
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
                + ["train.py", "--fold-parallel"],
            ),
        }
        seconds = {name: [] for name in variants}
        for round_ in range(bench.rounds):
            for number, (name, (threads, launcher)) in enumerate(variants.items()):
                out = Path(tmp) / f"runs{round_}_{number}"
                environment = {**os.environ, "OMP_NUM_THREADS": threads}
                start = time.perf_counter()
                subprocess.run(
                    [*launcher, *flags, "--out", str(out)],
                    check=True,
                    capture_output=True,
                    env=environment,
                    cwd=bench.scripts,
                )
                seconds[name].append(time.perf_counter() - start)
    base = np.median(seconds["sequential, 2 threads"])
    rows = [[name, f"{np.median(s):.1f}", f"{base / np.median(s):.2f}x"] for name, s in seconds.items()]
    title = f"The tiny protocol ({arch}, 2 folds x 10 epochs, 108 images, 32 px) on {os.cpu_count()} CPU cores, {bench.rounds} rounds\n\n"
    bench.table(
        title + markdown_table(["how", "median s", "speed vs sequential, 2 threads"], rows),
        f"--models {arch} --rounds {bench.rounds}",
    )
    return {name: float(np.median(s)) for name, s in seconds.items()}
