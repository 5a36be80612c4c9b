"""The Markdown of an evaluation: report.md's tables, the README's summary, the pointing game."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..core import metrics
from ..core.files import atomic_write_bytes, atomic_write_text
from ..page import markdown_table, markdown_text
from ..store import fusion_folder

if TYPE_CHECKING:  # for the hints only: report.py stays below the models
    pass


_REPORT_FILE = re.compile(
    r"(report\.(json|md)|ablation\.md|gallery\.md|pointing_game\.(json|md)|[^/]+\.png|gallery/[^/]+\.png)"
)


def legacy_report_files(folder: Path) -> set[str]:
    """The files of a report folder written before manifests (what a new evaluate.py may replace)."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and _REPORT_FILE.fullmatch(p.relative_to(folder).as_posix())
    }


def fmt(value: object, digits: int = 4) -> str:
    """``value`` for a report's table: floats to ``digits`` decimals, None and NaN as n/a."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def interval(bounds: Sequence[float] | None) -> str:
    """``[low, high]`` with four decimals, or n/a (one fold)."""
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "n/a (one fold)"


def report_figures(main: str) -> list[tuple[str, str]]:
    """(file, caption) of the figures a report shows for its ``main`` model (figures.write_all writes them)."""
    return [
        (f"confusion_{main}.png", f"confusion matrix of {main}"),
        (f"roc_{main}.png", f"macro ROC of {main}"),
        (f"pr_{main}.png", f"precision-recall of {main}"),
        (f"reliability_{main}.png", f"reliability of {main}"),
        ("risk_coverage.png", "risk-coverage of every model"),
    ]


AGGREGATE_KEYS = (
    "accuracy",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "f1_macro",
    "specificity_macro",
    "specificity_weighted",
    "auroc_macro",
    "auroc_weighted",
    "auprc_macro",
    "auprc_weighted",
    "ece",
)


def _aggregate_section(models: dict) -> list[str]:
    rows = [[name] + [fmt(m["aggregate"][k]) for k in AGGREGATE_KEYS] for name, m in models.items()]
    return ["## Aggregated over all folds\n", markdown_table(["model", *AGGREGATE_KEYS], rows)]


def majority_verdict(name: str, aggregate: dict) -> str:
    """One model against always answering the majority class, in words (``metrics.against_majority``)."""
    m = aggregate["majority"]
    constant = f"always answering {m['class']} is right on {m['rate']:.4f} of the same cells"
    test = f"one-sided exact McNemar p {p_value(m['p'])}"
    if m["beats"]:
        return f"{name}: accuracy {aggregate['accuracy']:.4f}; {constant}: it beats that by {m['margin']:+.4f} ({test})"
    return (
        f"{name}: accuracy {aggregate['accuracy']:.4f}; {constant}: it does NOT beat the majority class "
        f"(margin {m['margin']:+.4f}, {test}), so its accuracy is no evidence that it learned anything"
    )


def majority_warning(models: dict) -> str | None:
    """The models that do not beat the majority class, as one warning (None when all do)."""
    losing = [name for name, m in models.items() if not m["aggregate"]["majority"]["beats"]]
    if not losing:
        return None
    rate = next(iter(models.values()))["aggregate"]["majority"]
    return (
        f"Warning: {', '.join(losing)} do(es) not beat always answering {rate['class']} (right on {rate['rate']:.4f} of the "
        "test cells) with one-sided p < 0.05; read their accuracy against that rate, and the balanced accuracy."
    )


def _majority_section(models: dict) -> list[str]:
    rows = [
        [
            name,
            fmt(a["accuracy"]),
            fmt(a["balanced_accuracy"]),
            f"{fmt(a['majority']['rate'])} ({a['majority']['class']})",
            f"{a['majority']['margin']:+.4f}",
            p_value(a["majority"]["p"]),
            "yes" if a["majority"]["beats"] else "NO",
        ]
        for name, a in ((name, m["aggregate"]) for name, m in models.items())
    ]
    header = ["model", "accuracy", "balanced accuracy", "always-majority rate", "margin", "McNemar p", "beats it?"]
    return [
        "## Against always answering the majority class\n",
        "The constant classifier that answers the most frequent test class, on the same cells; a model beats it when "
        "a one-sided exact McNemar test (the cells only one of the two gets right) gives p < 0.05. Balanced accuracy "
        "is the mean recall over classes (0.5 for the constant answer with two classes).\n",
        markdown_table(header, rows),
    ]


def _calibration_section(models: dict) -> list[str]:
    rows = []
    for name, m in models.items():
        c = m["calibration"]
        after = c["after"] or {}
        change = (c.get("intervals") or {}).get("difference", {})
        rows.append(
            [name]
            + [f"{fmt(c['before'][k])} / {fmt(after.get(k))}" for k in ("nll", "brier", "ece")]
            + [f"{fmt(c['aurc_before'])} / {fmt(c['aurc_after'])}"]
            + [
                ", ".join(f"{k} [{v[0]:+.4f}, {v[1]:+.4f}]" for k, v in change.items())
                or (f"no temperature: {c['not_fitted']}" if c.get("not_fitted") else "n/a")
            ]
        )
    header = ["model", "NLL before / after", "Brier before / after", "ECE before / after", "AURC before / after"]
    return [
        "## Calibration and selective prediction\n",
        "NLL, Brier and ECE (15 bins) of the test logits as they are and after temperature scaling (a T per fold: for a "
        "fusion made with --calibrate the one fusion.json ships and --predict applies, else fitted on that fold's validation logits); "
        "AURC is the area under the risk-coverage curve (lower is better).\n",
        markdown_table([*header, "after - before, 95 % paired bootstrap"], rows),
    ]


def _groups_section(groups: dict, classes: Sequence[str]) -> list[str]:
    rows = [[k, g["all"]] + [g.get(c, 0) for c in classes] for k, g in groups.items()]
    return [
        "## Groups (patients, slides or samples) in each test fold\n",
        markdown_table(["fold", "groups", *classes], rows),
    ]


def _per_class_sections(models: dict, main: str, classes: Sequence[str]) -> list[str]:
    """Tables 3 (``main``'s per-class results) and 4 (every model's per-class F1)."""
    per_class = models[main]["aggregate"]["per_class"]
    main_rows = [
        [c, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), fmt(v["specificity"]), v["support"]]
        for c, v in per_class.items()
    ]
    f1_rows = [[c] + [fmt(m["aggregate"]["per_class"][c]["f1"]) for m in models.values()] for c in classes]
    return [
        f"## Table 3. Per-class results of {markdown_text(main)}\n",
        markdown_table(["class", "precision", "recall", "F1", "specificity", "support"], main_rows),
        "## Table 4. Per-class F1 of every model\n",
        markdown_table(["class", *models], f1_rows),
    ]


def _fold_interval_section(models: dict) -> list[str]:
    """Table 5: the folds' mean, std and the paper's and the corrected 95 % intervals."""
    rows = [
        [name, key, fmt(s["mean"]), fmt(s["std"]), interval(s["ci95"]), interval(s.get("ci95_corrected"))]
        for name, m in models.items()
        for key, s in m["summary"].items()
    ]
    return [
        "## Table 5. Fold-wise mean, std and Student-t 95 % CI\n",
        "The paper's interval mean ± t·s/√k treats the folds as independent; their models share most of their "
        "training cells, so the corrected interval mean ± t·s·√(1/k + n_test/n_train) (Nadeau & Bengio 2003) is the one "
        "to read.\n",
        markdown_table(["model", "metric", "mean", "std", "95 % CI (paper)", "95 % CI (corrected)"], rows),
    ]


def _paired_tests_section(report: dict) -> list[str]:
    """Table 6: every pair's paired tests, after the caveats that say how to read them."""
    keys = ("paired_t_p", "corrected_t", "corrected_t_p", "wilcoxon_p", "mcnemar_p")
    rows = [[t["a"], t["b"]] + [fmt(t[k]) for k in keys] for t in report["tests"]]
    return [
        "## Table 6. Paired tests on fold-wise weighted F1 (McNemar on all predictions)\n",
        paired_tests_caveats(report) + "\n",
        markdown_table(["A", "B", "paired t p", "corrected t", "corrected t p", "Wilcoxon p", "McNemar p"], rows),
    ]


def _confusions_section(models: dict, main: str, classes: Sequence[str]) -> list[str]:
    confusions = metrics.top_confusions(models[main]["aggregate"]["confusion"], classes)
    rows = [[c, ", ".join(f"{p} ({n})" for p, n in v) or "-"] for c, v in confusions.items()]
    return [
        f"## Table 7. Most frequent confusions of {markdown_text(main)}\n",
        markdown_table(["true class", "most often predicted as"], rows),
    ]


def report_markdown(
    report: dict,
    main: str,
    grid_markdown: str | None = None,
    notes: Sequence[str] = (),
    with_figures: bool = False,
) -> str:
    """report.md: the paper's Tables 1 and 3-7 for ``main`` (and the comparison with the others),
    after the headline, the aggregates and the calibration."""
    classes, models = report["classes"], report["models"]
    out = ["# spermfuse evaluation\n", *(f"> {markdown_text(note)}\n" for note in notes)]
    if report.get("headline"):
        out += ["## Headline\n", markdown_text(headline_sentence(report)) + "\n"]
    warning = majority_warning(models)
    if warning:
        out += [f"> {markdown_text(warning)}\n"]
    out += _aggregate_section(models) + _majority_section(models) + _calibration_section(models)
    if "groups_per_fold" in report:
        out += _groups_section(report["groups_per_fold"], classes)
    if grid_markdown:
        out += ["## Table 1. Fusion weight grid (per-fold accuracy and weighted F1)\n", grid_markdown]
    out += _per_class_sections(models, main, classes) + _fold_interval_section(models)
    if report["tests"]:
        out += _paired_tests_section(report)
    out += _confusions_section(models, main, classes)
    if with_figures:
        out += ["## Figures\n", *(f"![{markdown_text(caption)}]({name})\n" for name, caption in report_figures(main))]
    return "\n".join(out)


def paired_tests_caveats(report: dict) -> str:
    """What Table 6 can and cannot show, from the number of folds and the models present."""
    folds = min(len(m["folds"]["fold"]) for m in report["models"].values())
    lines = [
        "> The corrected resampled t-test (Nadeau & Bengio, 2003) inflates the paired t-test's variance by n_test/n_train, "
        "because the folds' training sets overlap; prefer it to the plain paired t-test, which declares differences significant too easily.",
        f"> With {folds} folds the exact two-sided Wilcoxon signed-rank test cannot give p below "
        f"{metrics.wilcoxon_floor(folds):.4f} (= 2 / 2^{folds}), whatever the difference: a Wilcoxon p above 0.05 here is no evidence of equality.",
    ]
    if "fusion" in report["models"]:
        lines.append(
            "> `fusion` uses the weights `fuse.py --select` chose (by default the paper's a*, tuned on these test folds: optimistic); "
            "`fusion_val` (a per fold from its validation logits) and `fusion_nested` (from the other folds) are the honest comparisons."
        )
    return "\n>\n".join(lines)


def presented_rows(report: dict) -> list[tuple[str, str]]:
    """(label, model key) of the rows a summary shows: the members, the leak-free headline fusion,
    and the paper's test-tuned fusion labelled as optimistic when it is not the headline."""
    models, chosen = report["models"], (report.get("headline") or {}).get("fusion")
    rows = [(name, name) for name in models if not name.startswith("fusion")]
    if chosen is not None:
        rows.append((f"{chosen} (headline)", chosen))
    if "fusion" in models and chosen != "fusion":
        rows.append(("fusion (paper's rule: a* on the test folds, optimistic)", "fusion"))
    return rows


def p_value(p: float | None) -> str:
    """``= 0.0190``, ``< 0.0001`` or ``n/a``."""
    return "n/a" if p is None else "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


def headline_sentence(report: dict) -> str:
    """The headline fusion against each member: both paired tests and what they say, in words."""
    line = report["headline"]
    parts = []
    for member, tests in line["vs"].items():
        t_p, mcnemar = tests["p_corrected_t"], tests["p_mcnemar"]
        below = [p is not None and p < 0.05 for p in (t_p, mcnemar)]
        verdict = (
            "no evidence of a difference"
            if not any(below)
            else "a difference on both tests"
            if all(below)
            else "mixed evidence (one test below 0.05)"
        )
        parts.append(
            f"against {member}, corrected resampled t-test p {p_value(t_p)}, McNemar p {p_value(mcnemar)}: {verdict}"
        )
    return f"Headline: `{line['fusion']}` ({line['selection']}, never its test fold); " + "; ".join(parts) + "."


def summary_figures(report: dict, main: str) -> list[str]:
    """The report's figures a summary's page shows beside it (evaluate.py --summary copies them):
    the main model's confusion matrix and ROC, the risk-coverage curves, the first member's reliability."""
    first = next(name for name in report["models"] if not name.startswith("fusion"))
    return [f"confusion_{main}.png", f"roc_{main}.png", "risk_coverage.png", f"reliability_{first}.png"]


def summary_markdown(
    report: dict, fusion_settings: fusion_folder.FusionSettings | None, source: str, environment: str
) -> str:
    """The headline figures of one evaluation as Markdown, for a results file a README can embed
    (written by the code, so the README's figures cannot go stale unnoticed)."""
    models = report["models"]
    rows = presented_rows(report)
    keys = ["accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "auroc_macro", "specificity_macro"]
    out = [f"<!-- written by evaluate.py --summary from {markdown_text(source)}; {environment} -->\n"]
    out.append(
        markdown_table(
            ["model"] + keys, [[label] + [fmt(models[name]["aggregate"][k]) for k in keys] for label, name in rows]
        )
    )
    if report.get("headline"):
        out.append(markdown_text(headline_sentence(report)) + "\n")
    verdicts = [majority_verdict(label, models[name]["aggregate"]) for label, name in rows]
    out.append("Against the majority class: " + markdown_text("; ".join(verdicts)) + ".\n")
    if fusion_settings and fusion_settings.selection_comparison:
        weights = fusion_settings.weights
        chosen = f"a* = {weights[0]:.1f} (the paper's rule)" if weights else f"per fold ({fusion_settings.rule})"
        means = ", ".join(
            f"{name} {figures['f1_weighted']:.4f}" for name, figures in fusion_settings.selection_comparison.items()
        )
        out.append(
            f"Fusion weight of the `fusion` row: {chosen}. Mean weighted F1 over folds by --select rule (test: the paper's, optimistic): {means}.\n"
        )
    return "\n".join(out)


def summary_details_markdown(report: dict, source: str, environment: str) -> str:
    """The rest of a summary: per-class F1 and calibration of the summary's rows (``--summary
    FILE`` writes it to ``FILE``'s ``_details`` sibling, for a page beside the README)."""
    models = report["models"]
    members = [name for _, name in presented_rows(report)]
    out = [f"<!-- written by evaluate.py --summary from {markdown_text(source)}; {environment} -->\n"]
    out.append("Per-class F1:\n")
    out.append(
        markdown_table(
            ["class"] + members,
            [
                [c] + [fmt(models[name]["aggregate"]["per_class"][c]["f1"]) for name in members]
                for c in report["classes"]
            ],
        )
    )
    out.append(
        "Calibration (before / after temperature scaling: the fusion's shipped temperature, else one fitted on each fold's validation logits) and AURC:\n"
    )
    rows = []
    for name in members:
        c = models[name]["calibration"]
        after = c["after"] or {}
        change = (c.get("intervals") or {}).get("difference", {})
        shown = {k: f"[{change[k][0]:+.4f}, {change[k][1]:+.4f}]" if k in change else "n/a" for k in ("nll", "ece")}
        rows.append(
            [name]
            + [
                f"{fmt(c['before'][k])} / {fmt(after[k])} {shown[k]}"
                if after
                else f"{fmt(c['before'][k])} (no temperature)"
                for k in ("nll", "ece")
            ]
            + [fmt(c["aurc_before"])]
        )
    out.append(
        markdown_table(
            ["model", "NLL (change, 95 % paired bootstrap)", "ECE (change, 95 % paired bootstrap)", "AURC"], rows
        )
    )
    return "\n".join(out)


def write_summary(
    summary: Path,
    report_folder: Path,
    result: dict,
    settings: fusion_folder.FusionSettings | None,
    environment: str,
    pointing: str | None = None,
    figures: Sequence[str] = (),
) -> None:
    """``evaluate.py --summary FILE.md`` of an evaluation (``result``: report.json; ``settings``:
    fusion.json when fused): the headline in FILE.md, the per-class, calibration and
    pointing-game tables in FILE_details.md, and beside them the report's ``figures`` named
    ``FILE_<figure>`` (two summaries in one folder never overwrite each other's figures). All
    come from one evaluation, stamped with one commit."""
    source = str(report_folder / "report.json")
    atomic_write_text(summary, summary_markdown(result, settings, source, environment))
    details = summary_details_markdown(result, source, environment) + (f"\n{pointing}" if pointing else "")
    atomic_write_text(summary.with_name(f"{summary.stem}_details{summary.suffix}"), details)
    for name in figures:
        atomic_write_bytes(summary.parent / f"{summary.stem}_{name}", (report_folder / name).read_bytes())
