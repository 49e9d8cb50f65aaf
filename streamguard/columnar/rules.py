"""Every rule of the ruleset over a batch of events of one type: one kernel call per type.

The kernel says which events some rule fired on, and their scores; only those
events (and, while lists hold entries, every event) go through the
`Detector`, which builds the reasons a reviewer reads. The others are `allow`
with score 0 and no reasons, written from a template.
"""

from __future__ import annotations

import math

import numpy as np

from streamguard.columnar.jit import kernel
from streamguard.events import AnyEvent
from streamguard.kernels.checks import compare, observe
from streamguard.rules.facts import FACTS
from streamguard.rules.program import Checks, Program


@kernel
def fire_rules(inputs, numerators, denominators, ops, thresholds, first, fired_any) -> None:  # fmt: skip
    """fired_any[e]: whether any rule holds on event `e`'s row of `inputs`."""
    for e in range(inputs.shape[0]):
        row = inputs[e]
        for r in range(first.size - 1):
            holds = True
            for c in range(first[r], first[r + 1]):
                if not compare(observe(row, numerators[c], denominators[c]), ops[c], thresholds[c]):
                    holds = False
                    break
            if holds:
                fired_any[e] = True
                break


def rules_fired(
    program: Program, kind: str, events: list[AnyEvent], values: np.ndarray, index: dict[str, int]
) -> np.ndarray:
    """bool[len(events)]: whether any rule of `program` for `kind` fires on each event (`values`: its rows)."""
    checks: Checks | None = program.checks(kind)
    fired = np.zeros(len(events), np.bool_)
    if checks is None or not events:
        return fired
    inputs = np.empty((len(events), len(checks.features) + len(checks.facts)))
    inputs[:, : len(checks.features)] = values[:, [index[name] for name in checks.features]]
    parameters = program.ruleset.parameters
    for j, name in enumerate(checks.facts):
        fact = FACTS[name]
        column = len(checks.features) + j
        if kind in fact.events:
            inputs[:, column] = [fact.read(e, parameters) for e in events]
        else:
            inputs[:, column] = math.nan
    fire_rules(inputs, checks.numerators, checks.denominators, checks.ops, checks.thresholds, checks.first, fired)
    return fired
