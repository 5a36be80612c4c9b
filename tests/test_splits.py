"""The calibration split: held out of training, disjoint from every other part, by group with groups."""

import numpy as np

from spermfuse.data.splits import fold_split, holdout_split, make_folds


def labelled(n=120, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, n), [f"c{i}" for i in range(classes)]


def test_calibration_cells_are_disjoint_from_train_validation_and_test():
    labels, classes = labelled()
    folds = make_folds(labels, classes, k=5)
    split = fold_split(folds, labels, 2, val_fraction=0.2, cal_fraction=0.1)
    parts = [set(p.tolist()) for p in split.parts().values()]
    assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert set().union(*parts) == set(range(len(labels)))
    assert 0.05 * len(labels) < len(split.cal) < 0.15 * len(labels) and set(labels[split.cal].tolist()) == set(range(4))


def test_no_calibration_fraction_leaves_the_other_parts_as_they_were():
    labels, classes = labelled()
    folds = make_folds(labels, classes, k=5)
    without, zero = fold_split(folds, labels, 3, 0.2), fold_split(folds, labels, 3, 0.2, cal_fraction=0.0)
    assert len(zero.cal) == 0 and all(
        np.array_equal(a, b)
        for a, b in zip((without.train, without.val, without.test), (zero.train, zero.val, zero.test))
    )
    holdout, holdout_zero = holdout_split(labels), holdout_split(labels, cal_fraction=0.0)
    assert np.array_equal(holdout.train, holdout_zero.train) and np.array_equal(holdout.test, holdout_zero.test)


def test_calibration_cells_take_whole_groups():
    labels, classes = labelled(240)
    groups = np.array([f"p{i % 24}" for i in range(240)])
    folds = make_folds(labels, classes, k=4, groups=groups)
    split = fold_split(folds, labels, 1, 0.2, groups=groups, cal_fraction=0.15)  # checked for leakage inside
    assert len(split.cal) and not set(groups[split.cal]) & set(
        groups[np.concatenate([split.train, split.val, split.test])]
    )


def test_a_calibration_split_of_few_groups_is_named_in_a_warning(caplog):
    labels, classes = labelled(240)
    groups = np.array([f"p{i % 24}" for i in range(240)])  # 24 patients: the cal part holds a handful
    folds = make_folds(labels, classes, k=4, groups=groups)
    with caplog.at_level("WARNING", logger="spermfuse.data.splits"):
        split = fold_split(folds, labels, 1, 0.2, groups=groups, cal_fraction=0.15)
    count = len(set(groups[split.cal]))
    assert f"fold 1: the calibration cells come from {count} groups (fewer than 30)" in caplog.text


def test_a_calibration_split_of_thirty_groups_or_more_gives_no_warning(caplog):
    labels, classes = labelled(2000, seed=1)
    groups = np.array([f"p{i % 400}" for i in range(2000)])  # 400 patients: about 40 in the cal part
    folds = make_folds(labels, classes, k=4, groups=groups)
    with caplog.at_level("WARNING", logger="spermfuse.data.splits"):
        split = fold_split(folds, labels, 1, 0.2, groups=groups, cal_fraction=0.15)
    assert len(set(groups[split.cal])) >= 30 and "calibration cells come from" not in caplog.text


def test_a_calibration_holdout_is_the_same_cells_in_every_fold_and_in_no_folds_other_parts():
    labels, classes = labelled(200)
    groups = np.array([f"p{i % 40}" for i in range(200)])
    folds = make_folds(labels, classes, k=5, groups=groups)
    parts = [fold_split(folds, labels, k, 0.2, groups=groups, cal_holdout=0.15) for k in range(1, 6)]
    reserved = set(parts[0].cal.tolist())
    assert reserved and all(set(p.cal.tolist()) == reserved for p in parts)
    for split in parts:
        assert not reserved & set(np.concatenate([split.train, split.val, split.test]).tolist())
        assert not set(groups[split.cal]) & set(groups[np.concatenate([split.train, split.val, split.test])])
    tested = set(np.concatenate([p.test for p in parts]).tolist())
    assert tested == set(range(200)) - reserved  # every other image is tested exactly once over the folds


def test_the_calibration_holdout_and_a_per_fold_calibration_share_are_one_or_the_other():
    import pytest

    from spermfuse.core.errors import ConfigError
    from spermfuse.training.config import TrainConfig, validate_config

    with pytest.raises(ConfigError, match="--cal-holdout and --cal-fraction: give one"):
        validate_config(TrainConfig(cal_fraction=0.1, cal_holdout=0.1))
    with pytest.raises(ConfigError, match="--cal-holdout is for k-fold runs"):
        validate_config(TrainConfig(split="holdout", cal_holdout=0.1))


def test_a_second_run_under_the_same_out_with_another_calibration_holdout_is_refused(tmp_path):
    import json

    import pytest

    from spermfuse.core.errors import ConfigError
    from spermfuse.training.config import TrainConfig
    from spermfuse.training.fold_setup import check_shared_holdout

    first = tmp_path / "efficientnet_tiny" / "fold1"
    first.mkdir(parents=True)
    (first / "config.json").write_text(json.dumps({"arch": "efficientnet_tiny", "cal_holdout": 0.25}))
    second = TrainConfig(arch="resnetv2_tiny", out=str(tmp_path), fold=1, cal_holdout=0.3, cal_fraction=0.0)
    with pytest.raises(
        ConfigError, match=r"--cal-holdout 0.3: .*efficientnet_tiny/fold1/config.json used --cal-holdout 0.25"
    ):
        check_shared_holdout(second)
    check_shared_holdout(TrainConfig(arch="resnetv2_tiny", out=str(tmp_path), fold=1, cal_holdout=0.25))
    check_shared_holdout(
        TrainConfig(arch="efficientnet_tiny", out=str(tmp_path), fold=1, cal_holdout=0.3)
    )  # its own run
