"""The evaluation (evaluation.py, evaluate.py): report.json and its Markdown, figures and page, the
headline, calibration before and after, and Table 2 (the ablation)."""

import json
import re

import numpy as np
import pytest
from conftest import CLASSES, fake_runs, fuse_fake_pair, run_script, write_logits

from spermfuse.core import calibration, fusion
from spermfuse.core.logits import align
from spermfuse.store import fusion_folder, run_folder
from spermfuse.training.config import preset_config


def headline_models(seed: int = 0) -> dict:
    """Five folds of 40 cells: m1 right on ~60 %, m2 always right, fusion_val = m1, fusion = m2."""
    from spermfuse.core.logits import LogitsSet

    rng = np.random.default_rng(seed)
    models = {"m1": [], "m2": [], "fusion": [], "fusion_val": []}
    for fold in range(1, 6):
        labels = rng.integers(0, 3, 40)
        paths = np.array([f"{fold}_{i}.png" for i in range(40)])
        right = np.eye(3)[labels] * 3
        sometimes = np.where(rng.random(40)[:, None] < 0.6, right, np.eye(3)[(labels + 1) % 3] * 3)
        for name, logits in (("m1", sometimes), ("m2", right), ("fusion", right), ("fusion_val", sometimes)):
            models[name].append(LogitsSet(logits, labels, paths, ["a", "b", "c"], name, fold))
    return models


def test_training_sizes_leave_out_the_test_validation_and_calibration_cells():
    from spermfuse.core.logits import LogitsSet
    from spermfuse.reporting.evaluation import training_sizes

    def cells(fold: int, n: int) -> LogitsSet:
        return LogitsSet(
            np.zeros((n, 2)), np.zeros(n, int), np.array([f"{fold}_{i}" for i in range(n)]), ["a", "b"], "m", fold
        )

    tests = [cells(1, 10), cells(2, 12), cells(3, 8)]
    assert training_sizes(tests) == [20, 18, 22]
    assert training_sizes(tests, [[cells(1, 2), cells(2, 2), cells(3, 2)], None]) == [18, 16, 20]


def test_evaluate_writes_report_json_markdown_and_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--alpha", "0.5").returncode == 0
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "evaluation"
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == CLASSES and set(report["models"]) == {"modelx", "modely", "fusion"}
    fused = report["models"]["fusion"]
    assert len(fused["folds"]["accuracy"]) == 5 and len(fused["summary"]["f1_weighted"]["ci95"]) == 2
    assert {t["a"] + "/" + t["b"] for t in report["tests"]} == {"modelx/modely", "modelx/fusion", "modely/fusion"}
    assert fused["aggregate"]["f1_macro"] > report["models"]["modelx"]["aggregate"]["f1_macro"]
    markdown = (out / "report.md").read_text()
    for table in ("Table 3", "Table 4", "Table 5", "Table 6", "Table 7"):
        assert table in markdown
    for figure in ("confusion_fusion.png", "roc_fusion.png", "pr_modelx.png", "f1_comparison.png"):
        assert (out / figure).stat().st_size > 1000


def test_evaluate_with_a_single_fold_says_so_instead_of_crashing(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=1)
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 0, result.stderr
    assert "only one fold" in (tmp_path / "r" / "evaluation" / "report.md").read_text()


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", ""])
def test_evaluate_refuses_a_report_name_that_leads_out_of_the_reports_folder(tmp_path, capsys, name):
    import evaluate

    runs = fake_runs(tmp_path / "runs", folds=2)
    argv = ["--runs", str(runs), "--reports", str(tmp_path / "r" / "reports"), "--name", name, "--no-figures"]
    assert evaluate.main(argv) == 2
    assert f"--name {name!r}: give a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written, not even the reports folder


def test_evaluate_refuses_a_reports_flag_that_names_a_file(tmp_path, capsys):
    import evaluate

    runs = fake_runs(tmp_path / "runs", folds=2)
    (tmp_path / "reports.txt").write_text("a file")
    argv = ["--runs", str(runs), "--reports", str(tmp_path / "reports.txt"), "--no-figures"]
    assert evaluate.main(argv) == 2 and (tmp_path / "reports.txt").read_text() == "a file"
    assert "--reports" in capsys.readouterr().err.splitlines()[-1]


def test_evaluate_refuses_models_with_different_classes(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=1)
    write_logits(
        runs / "other" / "fold1" / "test_logits.npz",
        [[0, 1, 0, 0]],
        [1],
        ["q"],
        "other",
        1,
        classes=["A", "B", "C", "D"],
    )
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 2 and "classes differ" in result.stderr


def test_ablation_lays_out_table_2(tmp_path):
    base = fake_runs(tmp_path / "base", seed=1)
    both = fake_runs(tmp_path / "both", seed=2)
    assert fuse_fake_pair(both, "--grid").returncode == 0  # fused folders beside the models
    result = run_script(
        "evaluate.py", "--ablation", f"baseline={base}", f"both={both}", "--reports", str(tmp_path / "r")
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "r" / "ablation" / "ablation.md").read_text()
    assert table.count("fusion a=0.5") == 2 and "| baseline | modelx |" in table
    # the two backbones and the three fusions it computes (a = 0.5, a* on the test folds, weights
    # chosen on each fold's validation logits), no fused folder as a "model"
    assert table.count("| both |") == 5 and table.count("| fusion val |") == 2


def test_method_b_holdout_run_is_evaluated_as_a_single_split(tiny_sperm, tmp_path):
    import evaluate
    from spermfuse.training import trainer

    config = preset_config(
        "paper_b",
        arch="efficientnet_tiny",
        data=str(tiny_sperm),
        out=str(tmp_path / "runs"),
        img_size=32,
        workers=0,
        freeze_epochs=1,
        finetune_epochs=1,
        unfreeze_last=10,
    )
    run = trainer.train_fold(config)
    for argv in (["--runs", str(tmp_path / "runs")], ["--logits", f"b4={run}"], ["--logits", f"b4={run.parent}"]):
        reports = tmp_path / "reports" / str(len(argv[1]))
        assert evaluate.main([*argv, "--reports", str(reports), "--no-figures"]) == 0
        report = json.loads((reports / "evaluation" / "report.json").read_text())
        (model,) = report["models"].values()
        support = sum(c["support"] for c in model["aggregate"]["per_class"].values())
        assert support == len(np.load(run / "test_logits.npz")["labels"])  # Tables 3-4 over the holdout test split
        assert "single split" in (reports / "evaluation" / "report.md").read_text()


def test_the_honest_fusions_are_evaluated_against_the_members_too(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid").returncode == 0
    settings = json.loads((runs / "fusion" / "fusion.json").read_text())
    members = run_folder.collect_folds(runs, ["modelx", "modely"])
    nested_weights = settings["selection_comparison"]["nested"]["weights_per_fold"]
    for sets, weights, fused in zip(members, nested_weights, run_folder.load_fold_sets(runs / "fusion" / "nested")):
        fused, *aligned = align([fused, *sets])
        assert np.allclose(fused.logits, fusion.fuse([s.logits for s in aligned], weights), atol=1e-5)
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"), "--no-figures")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "reports" / "evaluation" / "report.json").read_text())
    pairs = {(t["a"], t["b"]) for t in report["tests"]}
    assert {("modelx", "fusion_nested"), ("modely", "fusion_val"), ("modelx", "fusion")} <= pairs
    assert all(t["corrected_t_p"] >= t["paired_t_p"] for t in report["tests"])  # report.json carries the corrected test
    markdown = (tmp_path / "reports" / "evaluation" / "report.md").read_text()
    assert "cannot give p below 0.0625" in markdown and "`fusion_val`" in markdown


def test_evaluate_reports_calibration_before_and_after_and_draws_both_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid").returncode == 0
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "evaluation"
    report = json.loads((out / "report.json").read_text())
    for name in ("modelx", "fusion"):
        block = report["models"][name]["calibration"]
        val = run_folder.load_fold_sets(runs / name, "val")
        assert block["temperature_per_fold"] == pytest.approx(
            [calibration.fit_temperature(v.logits, v.labels) for v in val]
        )
        assert block["after"]["nll"] < block["before"]["nll"]  # fake logits are over-confident: T > 1 helps
    assert report["models"]["fusion_nested"]["calibration"]["after"] is None  # no validation logits of its own
    assert "Calibration and selective prediction" in (out / "report.md").read_text()
    for figure in ("reliability_fusion.png", "reliability_modelx.png", "risk_coverage.png"):
        assert (out / figure).stat().st_size > 1000


def test_the_calibration_evaluate_reports_is_the_one_predict_applies(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid", "--select", "val", "--calibrate").returncode == 0
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 0, result.stderr
    reported = json.loads((tmp_path / "r" / "evaluation" / "report.json").read_text())["models"]["fusion"][
        "calibration"
    ]
    assert reported["temperature_per_fold"] == settings.fused_temperatures()
    test = run_folder.collect_folds(runs, ["modelx", "modely"], "test")
    for k, (sets, fused) in enumerate(zip(test, run_folder.load_fold_sets(runs / "fusion"))):
        members = [s.logits / t for s, t in zip(sets, settings.temperatures["per_fold"][k])]
        shipped = calibration.probabilities_of(
            fusion.fuse([s.logits for s in sets], settings.prediction_weights([sets[0].fold])[0])
        )
        evaluated = calibration.probabilities_of(
            fusion.fuse(members, settings.weights_per_fold[k]) / settings.fused_temperatures()[k]
        )
        reordered = align([sets[0], fused])[1]  # the fused file, in the members' order
        assert np.allclose(shipped, evaluated, atol=1e-6)
        assert np.allclose(
            calibration.probabilities_of(reordered.logits / settings.fused_temperatures()[k]), evaluated, atol=1e-6
        )


def test_the_headline_fusion_is_the_leak_free_one_with_both_tests_against_each_member():
    from spermfuse.reporting.evaluation import build_report

    report = build_report(headline_models(), select="test")
    line = report["headline"]
    assert line["fusion"] == "fusion_val" and "validation" in line["selection"]
    assert line["vs"]["m1"] == {"p_corrected_t": 1.0, "p_mcnemar": 1.0}  # identical predictions
    assert line["vs"]["m2"]["p_corrected_t"] < 0.01 and line["vs"]["m2"]["p_mcnemar"] < 1e-6  # m2 always right
    assert build_report(headline_models(), select="val")["headline"]["fusion"] == "fusion"


def test_without_a_leak_free_fusion_there_is_no_headline_and_the_summary_labels_the_paper_rule():
    from spermfuse.reporting.evaluation import build_report
    from spermfuse.reporting.report import presented_rows, summary_markdown

    models = headline_models()
    del models["fusion_val"]
    report = build_report(models, select="test")
    assert report["headline"] is None
    assert presented_rows(report)[-1] == ("fusion (paper's rule: a* on the test folds, optimistic)", "fusion")
    with_headline = build_report(headline_models(), select="test")
    text = summary_markdown(with_headline, None, "report.json", "test machine")
    assert "| fusion_val (headline) |" in text and "against m1" in text and "no evidence of a difference" in text
    assert "against m2" in text and "a difference on both tests" in text


def ablation_settings(root, order: tuple[str, ...]) -> dict:
    """Run roots of one model "m" over two folds: ``plain`` right on about half the cells, ``same``
    identical to it, ``better`` right on all, in ``order``."""
    from conftest import write_logits

    rng = np.random.default_rng(3)
    for fold in (1, 2):
        labels = rng.integers(0, 3, 60)
        paths = [f"{fold}_{i}.png" for i in range(60)]
        right = np.eye(3)[labels] * 3
        half = np.where(rng.random(60)[:, None] < 0.5, right, np.eye(3)[(labels + 1) % 3] * 3)
        for name, logits in (("plain", half), ("same", half), ("better", right)):
            write_logits(root / name / "m" / f"fold{fold}" / "test_logits.npz", logits, labels, paths, "m", fold)
    return {name: root / name for name in order}


def test_ablation_tests_each_setting_against_the_first_on_the_same_cells(tmp_path):
    from spermfuse.reporting.evaluation import ablation_rows

    rows = ablation_rows(ablation_settings(tmp_path, ("plain", "same", "better")), [0.5])
    by_setting = {row[0]: row for row in rows}
    assert by_setting["plain"][5:] == ["-", "-"]
    assert by_setting["same"][5:] == ["1.0000", "none"]  # identical predictions: no evidence
    assert by_setting["better"][5:] == ["< 0.0001", "1 (+), 2 (+)"]


def test_an_ablation_that_adds_one_choice_a_row_tests_each_against_the_previous(tmp_path):
    from spermfuse.reporting.evaluation import ablation_rows

    settings = ablation_settings(tmp_path, ("better", "plain", "same"))
    by_setting = {row[0]: row for row in ablation_rows(settings, [0.5], against="previous")}
    assert by_setting["plain"][5:] == ["< 0.0001", "1 (-), 2 (-)"]  # against better
    assert by_setting["same"][5:] == ["1.0000", "none"]  # against plain, not better


def test_report_html_is_one_self_contained_page_whose_images_all_decode(tmp_path):
    import base64
    import io
    from html.parser import HTMLParser

    from PIL import Image

    runs = fake_runs(tmp_path / "runs")
    assert run_script("fuse.py", "--grid", "--select", "val", "--runs", str(runs)).returncode == 0
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "page")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "r" / "page" / "report.html").read_text()

    class Images(HTMLParser):
        sources: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(text)
    assert len(parser.sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    for source in parser.sources:
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.width > 100 and image.height > 100
    assert "test cells of 3 classes" in text and "corrected for the folds" in text and "<script" not in text
    assert "sensitivity (recall)" in text and "command: python evaluate.py" in text and "http" not in text
    markdown = (tmp_path / "r" / "page" / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == 5 and all((tmp_path / "r" / "page" / name).is_file() for name in linked)


def test_summaries_copy_their_figures_under_their_own_names(tmp_path):
    """Two summaries written into one folder (the demo's and another run's) keep their own figures."""
    for name, seed in (("first", 0), ("second", 1)):
        runs = fake_runs(tmp_path / f"runs_{name}", seed=seed)
        folders = ["--runs", str(runs), "--reports", str(tmp_path / "reports")]
        result = run_script("evaluate.py", *folders, "--name", name, "--summary", str(tmp_path / "docs" / f"{name}.md"))
        assert result.returncode == 0, result.stderr
    first, second = (tmp_path / "docs" / f"{name}_roc_modelx.png" for name in ("first", "second"))
    assert first.is_file() and second.is_file() and first.read_bytes() != second.read_bytes()
    assert not (tmp_path / "docs" / "roc_modelx.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--explain-limit", "5"],
            "error: --explain-limit refines --explain: give --explain too, or leave --explain-limit out",
        ),
        (["--masks", "masks"], "error: --masks DIR is for the pointing game of --explain; add --explain"),
    ],
)
def test_an_explanation_flag_without_explain_is_refused_before_any_work(tmp_path, flags, message):
    runs = fake_runs(tmp_path / "runs")
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"), *flags)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "reports").exists()


HOSTILE_CLASSES = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "a & b | c"]


def test_every_markdown_file_escapes_tags_in_class_and_model_names(tmp_path):
    runs = fake_runs(tmp_path / "runs", classes=HOSTILE_CLASSES)
    assert fuse_fake_pair(runs, "--grid", "--select", "val").returncode == 0
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "x")
    assert result.returncode == 0, result.stderr
    written = [tmp_path / "r" / "x" / "report.md", runs / "fusion" / "grid.md"]
    for path in written:
        text = path.read_text()
        assert "<img" not in text and "<script" not in text, path.name
    report = (tmp_path / "r" / "x" / "report.md").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in report and "a &amp; b \\| c" in report


def test_markdown_text_and_cells_escape_tags_ampersands_and_row_breaks():
    from spermfuse.page import markdown, markdown_cell, markdown_text

    assert markdown_text("<b>&") == "&lt;b&gt;&amp;"
    assert markdown_cell("a|b\nc") == "a\\|b<br>c"
    page = markdown(
        [("h1", "Sample <script>"), ("p", "<i>", "strong"), ("ul", ["<u>"]), ("table", ["<th>"], [["<td>"]])]
    )
    assert "<script" not in page and "<i>" not in page and "<u>" not in page and "<t" not in page


def imbalanced_weak_runs(root, folds=5, n=80, seed=0):
    """Two weak models on a set where 75 % of the cells are in one class: they score about the
    majority rate, as the review's real binary set (members 0.70 / 0.72 against 0.729)."""
    rng = np.random.default_rng(seed)
    for k in range(1, folds + 1):
        labels = np.where(rng.random(n) < 0.75, 0, rng.integers(1, 3, n))
        paths = [f"img_{k}_{i}.png" for i in range(n)]
        for arch in ("modelx", "modely"):
            for split in ("test", "val"):
                logits = rng.normal(0, 1.0, (n, 3)) + np.array([1.0, 0.0, 0.0])  # mostly says class 0, knows nothing
                write_logits(root / arch / f"fold{k}" / f"{split}_logits.npz", logits, labels, paths, arch, k)
    return root


def test_report_md_says_in_words_when_a_model_does_not_beat_the_majority_class(tmp_path):
    runs = imbalanced_weak_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid", "--select", "val").returncode == 0
    result = run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "x")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "x" / "report.json").read_text())
    text = (tmp_path / "r" / "x" / "report.md").read_text()
    majority = report["models"]["modelx"]["aggregate"]["majority"]
    assert not majority["beats"] and majority["class"] == CLASSES[0]
    assert "> Warning: " in text and f"(right on {majority['rate']:.4f} of the test cells)" in text
    assert "## Against always answering the majority class" in text and "| NO |" in text
    assert "modelx: accuracy" in (tmp_path / "r" / "x" / "report.html").read_text()


def test_report_md_gives_the_margin_over_the_majority_class_when_a_model_beats_it(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid").returncode == 0
    assert (
        run_script("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "x").returncode == 0
    )
    text = (tmp_path / "r" / "x" / "report.md").read_text()
    assert "> Warning: " not in text and "| yes |" in text and "| NO |" not in text


def test_validation_logits_that_cannot_fit_a_temperature_leave_the_report_uncalibrated_and_say_why():
    from spermfuse.core.logits import LogitsSet
    from spermfuse.reporting.evaluation import calibration_of

    labels = np.array([0, 1, 2] * 10)
    test = LogitsSet(np.eye(3)[labels] * 2.0, labels, np.array([f"t{i}" for i in range(30)]), CLASSES, "m", 1)
    val = LogitsSet(np.eye(3)[labels] * 30.0, labels, np.array([f"v{i}" for i in range(30)]), CLASSES, "m", 1)
    block = calibration_of([test], [val])
    assert block["after"] is None and "all 30 calibration cells are classified right" in block["not_fitted"]
