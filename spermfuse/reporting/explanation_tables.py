"""The Markdown of the explanation checks (evaluate.py --explain): the pointing game's table
and the cascading-randomisation curve.
"""

from __future__ import annotations

from ..explain.sanity_check import RandomisationCurve, Similarity
from ..page import markdown_table

POINTING_GROUP_NAMES = {
    "head": "head classes",
    "neck": "neck classes",
    "tail": "tail classes",
    "sperm": "Normal (any part)",
}


def pointing_game_markdown(rows: list[dict], setting: dict) -> str:
    """The pointing game (``pointing_game.summarise``'s rows) beside its baselines, and what a hit
    means (``setting``: ``input_size``, ``map_size``, ``median_radius``)."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = [
        [
            POINTING_GROUP_NAMES[row["group"]],
            row["cells"],
            row["n"],
            f"{row['hit_rate']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]",
            share(row["area_share"]),
            share(row["centre"]),
            share(row["darkest"]),
            share(row["untrained"]),
            f"{share(row['energy'])} ({share(row['part_share'])})",
            share(row["part_switch"]),
        ]
        for row in rows
    ]
    text = (
        "Pointing game of the fused Grad-CAM of each test cell's *true* class: a hit is a peak within "
        f"{setting['median_radius']:.1f} original px (median) of the part that carries the defect, half the stride "
        f"of the coarsest map ({setting['map_size']} x {setting['map_size']} at {setting['input_size']} px). "
        "Beside it, the same hit rate of rules that know nothing of the model, on the same cells: a uniformly "
        "random peak (area share), the image centre, the darkest point of the blurred image, and the same pair "
        "untrained; the energy share of the map inside the part (a uniform map's in brackets); and how often "
        "the map of a class of another part (a tail class for head and neck cells, a head class for tail cells) "
        "moves its peak to that part. Intervals: 95 % bootstrap over cells.\n\n"
    )
    text += markdown_table(
        [
            "classes",
            "cells",
            "n",
            "hit rate [95 % CI]",
            "area share",
            "centre",
            "darkest",
            "untrained",
            "energy (uniform)",
            "part switch",
        ],
        table,
    )
    return text


def randomisation_markdown(curve: RandomisationCurve) -> str:
    """The cascading-randomisation check (``sanity_check.py``): the similarity of the trained maps
    to the randomised network's at each step, the references, and the verdict."""

    def shown(value: Similarity) -> str:
        return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"

    text = (
        f"Cascading randomisation (Adebayo et al. 2018) of the fused Grad-CAM, {curve.images} test cells of every fold, "
        "the true class explained throughout: each member re-initialised from the logits downward, block by block; "
        "similarity of each randomised map to the trained one (mean over cells, 95 % bootstrap interval).\n\n"
    )
    text += markdown_table(
        ["randomised", "Spearman", "SSIM"],
        [[step, shown(r), shown(s)] for step, r, s in zip(curve.steps, curve.spearman, curve.ssim)],
    )
    if curve.inconclusive:
        verdict = (
            f"**inconclusive**: every trained map is flat (zero on all {curve.images} cells), so no randomisation can "
            "change it; the members may not have learned the classes"
        )
    elif curve.fails:
        verdict = f"**fails**: at full randomisation the maps still correlate with the trained ones (upper bound >= {curve.threshold})"
    else:
        verdict = f"passes: at full randomisation the upper bound of the Spearman interval is below {curve.threshold}"
    if curve.flat_maps and not curve.inconclusive:
        verdict += f" ({curve.flat_maps} of {curve.images} trained maps are flat and left out of the comparisons)"
    text += (
        f"\nTwo independently randomised pairs agree with each other at Spearman {shown(curve.null_spearman)} "
        f"(SSIM {shown(curve.null_ssim)}): what the architecture and the image alone give. The trained maps agree with "
        f"the model-free darkness of the blurred image at Spearman {shown(curve.darkness_spearman)}. Verdict: {verdict}.\n"
    )
    return text
