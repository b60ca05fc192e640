"""The statistics of the search benchmark, over few-shot seeds: spread, paired difference with a bootstrap CI,
regret and gap closed. Accuracies come in as fractions (the scorer's), go out in points (%)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 0  # fixed: the same table from the same cells
BOOTSTRAP_SAMPLES = 10_000


def spread(values: list[float]) -> str:
    """`mean ± sd` in points; the sd is the sample sd over seeds (0 for one seed)."""
    array = 100 * np.asarray(values, dtype=float)
    sd = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.1f} ± {sd:.1f}"


@dataclass(frozen=True)
class Paired:
    mean: float  # points
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def paired_difference(method: list[float], control: list[float]) -> Paired:
    """Mean of the per-seed differences method - control, with a 95% percentile bootstrap CI over seeds.

    Seeds are resampled with replacement (the pairs stay together), so the seed-to-seed variation both share
    cancels. With one seed the interval is that one difference."""
    differences = 100 * (np.asarray(method, dtype=float) - np.asarray(control, dtype=float))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, len(differences), size=(BOOTSTRAP_SAMPLES, len(differences)))
    means = differences[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Paired(float(differences.mean()), float(low), float(high))


def regret(values: list[float], optimum: float) -> float:
    """Points below the planted optimum's test accuracy, on the mean over seeds."""
    return 100 * (optimum - float(np.mean(values)))


def gap_closed(values: list[float], starts: list[float], optimum: float) -> float | None:
    """Mean over seeds of (method - start) / (optimum - start): 0 is the start (best of the initial pool on train),
    1 the planted optimum. None where some seed's start is already at or above the optimum (no gap to close)."""
    fractions = []
    for value, start in zip(values, starts, strict=True):
        if optimum - start <= 0:
            return None
        fractions.append((value - start) / (optimum - start))
    return float(np.mean(fractions))
