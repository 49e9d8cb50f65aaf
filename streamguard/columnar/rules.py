"""Every rule of the ruleset over a batch of events of one type: one kernel call per type.

The kernel says which rules fire on each event, with the value each condition
observed; only the events some rule fired on (and, while lists hold entries,
every event) go through the `Detector`, which builds the reasons a reviewer
reads from their row. The others are `allow` with score 0 and no reasons,
written from a template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamguard.columnar.jit import kernel
from streamguard.events import AnyEvent
from streamguard.kernels.checks import evaluate_rules
from streamguard.rules.facts import FACTS
from streamguard.rules.program import Checks, Program


@kernel
def evaluate_batch(inputs, numerators, denominators, ops, thresholds, first, observed, fired, fired_any):  # fmt: skip
    """Per event `e` (a row of `inputs`): `evaluate_rules` into row `e` of `observed` and `fired`; whether any fired."""
    for e in range(inputs.shape[0]):
        fired_any[e] = evaluate_rules(inputs[e], numerators, denominators, ops, thresholds, first, observed[e],
                                      fired[e]) > 0  # fmt: skip


@dataclass
class Evaluated:
    """The rules for one event type over a batch of its events."""

    observed: np.ndarray  # float64[events, conditions]
    fired: np.ndarray  # bool[events, rules]
    fired_any: np.ndarray  # bool[events]

    def row(self, j: int) -> tuple[np.ndarray, np.ndarray] | None:
        """What `Program.reasons` takes for event `j`; None when no rule looks at the type."""
        return (self.observed[j], self.fired[j]) if self.fired.shape[1] else None


def evaluate(
    program: Program, kind: str, events: list[AnyEvent], values: np.ndarray, index: dict[str, int]
) -> Evaluated:
    """The rules of `program` for `kind` on each event (`values`: their rows of feature values)."""
    checks: Checks | None = program.checks(kind)
    n = len(events)
    if checks is None or not n:
        return Evaluated(np.empty((n, 0)), np.zeros((n, 0), np.bool_), np.zeros(n, np.bool_))
    inputs = np.empty((n, len(checks.features) + len(checks.facts)))
    inputs[:, : len(checks.features)] = values[:, [index[name] for name in checks.features]]
    parameters = program.ruleset.parameters
    for j, name in enumerate(checks.facts):
        fact = FACTS[name]
        column = len(checks.features) + j
        if kind in fact.events:
            inputs[:, column] = [fact.read(e, parameters) for e in events]
        else:
            inputs[:, column] = math.nan
    out = Evaluated(np.empty((n, checks.numerators.size)), np.zeros((n, len(checks.rules)), np.bool_),
                    np.zeros(n, np.bool_))  # fmt: skip
    evaluate_batch(inputs, checks.numerators, checks.denominators, checks.ops, checks.thresholds, checks.first,
                   out.observed, out.fired, out.fired_any)  # fmt: skip
    return out
