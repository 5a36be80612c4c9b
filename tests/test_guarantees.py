"""What spermfuse guarantees about your files (docs/GUARANTEES.md), rule by rule.

Each test is a case of the hostile-input review (../shared/reviews/reliability-v0.2.md,
named in brackets) that failed before its fix.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, draw_cell, fake_runs, fold_trainer_for, tiny_config, write_logits
from PIL import Image

import fuse
import train
from spermfuse.core.checkpoints import read_safetensors
from spermfuse.core.errors import ConfigError, DataError, FusionError
from spermfuse.core.files import CheckpointError, csv_text, read_csv
from spermfuse.core.logits import LogitsSet, align, load_logits
from spermfuse.core.models import create_model
from spermfuse.data import splits
from spermfuse.data.folders import discover
from spermfuse.data.images import check_image, load_rgb
from spermfuse.selection import choice
from spermfuse.store import download, fusion_folder, run_folder
from spermfuse.store.catalogue import find_entry, load_catalogue
from spermfuse.store.lock import FolderLock, LockError
from spermfuse.store.output_folder import verify_folder, write_folder
from spermfuse.store.pretrained import create_pretrained_model
from spermfuse.training import trainer
from spermfuse.training.config import TrainConfig, validate_config

ROOT = Path(__file__).resolve().parents[1]


MODELS = ["--models", "modelx", "modely"]


# --------------------------------------------------------------------------- 1. outputs are written as a unit


def test_a_failed_write_leaves_the_old_folder_whole_and_no_partial_folder(tmp_path):
    out = tmp_path / "out"
    with write_folder(out, "--out") as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with write_folder(out, "--out", overwrite=True) as folder:
            (folder / "a.txt").write_text("new")
            raise RuntimeError("killed half-way")
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    verify_folder(out)


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_the_old_folder_whole(tmp_path):  # review C1
    import errno

    out = tmp_path / "out"
    with write_folder(out, "--export") as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(ConfigError, match=f"--export {out}: the disk is full .*nothing was written"):
        with write_folder(out, "--export", overwrite=True) as folder:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_on_a_read_only_place_is_refused_before_any_work(tmp_path, monkeypatch):  # review D4
    import errno

    from spermfuse.store.output_folder import check_writable

    check_writable(tmp_path / "new" / "p.csv", "--output")  # a writable place: accepted, nothing left
    assert list(tmp_path.iterdir()) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        ConfigError, match=f"--output {tmp_path}/p.csv: {tmp_path} is not writable \\(Read-only file system\\)"
    ):
        check_writable(tmp_path / "p.csv", "--output")


def test_a_reader_refuses_a_folder_whose_files_differ_from_its_manifest(tmp_path):
    with write_folder(tmp_path / "out", "--out") as folder:
        (folder / "a.txt").write_text("mine")
    (tmp_path / "out" / "stale.npz").write_bytes(b"left by someone else")
    with pytest.raises(CheckpointError, match="not listed: stale.npz"):
        verify_folder(tmp_path / "out")


def test_rerunning_fuse_leaves_none_of_the_earlier_runs_outputs(tmp_path):  # [B1]
    runs = fake_runs(tmp_path / "runs", folds=3, n=40)
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS]) == 0
    assert fuse.main(["--alpha", "0.0", "--runs", str(runs), *MODELS]) == 2  # not without --overwrite
    assert fuse.main(["--alpha", "0.0", "--runs", str(runs), *MODELS, "--overwrite"]) == 0
    left = sorted(p.relative_to(runs / "fusion").as_posix() for p in (runs / "fusion").rglob("*"))
    assert not [name for name in left if name.startswith(("grid", "val", "nested", "optimistic"))]
    assert json.loads((runs / "fusion" / "fusion.json").read_text())["weights"] == [0.0, 1.0]


@pytest.mark.parametrize(
    "weights, message",
    [
        (["--alpha", "1.5"], "--alpha 1.5: needs exactly two --models"),
        (["--grid", "--alphas", "1:0:0.1"], "--alphas 1:0:0.1"),
    ],
)
def test_a_weight_flag_is_refused_before_the_out_folder_is_looked_at(tmp_path, capsys, weights, message):
    runs = fake_runs(tmp_path / "runs", folds=3, n=40)
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS]) == 0
    capsys.readouterr()
    # Without --overwrite the existing fusion folder would be refused too: the flag's error comes first.
    assert fuse.main([*weights, "--runs", str(runs), *MODELS]) == 2
    assert message in capsys.readouterr().err


def test_a_refused_fuse_changes_no_file(tmp_path, capsys):  # [B2]
    runs = fake_runs(tmp_path / "runs", folds=3, n=40)
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS]) == 0
    before = {p: p.read_bytes() for p in (runs / "fusion").rglob("*") if p.is_file()}
    assert (
        fuse.main(
            [
                "--grid",
                "--alphas",
                "0:1:0.5",
                "--select",
                "val",
                "--calibrate",
                "--refer-accuracy",
                "1.5",
                "--runs",
                str(runs),
                *MODELS,
                "--overwrite",
            ]
        )
        == 2
    )
    assert (
        "--refer-accuracy 1.5" in capsys.readouterr().err
    )  # refused after the temperatures and the grid were computed
    assert {p: p.read_bytes() for p in (runs / "fusion").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fuse_killed_at_a_random_moment_leaves_the_old_folder_or_the_new_one(tmp_path, seed):  # [B3]
    runs = fake_runs(tmp_path / "runs", folds=5, n=300)
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS]) == 0
    command = [sys.executable, "fuse.py", "--alpha", "0.0", "--runs", str(runs), *MODELS, "--overwrite"]
    started = time.perf_counter()
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    duration = time.perf_counter() - started
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS, "--overwrite"]) == 0  # back to the old folder
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(np.random.default_rng(seed).uniform(0.5, 1.0) * duration)
    process.send_signal(signal.SIGKILL)
    process.wait()
    settings = fusion_folder.read_fusion_settings(
        runs / "fusion"
    )  # checks the manifest (and puts back a folder left aside)
    assert settings.weights in ([0.0, 1.0], [float(w) for w in settings.weights_per_fold[0]])
    if settings.rule == "fixed":
        assert not (runs / "fusion" / "grid.csv").exists()
    else:
        assert (runs / "fusion" / "grid.csv").exists()
    assert not [
        p for p in runs.iterdir() if p.name.startswith(".fusion.") and p.name.endswith(".old") and any(p.iterdir())
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_an_evaluate_killed_at_a_random_moment_leaves_the_old_report_or_the_new_one(tmp_path, seed):
    """Review reliability-v0.3, "not run": kill -9 during evaluate.py --overwrite."""
    runs = fake_runs(tmp_path / "runs")
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS]) == 0
    command = [sys.executable, "evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "x"]
    started = time.perf_counter()
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    duration = time.perf_counter() - started
    old = (tmp_path / "r" / "x" / "report.md").read_text()
    process = subprocess.Popen(
        [*command, "--overwrite"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(np.random.default_rng(seed).uniform(0.3, 1.0) * duration)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from spermfuse.store.output_folder import recover

    recover(tmp_path / "r" / "x")  # what the next reader or writer does first
    verify_folder(tmp_path / "r" / "x")  # whole: old or new, never a mix
    assert (tmp_path / "r" / "x" / "report.md").read_text() == old  # the same inputs: the same report either way


# --------------------------------------------------------------------------- 2. inputs are never outputs


def test_an_explain_folder_equal_to_the_predict_folder_is_refused_before_any_work(tmp_path, capsys):  # [A1]
    (tmp_path / "runs").mkdir()  # an empty run root: the folder checks come before the models load
    images = tmp_path / "new"
    images.mkdir()
    draw_cell((40, 40), 8, 0).save(images / "cell.png")
    before = (images / "cell.png").read_bytes()
    for explain in (images, images / "why", tmp_path):
        code = fuse.main(
            [
                "--predict",
                str(images),
                "--explain",
                str(explain),
                "--overwrite",
                "--runs",
                str(tmp_path / "runs"),
                *MODELS,
            ]
        )
        assert code == 2 and "is, lies inside or contains" in capsys.readouterr().err
    assert (images / "cell.png").read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["cell.png"]


def test_overwrite_replaces_only_a_folder_of_the_commands_own_files(tmp_path, capsys):
    why = tmp_path / "why"
    why.mkdir()
    (tmp_path / "runs").mkdir()
    (why / "thesis.docx").write_text("not an explanation")
    code = fuse.main(
        [
            "--predict",
            str(tmp_path),
            "--explain",
            str(tmp_path / "elsewhere"),
            "--runs",
            str(tmp_path / "runs"),
            *MODELS,
        ]
    )
    assert code == 2  # the --explain folder lies inside --predict
    code = fuse.main(
        [
            "--predict",
            str(tmp_path / "new"),
            "--explain",
            str(why),
            "--overwrite",
            "--runs",
            str(tmp_path / "runs"),
            *MODELS,
        ]
    )
    assert code == 2 and "thesis.docx" in capsys.readouterr().err and (why / "thesis.docx").exists()


def test_an_output_csv_that_is_a_folder_is_refused_before_predicting(tmp_path, capsys):  # [D8]
    (tmp_path / "new").mkdir()
    (tmp_path / "somedir").mkdir()
    (tmp_path / "runs").mkdir()
    code = fuse.main(
        [
            "--predict",
            str(tmp_path / "new"),
            "--output",
            str(tmp_path / "somedir"),
            "--runs",
            str(tmp_path / "runs"),
            *MODELS,
        ]
    )
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_a_run_root_inside_the_data_folder_is_refused(image_folder):  # [D2]
    with pytest.raises(ConfigError, match="--data"):
        fold_trainer_for(tiny_config(image_folder, image_folder, num_folds=2))


def test_fusion_needs_two_different_models_and_an_output_outside_them(tmp_path, capsys):  # [B16]
    runs = fake_runs(tmp_path / "runs", folds=3, n=40)
    for models in (["modelx"], ["modelx", "modelx"]):
        assert fuse.main(["--grid", "--runs", str(runs), "--models", *models]) == 2
        assert "two or more different trained models" in capsys.readouterr().err
    assert fuse.main(["--grid", "--runs", str(runs), *MODELS, "--out", str(runs / "modelx")]) == 2
    assert not (runs / "fusion").exists()


# --------------------------------------------------------------------------- 3. one writer at a time


def test_a_second_process_on_a_locked_folder_is_told_who_holds_it(tmp_path):
    with FolderLock(tmp_path, "training"):
        with pytest.raises(LockError, match=f"by pid {os.getpid()}"):
            FolderLock(tmp_path, "training").acquire()
    FolderLock(tmp_path, "training").acquire()  # released


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".spermfuse.lock").write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "then"})
    )
    with FolderLock(tmp_path, "training"):
        assert json.loads((tmp_path / ".spermfuse.lock").read_text())["pid"] == os.getpid()


def test_training_refuses_a_run_folder_in_use(image_folder, tmp_path):  # [A3]
    config = tiny_config(image_folder, tmp_path / "runs", num_folds=2, epochs=1)
    fold_trainer = fold_trainer_for(config)
    with FolderLock(config.run_dir(), "training"):
        with pytest.raises(LockError, match="in use for training"):
            fold_trainer.run()
    assert not (config.run_dir() / "config.json").exists()


# --------------------------------------------------------------------------- 4. a run records what it was trained on


def test_two_launches_of_every_fold_on_one_runs_folder_leave_one_whole_run(tiny_sperm, tmp_path):
    """Review reliability-v0.3, "not run": two `train.py --fold all` (two Slurm submissions, say) on
    one runs folder at once: a fold in use, or already there, is refused in the other launch, and
    the runs folder ends with every fold trained once, as one launch alone trains it."""
    command = [sys.executable, "train.py", "--preset", "tiny", "--data", str(tiny_sperm), "--arch", "resnetv2_tiny"]
    alone = subprocess.run([*command, "--fold", "all", "--out", str(tmp_path / "alone")], cwd=ROOT, capture_output=True)
    assert alone.returncode == 0, alone.stderr[-2000:]
    both = [
        subprocess.Popen(
            [*command, "--fold", "all", "--out", str(tmp_path / "both")], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) == [0, 2], [e[-1500:] for _, e in results]
    refused = next(err for code, err in results if code == 2)
    assert "in use for training by pid" in refused or "a run is already there" in refused
    for fold in (1, 2):
        ours = np.load(tmp_path / "both" / "resnetv2_tiny" / f"fold{fold}" / "test_logits.npz")["logits"]
        assert np.array_equal(
            ours, np.load(tmp_path / "alone" / "resnetv2_tiny" / f"fold{fold}" / "test_logits.npz")["logits"]
        )
        assert not (tmp_path / "both" / "resnetv2_tiny" / f"fold{fold}" / ".spermfuse.lock").exists()


def test_an_overwrite_that_does_not_finish_leaves_no_old_logits_for_fusion(image_folder, tmp_path):  # [A4]
    config = tiny_config(image_folder, tmp_path / "runs", num_folds=2, epochs=1)
    trainer.train_fold(config)
    assert (config.run_dir() / "test_logits.npz").is_file()

    def killed(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fold_trainer_for(
            tiny_config(image_folder, tmp_path / "runs", num_folds=2, epochs=3, overwrite=True), on_epoch_end=killed
        ).run()
    assert not (config.run_dir() / "test_logits.npz").exists() and (config.run_dir() / "last.pt").exists()
    assert not run_folder.find_fold_files(tmp_path / "runs" / config.arch)


def test_resuming_on_a_different_split_is_refused(image_folder, tmp_path):  # [A5]
    config = tiny_config(image_folder, tmp_path / "runs", num_folds=2, epochs=1)
    trainer.train_fold(config)
    (image_folder / "Big" / "big_0.png").unlink()
    (tmp_path / "runs" / "folds.csv").unlink()  # the advice for a changed data set: re-split
    with pytest.raises(ConfigError, match="another train/validation/test split"):
        trainer.train_fold(tiny_config(image_folder, tmp_path / "runs", num_folds=2, epochs=1, resume=True))


def test_fusion_refuses_members_that_learned_from_other_images():
    def logits_set(split, arch):
        return LogitsSet(
            np.zeros((2, 3), np.float32), np.array([0, 1]), np.array(["a.png", "b.png"]), CLASSES, arch, 1, arch, split
        )

    with pytest.raises(FusionError, match="learned from other images"):
        align([logits_set("digest-one", "x"), logits_set("digest-two", "y")])
    assert len(align([logits_set("same", "x"), logits_set("same", "y")])) == 2


def test_export_refuses_members_of_other_class_lists_in_any_fold(tmp_path):  # [A2]
    from spermfuse.core.fused_model import Classifier
    from spermfuse.core.transforms import PipelineSpec
    from spermfuse.deploy.export import check_exportable

    def member(classes, name):
        return Classifier(create_model("resnetv2_tiny", 3).eval(), PipelineSpec(32), classes, tmp_path / name)

    fold1 = [member(["Amorphous", "Normal", "Tapered"], "e1"), member(["Amorphous", "Normal", "Tapered"], "r1")]
    fold2 = [member(["Amorphous", "Normal", "Tapered"], "e2"), member(["Normal", "Tapered", "Zeta"], "r2")]
    with pytest.raises(DataError, match="r2: classes differ"):
        check_exportable([fold1, fold2])


def test_two_processes_generating_the_default_set_at_once_both_get_it_whole(tmp_path):  # [B21]
    from concurrent.futures import ThreadPoolExecutor

    from spermfuse import synthetic

    out = tmp_path / "cache" / "hushem4"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda seed: synthetic.generate_once(out, "hushem4", seed=0, per_class=3), range(2)))
    assert results == [out, out] and len(discover(out)) == 12
    assert sorted(p.name for p in out.parent.iterdir()) == ["hushem4"]  # no partial folder left


def test_an_unwritable_cache_names_the_variable_that_moves_it(tmp_path, monkeypatch):  # [D7]
    from spermfuse import synthetic

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ConfigError, match="set \\$SPERMFUSE_CACHE to a writable folder"):
        synthetic.generate_once(tmp_path / "cache" / "set", "hushem4", seed=0, per_class=2)


# --------------------------------------------------------------------------- 5. every input is validated where it enters


@pytest.mark.parametrize(
    "setting, value, flag",
    [
        ("num_folds", 1, "--num-folds"),
        ("num_folds", 0, "--num-folds"),
        ("lr", -1.0, "--lr"),
        ("lr", float("nan"), "--lr"),
        ("weight_decay", -1.0, "--weight-decay"),
        ("workers", -1, "--workers"),
        ("dropout", 2.0, "--dropout"),
        ("plateau_factor", 5.0, "--plateau-factor"),
        ("seed", -1, "--seed"),
        ("grad_clip", -1.0, "--grad-clip"),
        ("grad_clip", 0.0, "--grad-clip"),
        ("early_stopping", 0, "--early-stopping"),
        ("std", (0.0, 0.0, 0.0), "--std"),
        ("resume", True, "--resume"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_its_flag(setting, value, flag):  # [C10-C16, B7, B17, D3-D5]
    overrides = {setting: value} | ({"overwrite": True} if setting == "resume" else {})
    with pytest.raises(ConfigError, match=flag):
        validate_config(TrainConfig(**overrides))


def test_train_py_refuses_a_negative_gradient_clip_in_one_line(capsys):
    assert train.main(["--preset", "tiny", "--grad-clip", "-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --grad-clip -1.0: the largest gradient norm must be > 0")


@pytest.mark.parametrize(
    "alphas, message",
    [
        ("0:1:0", "step must be a number > 0"),
        ("0:1:1e-9", "at most 1001"),
        ("1:0:0.1", "start 1 is above stop 0"),
        ("0:1:nan", "step"),
    ],
)
def test_a_grid_that_cannot_be_searched_is_refused(alphas, message):  # [C17, C18, D6]
    with pytest.raises(FusionError, match=message):
        choice.parse_alphas(alphas)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: [r.replace(",1", ",x", 1) if i == 1 else r for i, r in enumerate(rows)], "is not a fold number"),
        (lambda rows: [rows[0].replace("fold", "split")] + rows[1:], "lacks column"),
        (lambda rows: [r.replace(",1", ",7", 1) if i == 1 else r for i, r in enumerate(rows)], "outside 1..2"),
    ],
)
def test_an_edited_folds_csv_is_refused_naming_the_problem(image_folder, tmp_path, edit, message):  # [C3, C4, B10]
    samples = discover(image_folder)
    folds_csv = tmp_path / "folds.csv"
    splits.load_or_create_folds(samples, folds_csv, k=2)
    folds_csv.write_text("\n".join(edit(folds_csv.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=message):
        splits.load_or_create_folds(samples, folds_csv, k=2)


def test_official_folds_beyond_num_folds_are_refused(image_folder, tmp_path):  # [B9]
    for k in (1, 2, 3):
        for name in ("Big", "Small"):
            (tmp_path / "data" / f"fold{k}" / "test" / name).mkdir(parents=True)
            for i in range(2):
                draw_cell((40, 40), 12 if name == "Big" else 6, seed=10 * k + i).save(
                    tmp_path / "data" / f"fold{k}" / "test" / name / f"{k}_{i}.png"
                )
    with pytest.raises(ConfigError, match="has folds \\[1, 2, 3\\]; give --num-folds 3"):
        fold_trainer_for(tiny_config(tmp_path / "data", tmp_path / "runs", num_folds=2))


def manifest(tmp_path, rows, text_prefix=""):
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(6):
        draw_cell((40, 40), 6 + i, seed=i).save(tmp_path / "img" / f"{i}.png")
    path = tmp_path / "m.csv"
    path.write_text(text_prefix + "path,label\n" + "".join(f"{p},{label}\n" for p, label in rows), encoding="utf-8")
    return path


def test_a_manifest_saved_with_a_byte_order_mark_reads(tmp_path):  # [D1]
    samples = discover(
        manifest(tmp_path, [(f"img/{i}.png", "A" if i < 3 else "B") for i in range(6)], text_prefix="\ufeff")
    )
    assert samples.classes == ["A", "B"] and len(samples) == 6


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("img/0.png", "A"), ("img/0.png", "B")], "listed again \\(first on line 2\\)"),
        ([("img/0.png", "A"), ("img/1.png", "")], "empty label"),
        ([("../outside.png", "A")], "outside the manifest's folder"),
        ([("img/0", "A")], "not an image file"),
    ],
)
def test_a_bad_manifest_row_is_refused_naming_its_line(tmp_path, rows, message):  # [B12, B13, B18]
    (tmp_path.parent / "outside.png").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        discover(manifest(tmp_path, rows))


def test_a_decompression_bomb_is_a_bad_file_that_skip_bad_skips(image_folder):  # [C1, C2]
    bomb = image_folder / "Big" / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    assert "too large" in check_image(bomb)
    assert "bomb.png" in [Path(p).name for p, _ in discover(image_folder, on_error="skip").skipped]
    with pytest.raises(DataError, match="bomb.png"):
        load_rgb(bomb)


@pytest.mark.parametrize(
    "array, mean",
    [
        (
            np.full((8, 8), 4095, np.uint16),
            4095 / 65535 * 255,
        ),  # a 12-bit camera frame is dim in 16 bits, not rescaled to white
        (np.full((8, 8), 0.5, np.float32), 0.5 * 255),  # ImageJ's float TIFF in [0, 1]
    ],
)
def test_high_bit_depth_images_are_scaled_by_their_mode_not_by_their_own_maximum(tmp_path, array, mean):  # [B8]
    path = tmp_path / "frame.tif"
    Image.fromarray(array).save(path)
    assert abs(np.asarray(load_rgb(path), dtype=np.float64).mean() - mean) <= 1.0


def test_an_image_filed_under_two_classes_is_refused(image_folder):  # [B11]
    (image_folder / "Small" / "copy.png").write_bytes((image_folder / "Big" / "big_0.png").read_bytes())
    with pytest.raises(DataError, match=r"the same image as .* \(pixel-identical\)"):
        discover(image_folder)


def test_copies_within_a_class_stay_in_one_fold(image_folder, tmp_path):  # [B11]
    for i in range(3):
        (image_folder / "Big" / f"copy_{i}.png").write_bytes((image_folder / "Big" / "big_0.png").read_bytes())
    samples = discover(image_folder)
    folds = splits.load_or_create_folds(samples, tmp_path / "folds.csv", k=3)
    copies = [i for i, p in enumerate(samples.paths) if p.startswith("Big/copy") or p == "Big/big_0.png"]
    assert len(copies) == 4 and len(set(folds[copies].tolist())) == 1


@pytest.mark.parametrize(
    "labels, fold, message",
    [([0, 99], 1, "labels outside 0..2"), ([0, -1], 1, "labels outside"), ([0, 1], "one", "not one integer")],
)
def test_a_logits_file_with_impossible_labels_or_fold_is_refused(tmp_path, labels, fold, message):  # [C8, C9]
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        logits=np.zeros((2, 3), np.float32),
        labels=np.array(labels),
        paths=np.array(["a", "b"]),
        classes=np.array(CLASSES),
        arch=np.array("x"),
        fold=np.array(fold),
    )
    with pytest.raises(FusionError, match=message):
        load_logits(path)


def safetensors_bytes(header, payload=b"\0" * 8):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


@pytest.mark.parametrize(
    "header, message",
    [
        ({"w": {"dtype": "F32", "shape": [0, -5], "data_offsets": [0, 0]}}, "whole numbers"),
        (b'{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 8]}}', "whole numbers"),
        (b"[" * 200000, "not JSON"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0.5, 4.5]}}, "whole numbers"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            "overlap",
        ),
    ],
)
def test_a_malformed_safetensors_header_is_a_checkpoint_error(tmp_path, header, message):  # [C5, C6, C7, E3]
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(header))
    with pytest.raises(CheckpointError, match=message):
        read_safetensors(path)


def test_calibration_refuses_a_fold_that_validates_on_one_class(tmp_path, capsys):  # [B14]
    runs = fake_runs(tmp_path / "runs", folds=3, n=40)
    for arch in ("modelx", "modely"):
        val = load_logits(runs / arch / "fold2" / "val_logits.npz")
        write_logits(
            runs / arch / "fold2" / "val_logits.npz", val.logits, np.zeros_like(val.labels), val.paths, arch, 2
        )
    assert fuse.main(["--grid", "--select", "val", "--calibrate", "--runs", str(runs), *MODELS]) == 2
    assert "fold 2 validates on 40 images of 1 class" in capsys.readouterr().err


def test_an_ablation_of_a_folder_without_runs_is_refused(tmp_path, capsys):  # [B15]
    import evaluate

    assert evaluate.main(["--ablation", f"a={tmp_path / 'missing'}", "--reports", str(tmp_path / "reports")]) == 2
    assert "no trained models" in capsys.readouterr().err and not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- 6. downloads: https, full digests, tags that name a file


def test_a_tag_that_would_leave_the_cache_is_refused(tmp_path, monkeypatch):  # [A6]
    path = tmp_path / "cat.json"
    path.write_text(
        json.dumps(
            {
                "efficientnet_tiny": {
                    "x/../../escaped": {"url": "https://example.org/w.pth", "format": "pytorch", "layout": "state dict"}
                }
            }
        )
    )
    monkeypatch.setenv("SPERMFUSE_WEIGHTS_CATALOGUE", str(path))
    with pytest.raises(ConfigError, match="may hold only letters"):
        load_catalogue()


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://example.org/w.pth", True),
        ("http://127.0.0.1:8000/w.pth", True),
        ("http://example.org/w.pth", False),
        ("file:///etc/passwd", False),
        ("ftp://example.org/w.pth", False),
        ("data:,hello", False),
    ],
)
def test_only_https_and_loopback_http_are_downloaded(url, allowed, monkeypatch):  # [A7]
    monkeypatch.delenv(download.ALLOW_HTTP_VARIABLE, raising=False)
    if allowed:
        download.check_url(url)
    else:
        with pytest.raises(download.DownloadError):
            download.check_url(url)


def test_a_redirect_from_https_to_http_is_refused():  # [A7]
    class Request:
        full_url = "https://mirror.example.org/w.pth"

    with pytest.raises(download.DownloadError, match="from https to plain http"):
        download._CheckedRedirects().redirect_request(Request(), None, 302, "Found", {}, "http://127.0.0.1/w.pth")


def serve(folder: Path):
    import http.server
    import threading

    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def use_entry(tmp_path, monkeypatch, url):
    path = tmp_path / "cat.json"
    path.write_text(
        json.dumps(
            {"resnetv2_tiny": {"lab": {"url": url, "format": "pytorch", "layout": "state dict", "default": True}}}
        )
    )
    monkeypatch.setenv("SPERMFUSE_WEIGHTS_CATALOGUE", str(path))
    monkeypatch.setenv("SPERMFUSE_CACHE", str(tmp_path / "cache"))


def test_a_first_download_that_does_not_load_is_neither_kept_nor_trusted(tmp_path, monkeypatch):  # [B19]
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "w.pth").write_bytes(b"\0" * 4096)  # a mirror's garbage, no digest known
    server = serve(tmp_path / "served")
    try:
        use_entry(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/w.pth")
        with pytest.raises(Exception, match="it was deleted \\(nothing recorded\\)"):
            create_pretrained_model("resnetv2_tiny", 3, True)
        assert not list((tmp_path / "cache" / "weights").iterdir())
        torch.save(
            create_model("resnetv2_tiny", 3).state_dict(), tmp_path / "served" / "w.pth"
        )  # the right file now loads
        create_pretrained_model("resnetv2_tiny", 3, True)
        cached = tmp_path / "cache" / "weights" / "resnetv2_tiny-lab.pth"
        assert (cached.stat().st_mode & 0o777) == 0o644 and cached.with_name(cached.name + ".sha256").is_file()  # [E2]
    finally:
        server.shutdown()
        server.server_close()


def test_a_usable_file_in_a_read_only_cache_is_used_with_a_warning(tmp_path, monkeypatch, caplog):  # [B20]
    use_entry(tmp_path, monkeypatch, "https://example.org/w.pth")
    entry = find_entry("resnetv2_tiny", "lab")
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    torch.save(create_model("resnetv2_tiny", 3).state_dict(), tmp_path / "cache" / "weights" / entry.file_name)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(download, "atomic_write_text", read_only)
    create_pretrained_model("resnetv2_tiny", 3, True)
    assert "could not record it" in caplog.text


def test_a_download_larger_than_any_checkpoint_is_refused(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "w.pth").write_bytes(b"\0" * 4096)
    server = serve(tmp_path / "served")
    try:
        use_entry(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/w.pth")
        monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 1000)
        with pytest.raises(download.DownloadError, match="more than any checkpoint"):
            download.fetch(find_entry("resnetv2_tiny", "lab"))
        assert not list((tmp_path / "cache" / "weights").iterdir())
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- 7. spreadsheet-safe CSVs


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted_and_read_back_as_written(tmp_path):  # [A8]
    cells = ['=HYPERLINK("http://x","click").png', "+SUM(1+1).png", "@cmd.png", "-rm.png", "'quoted.png", "plain.png"]
    (tmp_path / "p.csv").write_text(csv_text(["path", "value"], [[cell, "-0.5"] for cell in cells]))
    written = [line.split(",")[0] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert not any(cell.lstrip('"').startswith(("=", "+", "-", "@")) for cell in written)
    assert [row["path"] for row in read_csv(tmp_path / "p.csv")] == cells
    assert {row["value"] for row in read_csv(tmp_path / "p.csv")} == {"-0.5"}  # numbers stay numbers


def test_folds_csv_keeps_formula_like_class_names_through_a_round_trip(tmp_path):
    for name in ("=A", "+B"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(4):
            draw_cell((40, 40), 6 + 4 * (name == "+B"), seed=i + 10 * (name == "+B")).save(
                tmp_path / "d" / name / f"{i}.png"
            )
    samples = discover(tmp_path / "d")
    folds = splits.load_or_create_folds(samples, tmp_path / "folds.csv", k=2)
    assert "'=A/0.png,'=A," in (tmp_path / "folds.csv").read_text()
    assert np.array_equal(splits.load_or_create_folds(samples, tmp_path / "folds.csv", k=2), folds)


def test_a_class_name_with_a_bar_or_a_newline_keeps_a_markdown_row_whole():  # [E1]
    from spermfuse.page import markdown_table

    table = markdown_table(["class", "F1"], [["Head|Neck\ndefect", "0.5"]])
    assert table.splitlines()[2] == "| Head\\|Neck<br>defect | 0.5 |"
