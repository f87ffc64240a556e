"""A claim's verdict from per-seed values: REPRODUCED, CONTRADICTED or INCONCLUSIVE, by a stated test.

Every comparison is a one-sided t-test at ALPHA (no correction across claims): Welch's two-sample test, or the
one-sample test of the per-seed differences where the claim is paired (by seed). A claim is REPRODUCED when the
test rejects "not as claimed", CONTRADICTED when the opposite one-sided test rejects "as claimed or better"
(the reverse is shown), INCONCLUSIVE otherwise, or when a side has fewer than 2 seeds (no test can decide).
"≈" (within) is two one-sided tests (TOST): REPRODUCED when the difference is shown inside ±margin,
CONTRADICTED when it is shown outside. An ordering holds when every adjacent pair does; one contradicted pair
contradicts it. Never one seed's number.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from raycredit.reference import Claim

ALPHA = 0.05
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "REPRODUCED", "CONTRADICTED", "INCONCLUSIVE"
Seeds = dict[int, float]  # seed -> value of one cell


@dataclass(frozen=True)
class Verdict:
    verdict: str
    why: str  # the test and its outcome, for the report


def one_sided(a: Seeds, b: Seeds | None, shift: float, paired: bool) -> tuple[float, float, str] | str:
    """p-values of H1 "a - b > shift" and H1 "a - b < shift" (b None: a against the number `shift`) and the
    test's name; or why no test can be run."""
    from scipy import stats

    if b is None:
        x, y, name = np.array(list(a.values())), None, f"one-sample t-test, n={len(a)}"
    elif paired:
        common = sorted(set(a) & set(b))
        x, y, name = np.array([a[s] - b[s] for s in common]), None, f"paired t-test by seed, n={len(common)}"
    else:
        x, y = np.array(list(a.values())), np.array(list(b.values()))
        name = f"Welch t-test, n={len(x)} vs {len(y)}"
    if len(x) < 2 or (y is not None and len(y) < 2):
        return f"fewer than 2 seeds ({name})"
    if not np.all(np.isfinite(x)) or (y is not None and not np.all(np.isfinite(y))):
        return f"a non-finite value ({name})"
    diff = x.mean() - (y.mean() if y is not None else 0.0) - shift
    spread = x.std(ddof=1) ** 2 / len(x) + (y.std(ddof=1) ** 2 / len(y) if y is not None else 0.0)
    scale = max(np.abs(x).max(), np.abs(y).max() if y is not None else 0.0, abs(shift))
    if spread <= (1e-12 * scale) ** 2:  # the seeds agree to round-off: the sign of the difference is certain
        return float(diff <= 0), float(diff >= 0), name + ", no spread"
    with warnings.catch_warnings():  # seeds that agree to a few digits: scipy warns of its own round-off
        warnings.simplefilter("ignore", RuntimeWarning)
        if y is None:
            greater = stats.ttest_1samp(x, shift, alternative="greater").pvalue
        else:
            greater = stats.ttest_ind(x, y + shift, equal_var=False, alternative="greater").pvalue
    return float(greater), float(1.0 - greater), name


def compare(a: Seeds, b: Seeds | None, shift: float, paired: bool, want: str) -> Verdict:
    """want "greater": H1 a - b > shift; "less": H1 a - b < shift."""
    out = one_sided(a, b, shift, paired)
    if isinstance(out, str):
        return Verdict(INCONCLUSIVE, out)
    p_greater, p_less, name = out
    p_for, p_against = (p_greater, p_less) if want == "greater" else (p_less, p_greater)
    verdict = REPRODUCED if p_for < ALPHA else CONTRADICTED if p_against < ALPHA else INCONCLUSIVE
    return Verdict(verdict, f"{name}: p = {p_for:.3g} as claimed, {p_against:.3g} against")


def decide(claim: Claim, cells: list[Seeds]) -> Verdict:
    """The claim's verdict from its cells' per-seed values (in the claim's order)."""
    if claim.log:
        cells = [{s: math.log10(v) if v > 0 else -math.inf for s, v in c.items()} for c in cells]
    if claim.test in ("above", "below"):
        return compare(cells[0], None, claim.value, False, "greater" if claim.test == "above" else "less")
    if claim.test in ("greater", "less"):
        return compare(cells[0], cells[1], claim.by, claim.paired, claim.test)
    if claim.test == "within":
        low = compare(cells[0], cells[1], -claim.margin, claim.paired, "greater")
        high = compare(cells[0], cells[1], claim.margin, claim.paired, "less")
        if CONTRADICTED in (low.verdict, high.verdict):
            verdict = CONTRADICTED
        else:
            verdict = REPRODUCED if low.verdict == high.verdict == REPRODUCED else INCONCLUSIVE
        return Verdict(verdict, f"TOST ±{claim.margin:g}: above -margin: {low.why}; below +margin: {high.why}")
    pairs = [compare(cells[i], cells[i + 1], 0.0, claim.paired, "greater") for i in range(len(cells) - 1)]
    verdicts = {p.verdict for p in pairs}
    verdict = CONTRADICTED if CONTRADICTED in verdicts else REPRODUCED if verdicts == {REPRODUCED} else INCONCLUSIVE
    return Verdict(verdict, "; ".join(f"{claim.cells[i]} > {claim.cells[i + 1]}: {p.verdict.lower()} ({p.why})"
                                      for i, p in enumerate(pairs)))


def holds(claim: Claim, values: list[float]) -> bool:
    """Whether the claim holds on single numbers (the study's own table: means, no test)."""
    if claim.log:
        values = [math.log10(v) for v in values]
    if claim.test == "above":
        return values[0] > claim.value
    if claim.test == "below":
        return values[0] < claim.value
    if claim.test == "greater":
        return values[0] - values[1] > claim.by
    if claim.test == "less":
        return values[0] - values[1] < claim.by
    if claim.test == "within":
        return abs(values[0] - values[1]) < claim.margin
    return all(x > y for x, y in zip(values, values[1:], strict=False))
