"""Rule checks: every rule of a ruleset evaluated over one event's input vector.

A compiled ruleset is flat arrays (see `streamguard.rules.program`): rule `r`
holds when all of its conditions `first[r] .. first[r + 1] - 1` hold. A
condition compares one input (or the ratio of two) with a threshold. Inputs
are feature values and event facts; a missing input is NaN, and NaN fails
every comparison, so a rule never fires on what was not observed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Comparison codes, in the order `streamguard.rules.spec.Op` lists them.
GE, GT, LE, LT, EQ, NE = 0, 1, 2, 3, 4, 5


@njit(cache=True)
def compare(x: float, op: int, threshold: float) -> bool:
    if op == GE:
        return x >= threshold
    if op == GT:
        return x > threshold
    if op == LE:
        return x <= threshold
    if op == LT:
        return x < threshold
    if op == EQ:
        return x == threshold
    return x != threshold and not np.isnan(x)


@njit(cache=True)
def observe(values: np.ndarray, numerator: int, denominator: int) -> float:
    """The input a condition compares: `values[numerator]`, or its ratio to `values[denominator]`."""
    x = float(values[numerator])
    if denominator < 0:
        return x
    d = float(values[denominator])
    if d > 0:
        return x / d
    return np.nan


@njit(cache=True)
def evaluate_rules(
    values: np.ndarray,
    numerators: np.ndarray,
    denominators: np.ndarray,
    ops: np.ndarray,
    thresholds: np.ndarray,
    first: np.ndarray,
    observed: np.ndarray,
    fired: np.ndarray,
) -> int:
    """Fill `observed` (per condition) and `fired` (per rule); how many rules fired."""
    count = 0
    for r in range(first.size - 1):
        holds = True
        for c in range(first[r], first[r + 1]):
            x = observe(values, numerators[c], denominators[c])
            observed[c] = x
            if not compare(x, ops[c], thresholds[c]):
                holds = False
        fired[r] = holds
        if holds:
            count += 1
    return count


@njit(cache=True)
def combine_scores(scores: np.ndarray, fired: np.ndarray) -> int:
    """0-1000: each fired rule's score is the chance it is right, independent of the others (noisy-or)."""
    clean = 1.0
    for r in range(scores.size):
        if fired[r]:
            clean *= 1.0 - min(max(scores[r], 0), 1000) / 1000.0
    return int(round(1000.0 * (1.0 - clean)))


def warm_up() -> None:
    """Compile (or load from the cache) every check kernel."""
    values = np.array([1.0, 2.0])
    compare(1.0, GE, 1.0)
    observe(values, 0, 1)
    index = np.zeros(1, np.int32)
    evaluate_rules(
        values,
        index,
        np.full(1, -1, np.int32),
        np.zeros(1, np.int8),
        np.ones(1),
        np.array([0, 1], np.int32),
        np.zeros(1),
        np.zeros(1, np.bool_),
    )
    combine_scores(np.array([300], np.int32), np.ones(1, np.bool_))


KERNELS = (compare, observe, evaluate_rules, combine_scores)
