"""Empirical distribution functions of errors (Radosavovic et al., 2019; the paper's Figs. 4-5, 7-8).

EDF(e) = the fraction of models whose error is below e. A curve that rises earlier and higher
means more of the sampled optimizer settings train well: the paper's measure of optimizability.
"""

from collections.abc import Sequence


def edf(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Fraction of `errors` strictly below each threshold (0 for an empty list)."""
    if not errors:
        return [0.0 for _ in thresholds]
    return [sum(err < t for err in errors) / len(errors) for t in thresholds]


def error_thresholds(step: float = 0.5, top: float = 100.0) -> list[float]:
    """0, step, 2·step, ..., top (error in percent); 100 % itself is included, so a run
    counted as 100 % error (diverged or failed) never reaches the curve."""
    count = round(top / step)
    return [round(i * step, 6) for i in range(count + 1)]
