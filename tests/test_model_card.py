"""The model card's interval keeps its promise."""

from __future__ import annotations

import numpy as np

from spermfuse.deploy.model_card import wilson_interval


def test_the_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for accuracy, cells in ((0.7, 243), (0.1, 60), (0.95, 100)):
        hits = []
        for right in rng.binomial(cells, accuracy, size=4000):
            low, high = wilson_interval(int(right), cells)
            hits.append(low <= accuracy <= high)
        assert 0.93 <= np.mean(hits) <= 0.975  # Monte-Carlo sd 0.0035 around 0.95


def test_the_wilson_interval_stays_inside_zero_and_one():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(np.isnan(wilson_interval(0, 0)))


def patients(rng, count=40, cells_per_patient=25, accuracy=0.8, spread=0.15):
    """Cells of ``count`` patients whose own accuracies scatter around ``accuracy``: cells of one
    patient are correlated, as a pooled test fold's are."""
    own = np.clip(rng.normal(accuracy, spread, count), 0.0, 1.0)
    groups = np.repeat([f"p{i}" for i in range(count)], cells_per_patient)
    return rng.random(len(groups)) < np.repeat(own, cells_per_patient), groups


def test_the_patient_bootstrap_covers_the_accuracy_over_patients_where_wilson_does_not():
    from spermfuse.core.metrics import group_bootstrap_interval

    rng = np.random.default_rng(1)
    truth = np.clip(rng.normal(0.8, 0.15, 2_000_000), 0.0, 1.0).mean()  # the accuracy over all patients
    bootstrap_hits, wilson_hits = [], []
    for repeat in range(400):
        correct, groups = patients(rng)
        low, high = group_bootstrap_interval(correct, groups, resamples=500, seed=repeat)
        bootstrap_hits.append(low <= truth <= high)
        low, high = wilson_interval(int(correct.sum()), len(correct))
        wilson_hits.append(low <= truth <= high)
    assert 0.91 <= np.mean(bootstrap_hits) <= 0.98  # 400 draws: sd 0.011 around 0.95
    assert np.mean(wilson_hits) < 0.85  # the cells-as-trials interval is far too narrow here


def fused_test_fold(fold: int, right: int, cells: int):
    from spermfuse.core.logits import LogitsSet

    labels = np.zeros(cells, dtype=int)
    logits = np.tile([[1.0, 0.0]], (cells, 1))
    logits[right:] = [0.0, 1.0]
    paths = np.array([f"Normal/f{fold}_{i}.png" for i in range(cells)])
    return LogitsSet(logits, labels, paths, ["Normal", "Other"], "fused", fold)


def test_the_card_names_the_per_fold_pairs_and_uses_a_patient_bootstrap_when_folds_csv_has_groups(tmp_path):
    from spermfuse.core.files import atomic_write_csv
    from spermfuse.deploy.model_card import _accuracy_line

    tested = [fused_test_fold(1, 30, 40), fused_test_fold(2, 20, 40)]
    without_groups = _accuracy_line(tmp_path, tested, [1, 2])
    assert "95 % Wilson interval" in without_groups and "treats the cells as independent" in without_groups
    assert "describe the per-fold pairs" in without_groups and "accuracy 62.5 %" in without_groups
    rows = [[p, "Normal", t.fold, f"patient{i % 8}"] for t in tested for i, p in enumerate(t.paths)]
    atomic_write_csv(tmp_path / "folds.csv", ["path", "label", "fold", "group"], rows)
    with_groups = _accuracy_line(tmp_path, tested, [1, 2])
    assert "95 % bootstrap interval over 8 patients/groups" in with_groups and "Wilson" not in with_groups
    assert _accuracy_line(tmp_path, tested[:1], [1]).startswith("The fused pair of the fold on its test cells")


def test_the_card_escapes_tags_in_class_and_model_names(tmp_path):
    from spermfuse.deploy.model_card import model_card
    from spermfuse.store.fusion_folder import FusionSettings

    tested = [fused_test_fold(1, 30, 40)]
    tested[0].classes = ["<img src=x onerror=alert(1)>", "<script>x</script>"]
    settings = FusionSettings(["<b>m1</b>", "m2"], [1], [[0.5, 0.5]], "val", "val", "0:1:0.1")
    card = model_card(tmp_path, settings, [1], tested, 64, None, "fuse.py --export <here>")
    assert "<img" not in card and "<script" not in card and "<b>" not in card and "<here>" not in card
    assert "&lt;img src=x onerror=alert(1)&gt;" in card
