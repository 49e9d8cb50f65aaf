"""Rulesets: which checks run, on what inputs, with what scores and thresholds.

A ruleset is a TOML (or JSON) document; `features/rulesets/default.toml` is the
default, and publishing another to `control.rules` replaces it at run time:

    name = "default"
    version = 3

    [decision]                      # score (0-1000) from which each decision applies
    challenge = 300
    review = 600
    deny = 800

    [[rule]]
    code = "credential_stuffing.ip_failures"
    events = ["login"]
    score = 700
    when = [
      { input = "login_failures_by_ip_10m", op = ">=", value = 10 },
      { input = "login_failures_by_ip_10m / logins_by_ip_10m", op = ">=", value = 0.8 },
    ]

An input is a feature (features/*.toml), a fact of the event itself
(`streamguard.rules.facts`), or the ratio `a / b` of two. A rule fires when
all its conditions hold. `kind = "tampering"` marks a rule an allow-list entry
must not silence (velocity rules are silenced for allow-listed entities).
Everything is checked before a ruleset is used: `parse_ruleset` raises
`RulesetError` naming the path of the first problem.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from streamguard.errors import ConfigError
from streamguard.events import EVENT_TYPES
from streamguard.features.spec import ENTITY_FIELD, FeatureSpec, event_fields, event_types_problem
from streamguard.rules.facts import FACTS

Op = Literal[">=", ">", "<=", "<", "==", "!="]
OPS: Final[tuple[str, ...]] = (">=", ">", "<=", "<", "==", "!=")  # kernel codes are the positions
Score = Annotated[int, Meta(ge=0, le=1000)]
_CODE: Final = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z0-9_]*$")
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RulesetError(ConfigError):
    """A ruleset that cannot be used; the message names the path of the problem."""


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: str
    op: Op
    value: float | bool

    @property
    def names(self) -> list[str]:
        """The inputs read: one, or the two of a ratio."""
        return [part.strip() for part in self.input.split("/")]


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: str
    events: list[str]
    score: Score
    when: list[Condition]
    kind: Literal["velocity", "tampering"] = "velocity"
    enabled: bool = True

    @property
    def family(self) -> str:
        return self.code.split(".", 1)[0]


class Decision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    challenge: Score
    review: Score
    deny: Score


class Parameters(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Values the facts depend on; they differ per market."""

    home_country_codes: list[str] = msgspec.field(default_factory=lambda: ["+86"])
    virtual_operator_prefixes: list[str] = msgspec.field(
        default_factory=lambda: ["+86162", "+86165", "+86167", "+86170", "+86171"]
    )


class Ruleset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: Annotated[int, Meta(ge=1)]
    decision: Decision
    rule: list[Rule]
    parameters: Parameters = msgspec.field(default_factory=Parameters)
    description: str = ""

    @property
    def label(self) -> str:
        """What verdicts carry: `name@version`."""
        return f"{self.name}@{self.version}"


def default_path() -> Path:
    """`features/rulesets/default.toml` of the source tree (streamguard is installed editable, beside it)."""
    return Path(__file__).resolve().parents[2] / "features" / "rulesets" / "default.toml"


def load_ruleset(features: list[FeatureSpec], path: Path | None = None) -> Ruleset:
    path = path or default_path()
    try:
        return parse_ruleset(path.read_bytes(), features)
    except RulesetError as exc:
        raise RulesetError(f"{path}: {exc}") from None


def parse_ruleset(raw: bytes, features: list[FeatureSpec]) -> Ruleset:
    """A checked ruleset from a TOML or JSON document."""
    try:
        if raw.lstrip().startswith(b"{"):
            ruleset = msgspec.json.decode(raw, type=Ruleset)
        else:
            ruleset = msgspec.convert(tomllib.loads(raw.decode()), Ruleset)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RulesetError(str(exc)) from None
    problem = first_problem(ruleset, {f.name: f for f in features})
    if problem:
        raise RulesetError(problem)
    return ruleset


def first_problem(ruleset: Ruleset, features: dict[str, FeatureSpec]) -> str | None:
    if not _NAME.match(ruleset.name):
        return "`$.name` must be 1-64 letters, digits, '_', '.' or '-'"
    d = ruleset.decision
    if not 0 < d.challenge <= d.review <= d.deny:
        return "`$.decision`: thresholds must rise: 0 < challenge <= review <= deny"
    codes: set[str] = set()
    for i, rule in enumerate(ruleset.rule):
        where = f"`$.rule[{i}]` ({rule.code})"
        if rule.code in codes:
            return f"{where}: the code is used twice"
        codes.add(rule.code)
        for problem in _rule_problems(rule, features):
            return f"{where}: {problem}"
    return None


def _rule_problems(rule: Rule, features: dict[str, FeatureSpec]) -> list[str]:
    found = []
    if not _CODE.match(rule.code):
        found.append("`code` must be `<family>.<detail>` in snake_case")
    events_problem = event_types_problem(rule.events)
    if events_problem:
        found.append(events_problem)
    if not rule.when:
        found.append("`when` needs at least one condition")
    for j, condition in enumerate(rule.when):
        names = condition.names
        if len(names) > 2 or not all(names):
            found.append(f"`when[{j}].input`: {condition.input!r} is neither a name nor `a / b`")
            continue
        for name in names:
            found += [f"`when[{j}].input`: {p}" for p in _input_problems(name, rule.events, features)]
    return found


def _input_problems(name: str, events: list[str], features: dict[str, FeatureSpec]) -> list[str]:
    spec = features.get(name)
    if spec is not None:
        entity_field = ENTITY_FIELD[spec.entity]
        return [
            f"{name!r} is counted per {spec.entity}, and {kind} events have no `{entity_field}`"
            for kind in events
            if kind in EVENT_TYPES and entity_field is not None and entity_field not in event_fields(kind)
        ]
    fact = FACTS.get(name)
    if fact is None:
        return [f"{name!r} is neither a feature (features/*.toml) nor a fact ({', '.join(sorted(FACTS))})"]
    return [f"the fact {name!r} is not known for {kind} events" for kind in events if kind not in fact.events]
