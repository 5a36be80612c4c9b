"""Training a fold (trainer.py, fold_setup.py, train_state.py through train.py): outputs, determinism, resume, method B's stages, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fold_trainer_for, run_script, run_train, tiny_config

from spermfuse.core import checkpoints
from spermfuse.core.errors import ConfigError
from spermfuse.core.files import read_csv
from spermfuse.training import fold_setup, trainer
from spermfuse.training.config import preset_config

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_a_fold_writes_every_output_in_the_logits_schema(tiny_sperm, tmp_path):
    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, fold=2))
    assert run == tmp_path / "resnetv2_tiny" / "fold2"
    for name in ("config.json", "history.csv", "best.pt", "last.pt", "val_logits.npz", "test_logits.npz"):
        assert (run / name).is_file(), name
    logits = load(run / "test_logits.npz")
    n = len(logits["labels"])
    assert logits["logits"].dtype == np.float32 and logits["logits"].shape == (n, 18)
    assert logits["labels"].dtype == np.int64 and len(logits["paths"]) == n
    assert list(logits["classes"]) == sorted(logits["classes"]) and str(logits["arch"]) == "resnetv2_tiny"
    assert int(logits["fold"]) == 2
    folds = {line.split(",")[0]: line.split(",")[2] for line in (tmp_path / "folds.csv").read_text().splitlines()[1:]}
    assert all(folds[p] == "2" for p in logits["paths"])  # the test set is exactly fold 2
    val = load(run / "val_logits.npz")
    assert not set(val["paths"]) & set(logits["paths"])
    config = json.loads((run / "config.json").read_text())
    assert (
        config["environment"]["torch"] == torch.__version__ and config["batch_size"] == 8 and config["drop_path"] == 0.0
    )
    header = (run / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,stage,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_second")
    best = checkpoints.safe_torch_load(run / "best.pt")
    assert best["arch"] == "resnetv2_tiny" and best["pipeline"]["img_size"] == 32 and len(best["classes"]) == 18


@pytest.mark.parametrize("extra", [{}, {"tta": "flip", "ema": 0.9}])
def test_same_seed_gives_the_same_logits(tiny_sperm, tmp_path, extra):
    a = trainer.train_fold(tiny_config(tiny_sperm, tmp_path / "a", epochs=1, **extra))
    b = trainer.train_fold(tiny_config(tiny_sperm, tmp_path / "b", epochs=1, **extra))
    assert np.array_equal(load(a / "test_logits.npz")["logits"], load(b / "test_logits.npz")["logits"])


@pytest.mark.parametrize("ema", [None, 0.9])
def test_killed_and_resumed_run_ends_with_the_same_logits(tiny_sperm, tmp_path, ema):
    full = trainer.train_fold(tiny_config(tiny_sperm, tmp_path / "full", epochs=3, ema=ema))

    def die_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    config = tiny_config(tiny_sperm, tmp_path / "cut", epochs=3, ema=ema)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(config, on_epoch_end=die_after_first_epoch)
    assert not (config.run_dir() / "test_logits.npz").exists()
    resumed = trainer.train_fold(tiny_config(tiny_sperm, tmp_path / "cut", epochs=3, ema=ema, resume=True))
    assert np.array_equal(load(full / "test_logits.npz")["logits"], load(resumed / "test_logits.npz")["logits"])
    assert len((resumed / "history.csv").read_text().splitlines()) == 4


def test_existing_run_needs_resume_or_overwrite(tiny_sperm, tmp_path):
    trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="--resume"):
        trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1))


def test_resume_from_another_arch_is_refused(tiny_sperm, tmp_path):
    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1))
    state = checkpoints.safe_torch_load(run / "last.pt")
    state["arch"] = "efficientnet_tiny"
    checkpoints.atomic_torch_save(run / "last.pt", state)
    with pytest.raises(ConfigError, match="not resumable"):
        trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, resume=True))


def test_method_b_two_stages_freeze_then_unfreeze(tiny_sperm, tmp_path):
    config = preset_config(
        "paper_b",
        arch="efficientnet_tiny",
        data=str(tiny_sperm),
        out=str(tmp_path),
        img_size=32,
        workers=0,
        freeze_epochs=1,
        finetune_epochs=1,
        unfreeze_last=10,
        val_fraction=0.2,
        test_fraction=0.2,
    )
    run = trainer.train_fold(config)
    assert run.name == "holdout"
    stages = [line.split(",")[1] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["frozen", "finetune"]
    assert load(run / "test_logits.npz")["logits"].shape[1] == 18


def test_the_fine_tuning_stage_runs_at_its_own_learning_rate(tiny_sperm, tmp_path):
    config = method_b_tiny(tiny_sperm, tmp_path, freeze_epochs=1, finetune_epochs=1, lr=1e-3, finetune_lr=2e-5)
    history = read_csv(trainer.train_fold(config) / "history.csv")
    assert [(row["stage"], float(row["lr"])) for row in history] == [("frozen", 1e-3), ("finetune", 2e-5)]


def test_method_b_killed_after_the_first_stage_resumes_to_the_same_logits(tiny_sperm, tmp_path):
    def config(out, **extra):
        return method_b_tiny(tiny_sperm, out, **extra)

    full = trainer.train_fold(config(tmp_path / "full"))

    def die_after_the_frozen_stage(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(config(tmp_path / "cut"), on_epoch_end=die_after_the_frozen_stage)
    resumed = trainer.train_fold(config(tmp_path / "cut", resume=True))
    assert np.array_equal(load(full / "test_logits.npz")["logits"], load(resumed / "test_logits.npz")["logits"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "vgg16"], "resnet50v2"),
        (["--fold", "7"], "--fold 7: out of range"),
        (["--data", "/nonexistent/folder"], "--data /nonexistent/folder: not found"),
        (["--device", "gpu0"], "--device gpu0: not a device; use auto, cpu or cuda"),
    ],
)
def test_bad_flags_get_one_clear_line(tmp_path, args, message):
    result = run_train("--out", str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unwritable_output_gets_one_clear_line(tiny_sperm, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should go")
    result = run_train(
        "--data",
        str(tiny_sperm),
        "--out",
        str(blocker),
        "--arch",
        "resnetv2_tiny",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--workers",
        "0",
    )
    assert result.returncode == 2 and "error:" in result.stderr and "not_a_folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_data_folder_gets_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_train("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and "no images found" in result.stderr and "Traceback" not in result.stderr


def test_torchrun_two_processes_on_cpu_match_the_sample_set(tiny_sperm, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # a free rendezvous port: test workers side by side never collide
        "train.py",
        "--data",
        str(tiny_sperm),
        "--out",
        str(tmp_path),
        "--arch",
        "resnetv2_tiny",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--val-fraction",
        "0.2",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    logits = load(tmp_path / "resnetv2_tiny" / "fold1" / "test_logits.npz")
    folds = [line.split(",") for line in (tmp_path / "folds.csv").read_text().splitlines()[1:]]
    expected = sorted(p for p, _, f in folds if f == "1")
    assert sorted(logits["paths"]) == expected  # each test sample exactly once, padding dropped


def test_a_bug_keeps_its_traceback_while_bad_input_is_one_line(monkeypatch, tmp_path):
    import train

    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(fold_setup, "setup_fold", broken)
    with pytest.raises(ValueError, match="internal bug"):
        train.main(["--out", str(tmp_path), "--data", str(tmp_path)])
    assert train.main(["--out", str(tmp_path), "--fold", "x"]) == 2  # a user's mistake: a line, exit 2


def test_val_fraction_zero_is_refused_naming_the_flag(tiny_sperm, tmp_path):
    with pytest.raises(ConfigError, match="--val-fraction"):
        trainer.train_fold(tiny_config(tiny_sperm, tmp_path, val_fraction=0.0))


def test_method_b_fold_all_trains_its_one_holdout_run_and_exits_0(tiny_sperm, tmp_path):
    import train

    argv = [
        "--preset",
        "paper_b",
        "--fold",
        "all",
        "--data",
        str(tiny_sperm),
        "--out",
        str(tmp_path),
        "--arch",
        "efficientnet_tiny",
        "--img-size",
        "32",
        "--workers",
        "0",
        "--freeze-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--unfreeze-last",
        "10",
    ]
    assert train.main(argv) == 0
    assert [p.name for p in (tmp_path / "efficientnet_tiny").iterdir()] == ["holdout"]


def test_training_uses_and_records_the_normalisation_of_its_starting_weights(tiny_sperm, tmp_path):
    first = trainer.train_fold(
        tiny_config(tiny_sperm, tmp_path / "a", epochs=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )
    assert checkpoints.safe_torch_load(first / "best.pt")["pipeline"]["mean"] == [0.5, 0.5, 0.5]
    fine_tuned = fold_trainer_for(tiny_config(tiny_sperm, tmp_path / "b", epochs=1, weights=str(first / "best.pt")))
    assert fine_tuned.loaders["train"].dataset.transform.normalize.mean == (
        0.5,
        0.5,
        0.5,
    )  # from the checkpoint, no flag
    run = fine_tuned.run()
    assert json.loads((run / "config.json").read_text())["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert checkpoints.safe_torch_load(run / "best.pt")["pipeline"]["std"] == [0.5, 0.5, 0.5]


def test_resume_with_changed_settings_is_refused_naming_the_flags(tiny_sperm, tmp_path):
    trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1))
    with pytest.raises(ConfigError, match=r"--lr 0.001 -> 0.01.*--overwrite"):
        trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, lr=1e-2, resume=True))
    trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, workers=1, resume=True))  # how it runs may change
    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, lr=1e-2, overwrite=True))
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-2


def method_b_tiny(data, out, **extra):
    return preset_config(
        "paper_b",
        arch="efficientnet_tiny",
        data=str(data),
        out=str(out),
        img_size=32,
        workers=0,
        **{
            "freeze_epochs": 2,
            "finetune_epochs": 2,
            "unfreeze_last": 10,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
            **extra,
        },
    )


def test_method_b_killed_at_the_stage_boundary_resumes_from_the_first_stages_best(tiny_sperm, tmp_path, monkeypatch):
    full = trainer.train_fold(method_b_tiny(tiny_sperm, tmp_path / "full"))
    write_history = trainer.write_history

    def die_before_the_first_finetune_checkpoint(path, history):
        write_history(path, history)
        if history[-1]["stage"] == "finetune":  # after stage 2's first best.pt, before its first last.pt
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_history", die_before_the_first_finetune_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(method_b_tiny(tiny_sperm, tmp_path / "cut"))
    monkeypatch.setattr(trainer, "write_history", write_history)
    resumed = trainer.train_fold(method_b_tiny(tiny_sperm, tmp_path / "cut", resume=True))
    assert np.array_equal(load(full / "test_logits.npz")["logits"], load(resumed / "test_logits.npz")["logits"])


def test_best_pt_of_a_two_stage_run_is_the_best_epoch_of_the_whole_run(tiny_sperm, tmp_path, monkeypatch):
    val_losses = iter([1.0, 0.5, 0.8, 0.9])  # stage 1 ends best; fine-tuning never beats it

    def scripted_epoch(self, stage, model, tools, global_epoch):
        return {
            "epoch": global_epoch,
            "stage": stage.name,
            "lr": 1e-4,
            "train_loss": 1.0,
            "train_acc": 0.5,
            "val_loss": next(val_losses),
            "val_acc": 0.5,
            "seconds": 0.0,
            "images_per_second": 0.0,
            "peak_memory_mb": 0.0,
            "skipped_steps": 0,
        }

    monkeypatch.setattr(trainer.FoldTrainer, "_run_epoch", scripted_epoch)
    run = trainer.train_fold(method_b_tiny(tiny_sperm, tmp_path))
    best = checkpoints.safe_torch_load(run / "best.pt")
    assert (best["epoch"], best["val_metric"]) == (2, 0.5)


def test_with_ema_the_averaged_weights_are_validated_selected_and_saved(tiny_sperm, tmp_path):
    fold = fold_trainer_for(tiny_config(tiny_sperm, tmp_path, epochs=2, ema=0.5, monitor="val_acc"))
    run = fold.run()
    best, last = checkpoints.safe_torch_load(run / "best.pt"), checkpoints.safe_torch_load(run / "last.pt")
    assert any(
        not torch.equal(last["model"][k], last["ema"]["shadow"][k]) for k in last["model"]
    )  # raw weights differ from the average
    fold.model.load_state_dict(best["model"])
    logits, labels, _ = fold._evaluate(fold.loaders["val"])
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(
        best["val_metric"]
    )  # the score it was selected by


def test_ema_outside_zero_one_is_one_clear_line(tmp_path):
    import train

    assert train.main(["--out", str(tmp_path), "--ema", "1.5"]) == 2


@pytest.mark.parametrize("val_loss", ["weighted", "unweighted"])
def test_the_validation_loss_is_weighted_or_not_as_asked(image_folder, tmp_path, val_loss):
    fold_trainer = fold_trainer_for(tiny_config(image_folder, tmp_path, epochs=1, num_folds=2, val_loss=val_loss))
    run = fold_trainer.run()
    with np.load(run / "val_logits.npz", allow_pickle=False) as f:
        logits, labels = torch.from_numpy(f["logits"]), torch.from_numpy(f["labels"])
    weighted = torch.nn.functional.cross_entropy(logits, labels, weight=fold_trainer.loss_weight).item()
    unweighted = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(weighted - unweighted) > 1e-4  # the class weights are not all equal here
    logged = fold_trainer.state.history[-1]["val_loss"]
    assert logged == pytest.approx(weighted if val_loss == "weighted" else unweighted, rel=1e-5)


def test_a_calibration_fraction_writes_cal_logits_of_cells_no_part_of_training_saw(tiny_sperm, tmp_path):
    run = trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, cal_fraction=0.2))
    cal, val, test = (np.load(run / f"{name}_logits.npz", allow_pickle=False) for name in ("cal", "val", "test"))
    assert len(cal["paths"]) >= 18 and cal["logits"].shape == (len(cal["paths"]), 18)
    assert not set(cal["paths"]) & (set(val["paths"]) | set(test["paths"]))
    fold = fold_trainer_for(tiny_config(tiny_sperm, tmp_path / "again", epochs=1, cal_fraction=0.2))
    trained_on = {fold.samples.paths[i] for i in fold.loaders["train"].dataset.indices}
    assert not trained_on & set(cal["paths"].tolist())


def test_a_bn_momentum_reaches_every_batchnorm_layer(tiny_sperm, tmp_path):
    from conftest import fold_trainer_for

    fold = fold_trainer_for(tiny_config(tiny_sperm, tmp_path, arch="efficientnet_tiny", bn_momentum=0.01))
    norms = [m for m in fold.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)


def test_a_calibration_holdout_is_written_by_every_fold_and_tested_by_none(tiny_sperm, tmp_path):
    runs = [
        trainer.train_fold(tiny_config(tiny_sperm, tmp_path, epochs=1, fold=k, cal_fraction=0.0, cal_holdout=0.2))
        for k in (1, 2)
    ]
    cal = [set(np.load(run / "cal_logits.npz", allow_pickle=False)["paths"].tolist()) for run in runs]
    tested = set().union(*(np.load(run / "test_logits.npz", allow_pickle=False)["paths"].tolist() for run in runs))
    assert cal[0] == cal[1] and len(cal[0]) >= 18 and not cal[0] & tested


def test_two_runs_of_one_architecture_under_their_own_names_fuse_as_two_members(tiny_sperm, tmp_path):
    common = ["--preset", "tiny", "--data", str(tiny_sperm), "--arch", "efficientnet_tiny", "--out", str(tmp_path)]
    for name, size in (("first", "32"), ("second", "40")):  # one seed: the same folds, validation and calibration cells
        result = run_train(*common, "--fold", "all", "--name", name, "--img-size", size)
        assert result.returncode == 0, result.stderr
    assert not (tmp_path / "efficientnet_tiny").exists()
    first, second = (load(tmp_path / name / "fold1" / "test_logits.npz")["logits"] for name in ("first", "second"))
    assert not np.array_equal(first, second)
    fused = run_script("fuse.py", "--grid", "--runs", str(tmp_path), "--models", "first", "second")
    assert fused.returncode == 0, fused.stderr
    assert json.loads((tmp_path / "fusion" / "fusion.json").read_text())["models"] == ["first", "second"]


@pytest.mark.parametrize("name", ["a/b", "..", " "])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(name, tiny_sperm, tmp_path):
    result = run_train("--preset", "tiny", "--data", str(tiny_sperm), "--out", str(tmp_path), "--name", name)
    assert result.returncode == 2 and "--name" in result.stderr and not list(tmp_path.iterdir())
