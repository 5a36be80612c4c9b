"""The promises of a fusion in Markdown (fuse.py --summary, the README's promises block): the
temperatures, the certified referral and the prediction sets, fold by fold.
"""

from __future__ import annotations

from ..page import markdown_table, markdown_text
from ..store.fusion_folder import FusionSettings
from .report import fmt


def _majority_yardstick(promise: dict, meaning: str) -> str:
    """A promise beside always answering the majority class of the same test cells."""
    majority = promise["majority"]
    return (
        f" For comparison, always answering {markdown_text(majority['class'])} is right on {fmt(majority['rate'])} of "
        f"the test cells: {meaning}."
    )


def promises_markdown(settings: FusionSettings, source: str, environment: str) -> str:
    """The certified referral and the prediction sets of a fusion, per fold and pooled, as Markdown."""
    out = [f"<!-- written by fuse.py --summary from {markdown_text(source)}; {environment} -->\n"]
    if settings.referral:
        r = settings.referral
        rows = [
            [
                f["fold"],
                "refer all" if f["certificate"]["threshold"] is None else fmt(f["certificate"]["threshold"]),
                f"{f['certificate']['n_accepted']} / {f['certificate']['n_calibration']}",
                f["test"]["accepted"],
                fmt(f["test"]["accepted_accuracy"]),
                "[" + ", ".join(fmt(v) for v in f["test"]["interval"]) + "]",
            ]
            for f in r["per_fold"]
        ]
        pooled = r["pooled"]
        rows.append(
            [
                "pooled",
                "",
                "",
                pooled["accepted"],
                fmt(pooled["accepted_accuracy"]),
                "[" + ", ".join(fmt(v) for v in pooled["interval"]) + "]",
            ]
        )
        out.append(
            f"Referral certified on {r['calibrated_on']} ({r['method']}): accepted accuracy >= {r['target_accuracy']} with probability >= "
            f"{1 - r['delta']:.2f}; folds whose test accuracy is below it beyond doubt (one-sided 95 % Clopper-Pearson upper bound under the target): {fmt(r['folds_below_target'], 2)}."
            f"{_majority_yardstick(r, 'a target below that rate promises less than that constant answer')}\n"
        )
        out.append(
            markdown_table(
                [
                    "fold",
                    "threshold",
                    "calibration cells accepted",
                    "test cells accepted",
                    "test accuracy",
                    "95 % interval",
                ],
                rows,
            )
        )
    if settings.sets:
        c = settings.sets
        groups = list(dict.fromkeys(c["by"])) if c["by"] else []
        rows = [
            [f["fold"], fmt(f["test"]["coverage"]), fmt(f["test"]["mean_size"], 2)]
            + [fmt(f["test"].get("per_group_coverage", {}).get(g)) for g in groups]
            for f in c["per_fold"]
        ]
        out.append(
            f"Prediction sets ({c['method']}, calibrated on {c['calibrated_on']}): the true class inside with probability >= {1 - c['alpha']:.2f}"
            f"{' within each part group' if groups else ''}; pooled test coverage {fmt(c['pooled']['coverage'])}, mean size {fmt(c['pooled']['mean_size'], 2)}."
            f"{_majority_yardstick(c, 'the set holding that class alone covers as much')}\n"
        )
        out.append(
            markdown_table(["fold", "test coverage", "mean set size"] + [f"coverage, {g}" for g in groups], rows)
        )
    return "\n".join(out)
