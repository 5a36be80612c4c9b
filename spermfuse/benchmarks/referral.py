"""The certified referral's promise measured by simulation: for each certification method, how
often the accepted accuracy falls below the target (at most delta is promised) and how many cells
it accepts, on a model that is calibrated by construction.

The model (review science-v0.3, "G1"): a cell's confidence is kappa ~ 0.55 Beta(2, 3) + 0.45
Beta(20, 0.4) and it is right with probability kappa. The population accuracy of the cells a
threshold t accepts, E[kappa | kappa >= t], and their share, P(kappa >= t), are exact (Beta
tails), so a draw fails exactly when its certified threshold's population accuracy is below the
target. Referring every cell is no failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..core.selective import METHODS, certify_threshold
from ..page import markdown_table
from .context import Benchmark


@dataclass(frozen=True)
class BetaMixture:
    """Confidence kappa ~ sum_i weight_i Beta(a_i, b_i); a cell is right with probability kappa."""

    weights: tuple[float, ...]
    shapes: tuple[tuple[float, float], ...]

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` calibration cells: their confidence and whether each is right."""
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        a, b = np.array(self.shapes)[component].T
        confidence = rng.beta(a, b)
        return confidence, rng.random(n) < confidence

    def accepted_share(self, threshold: float) -> float:
        """P(kappa >= threshold): the share of all future cells accepted."""
        if math.isinf(threshold):
            return 0.0
        return float(sum(w * stats.beta.sf(threshold, a, b) for w, (a, b) in zip(self.weights, self.shapes)))

    def accuracy(self, threshold: float) -> float:
        """E[kappa | kappa >= threshold]: the accuracy on all future cells accepted (1 when none are)."""
        share = self.accepted_share(threshold)
        if share == 0.0:
            return 1.0
        right = sum(
            w * a / (a + b) * stats.beta.sf(threshold, a + 1, b) for w, (a, b) in zip(self.weights, self.shapes)
        )
        return float(right / share)

    def oracle_share(self, target_accuracy: float) -> float:
        """The largest share any threshold accepts while keeping the target (on a 0.001 grid)."""
        keeping = [t for t in np.linspace(0.0, 1.0, 1001) if self.accuracy(t) >= target_accuracy]
        return self.accepted_share(min(keeping)) if keeping else 0.0


CALIBRATED_MIXTURE = BetaMixture((0.55, 0.45), ((2.0, 3.0), (20.0, 0.4)))


@dataclass(frozen=True)
class ReferralOutcome:
    """Over ``repeats`` calibration draws: the share whose certificate fails, its standard error,
    the mean share of future cells accepted, and the share of draws that certify any threshold."""

    failure: float
    failure_standard_error: float
    accepted_share: float
    certified_share: float


def simulate_referral(
    model: BetaMixture, method: str, n: int, target_accuracy: float, delta: float, repeats: int, seed: int = 0
) -> ReferralOutcome:
    """Certify ``repeats`` times on ``n`` fresh calibration cells of ``model`` and judge each
    threshold on the population."""
    rng = np.random.default_rng(seed)
    thresholds = [
        certify_threshold(*model.draw(rng, n), target_accuracy, delta, method).threshold for _ in range(repeats)
    ]
    failures = np.array([model.accuracy(t) < target_accuracy for t in thresholds])
    return ReferralOutcome(
        float(failures.mean()),
        float(math.sqrt(max(failures.mean() * (1 - failures.mean()), 1.0 / repeats) / repeats)),
        float(np.mean([model.accepted_share(t) for t in thresholds])),
        float(np.isfinite(thresholds).mean()),
    )


def referral_suite(bench: Benchmark) -> dict:
    """Failure rate and accepted share of every certification method at n in {100, 500, 2000}
    calibration cells and targets {0.7, 0.9, 0.99}, delta 0.1, ``bench.referral_repeats`` draws each."""
    delta, rows, figures = 0.1, [], {}
    for target in (0.7, 0.9, 0.99):
        for n in (100, 500, 2000):
            row = [f"{target:g}", n, f"{CALIBRATED_MIXTURE.oracle_share(target):.3f}"]
            for method in METHODS:
                outcome = simulate_referral(CALIBRATED_MIXTURE, method, n, target, delta, bench.referral_repeats)
                figures[f"{method}_{target:g}_{n}"] = outcome
                row.append(
                    f"{outcome.failure:.3f} / {outcome.accepted_share:.3f} ({100 * outcome.certified_share:.0f} %)"
                )
            rows.append(row)
            if bench.progress:
                bench.progress(len(rows), 9)
    headers = ["target", "calibration cells", "oracle share"] + [
        f"{m}: failure / accepted (certified)" for m in METHODS
    ]
    note = (
        f"\nEach cell of the table: over {bench.referral_repeats} calibration draws (delta {delta}), the share whose "
        "threshold keeps less than the target on the population (promised <= delta), the mean share of future cells "
        "accepted, and in brackets the share of draws that certified any threshold. Model: confidence ~ 0.55 Beta(2, 3) "
        "+ 0.45 Beta(20, 0.4), right with probability equal to it (calibrated); oracle: the best any threshold can accept.\n"
    )
    bench.table(markdown_table(headers, rows) + note, f"--referral-repeats {bench.referral_repeats}")
    return {key: vars(outcome) for key, outcome in figures.items()}
