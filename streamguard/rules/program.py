"""A ruleset compiled for the kernels: per event type, flat arrays of conditions.

`Program.evaluate` is the typed adapter around `kernels.checks`: it lays an
event's feature values and facts out as one vector, lets the kernels decide
which rules fire and what they score, and turns the result into reasons a
reviewer can read (inputs, values, thresholds, pseudonymised entities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamguard.events import AnyEvent, Reason
from streamguard.features.spec import FeatureSpec
from streamguard.features.table import entity_id
from streamguard.kernels.checks import combine_scores, evaluate_rules
from streamguard.rules.facts import FACTS, facts_of
from streamguard.rules.spec import OPS, Rule, Ruleset


@dataclass(frozen=True)
class Checks:
    """The rules of one event type, as the kernels take them."""

    rules: list[Rule]
    features: list[str]  # inputs[:len(features)]
    facts: list[str]  # inputs[len(features):]
    numerators: np.ndarray
    denominators: np.ndarray
    ops: np.ndarray
    thresholds: np.ndarray
    first: np.ndarray
    scores: np.ndarray
    entities: list[frozenset[str]]  # per rule: what its features are counted per (for allow lists)

    @classmethod
    def of(cls, rules: list[Rule], specs: dict[str, FeatureSpec]) -> Checks:
        names = sorted({n for rule in rules for c in rule.when for n in c.names})
        features = [n for n in names if n not in FACTS]
        facts = [n for n in names if n in FACTS]
        index = {n: i for i, n in enumerate(features + facts)}
        conditions = [c for rule in rules for c in rule.when]
        return cls(
            rules=rules,
            features=features,
            facts=facts,
            numerators=np.array([index[c.names[0]] for c in conditions], np.int32),
            denominators=np.array([index[c.names[1]] if len(c.names) > 1 else -1 for c in conditions], np.int32),
            ops=np.array([OPS.index(c.op) for c in conditions], np.int8),
            thresholds=np.array([float(c.value) for c in conditions], np.float64),
            first=np.cumsum([0] + [len(rule.when) for rule in rules], dtype=np.int32),
            scores=np.array([rule.score for rule in rules], np.int32),
            entities=[
                frozenset(entity_id(specs[n]) for c in rule.when for n in c.names if n in specs)
                if rule.kind == "velocity"
                else frozenset()
                for rule in rules
            ],
        )


class Program:
    """A ruleset ready to decide events."""

    def __init__(self, ruleset: Ruleset, features: list[FeatureSpec]) -> None:
        self.ruleset = ruleset
        specs = {f.name: f for f in features}
        self._entity_of = {f.name: entity_id(f) for f in features}
        enabled = [rule for rule in ruleset.rule if rule.enabled]
        self._checks = {
            kind: Checks.of([rule for rule in enabled if kind in rule.events], specs)
            for kind in {kind for rule in enabled for kind in rule.events}
        }
        self._inputs = {kind: frozenset(checks.features) for kind, checks in self._checks.items()}
        # Per rule, what its reasons' details say whatever the event: the terms' inputs, ops and
        # thresholds, and the entity kinds its conditions are about, in order.
        self._said = {
            kind: [_Said.of(rule, self._entity_of) for rule in checks.rules] for kind, checks in self._checks.items()
        }

    def checks(self, kind: str) -> Checks | None:
        """The rules for events of `kind`, as the kernels take them (None: no rule looks at that type)."""
        return self._checks.get(kind)

    def features_read(self, kind: str) -> frozenset[str]:
        """The features the rules for events of `kind` look at: all an entity's shard needs to compute."""
        return self._inputs.get(kind, frozenset())

    def evaluate(
        self,
        event: AnyEvent,
        kind: str,
        values: dict[str, float],
        entities: dict[str, bytes],
        allowed: frozenset[str] = frozenset(),
    ) -> list[Reason]:
        """The reasons of every rule that fires on `event`, minus velocity rules about `allowed` entities."""
        checks = self._checks.get(kind)
        if checks is None:
            return []
        nan = math.nan
        inputs = [values.get(name, nan) for name in checks.features]
        inputs += facts_of(event, kind, checks.facts, self.ruleset.parameters)
        observed = np.empty(checks.numerators.size)
        fired = np.zeros(len(checks.rules), np.bool_)
        if not evaluate_rules(
            np.array(inputs, np.float64),
            checks.numerators,
            checks.denominators,
            checks.ops,
            checks.thresholds,
            checks.first,
            observed,
            fired,
        ):
            return []
        return self.reasons(kind, observed, fired, entities, allowed)

    def reasons(
        self,
        kind: str,
        observed: np.ndarray,
        fired: np.ndarray,
        entities: dict[str, bytes],
        allowed: frozenset[str] = frozenset(),
    ) -> list[Reason]:
        """The reasons of the rules for `kind` that `fired` says fire, with the values `observed` per condition.

        `observed` and `fired` are what `kernels.checks.evaluate_rules` fills,
        for one event or as a row of a batch's (`columnar.rules`).
        """
        checks, said = self._checks[kind], self._said[kind]
        reasons = []
        for r in np.flatnonzero(fired).tolist():
            if allowed and checks.entities[r] & allowed:
                continue
            rule = checks.rules[r]
            detail = said[r].detail(observed, int(checks.first[r]), entities)
            reasons.append(Reason(code=rule.code, score=rule.score, detail=detail))
        reasons.sort(key=lambda reason: -reason.score)
        return reasons

    def score(self, reasons: list[Reason]) -> int:
        return combine_scores(np.array([r.score for r in reasons], np.int32), np.ones(len(reasons), np.bool_))

    def decision(self, score: int) -> str:
        d = self.ruleset.decision
        if score >= d.deny:
            return "deny"
        if score >= d.review:
            return "review"
        if score >= d.challenge:
            return "challenge"
        return "allow"


@dataclass(frozen=True)
class _Said:
    """A rule's reason detail, less what the event observed."""

    terms: list[tuple[str, str, float | int | None]]  # per condition: input, op, threshold
    entity_kinds: list[str]  # of the entities its conditions are about, the first the event has is named

    @classmethod
    def of(cls, rule: Rule, entity_of: dict[str, str]) -> _Said:
        kinds = [entity_of.get(c.names[0]) for c in rule.when]
        return cls([(c.input, c.op, _number(c.value)) for c in rule.when], [k for k in kinds if k is not None])

    def detail(self, observed: np.ndarray, first: int, entities: dict[str, bytes]) -> dict[str, Any]:
        terms = [
            {"feature": name, "value": _number(observed[first + j]), "op": op, "threshold": threshold}
            for j, (name, op, threshold) in enumerate(self.terms)
        ]
        detail: dict[str, Any] = dict(terms[0])
        if len(terms) > 1:
            detail["and"] = terms[1:]
        for kind in self.entity_kinds:
            if kind in entities:
                detail["entity"] = {"kind": kind, "id": entities[kind][:8].hex()}
                break
        return detail


def _number(x: float | bool) -> float | int | None:
    x = float(x)
    if math.isnan(x):
        return None
    return int(x) if x.is_integer() else round(x, 4)
