"""The feature declarations laid out as arrays for the kernels.

An entity has, per count/sum/min/max/distinct feature of its kind, a ring
of buckets (`ring_index`: which of its kind's rings), made the first time
the feature counts an event of it; one number per since_last feature
(`last_offset`); and per distinct feature its exact values
(`distinct_offset`). The kernels read the declarations through
the `FeatureArrays` tuple: one array per attribute, indexed by feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from streamguard.entities import EntityKind, kind_name
from streamguard.errors import ConfigError
from streamguard.events import EVENT_TYPES
from streamguard.features.spec import MAX_SLOTS, FeatureSpec

COUNT, SUM, DISTINCT, SINCE_LAST, MIN, MAX = range(6)
MAX_COLUMNS = 64  # the count kernel's scratch row of an event's entities (count.MAX_KINDS)
MAX_DISTINCT_FEATURES = 64  # pool and register blocks an event may take at most (count.RESERVE_BLOCKS)
MAX_PREDICATES = 63  # bits of an event's flags
AGGREGATES = {"count": COUNT, "sum": SUM, "distinct": DISTINCT, "since_last": SINCE_LAST, "min": MIN, "max": MAX}
TYPE_CODE = {kind: code for code, kind in enumerate(EVENT_TYPES)}


class FeatureArrays(NamedTuple):
    kind: np.ndarray  # the entity kind's index
    aggregate: np.ndarray
    resolution: np.ndarray  # ms
    window_buckets: np.ndarray
    slots: np.ndarray  # ring slots: window plus lateness
    ring_index: np.ndarray  # which of the kind's rings is the feature's (-1: since_last)
    last_offset: np.ndarray  # since_last: its column in the kind's `last` (-1 otherwise)
    distinct_offset: np.ndarray  # distinct: its index among the kind's distinct features (-1 otherwise)
    counted_types: np.ndarray  # bit per event type code it counts
    predicates: np.ndarray  # bit per predicate (`Layout.predicates`) that must hold to count
    hash_column: np.ndarray  # distinct: the column of value hashes it counts (-1 otherwise)
    number_column: np.ndarray  # sum/min/max: the column of numbers it reads (-1 otherwise)
    lifetime: np.ndarray  # ms after its newest data it can still matter: window plus lateness


class KindArrays(NamedTuple):
    """Per entity kind: its rings, the size of an entity's chunk in the other arenas, the event types counted."""

    rings: np.ndarray  # ring features of the kind
    ring_stride: np.ndarray  # [1]: ring features of the kind that has most (an entity's row of ring offsets)
    ring_reserve: np.ndarray  # [1]: ring slots an event may take at most (every ring feature's, made at once)
    last_width: np.ndarray
    distinct_width: np.ndarray
    counted_types: np.ndarray  # bit per event type code some feature of the kind counts
    features: np.ndarray  # the kind's features: `features[first[k]:first[k + 1]]`
    first: np.ndarray


@dataclass(frozen=True)
class Predicate:
    field: str
    op: str
    value: Any


class Layout:
    """Which columns a batch needs, and where each feature's state is in its kind's rows."""

    def __init__(self, specs: list[FeatureSpec], lateness_ms: int) -> None:
        self.specs = specs
        self.lateness_ms = lateness_ms
        self.kinds = _unique(kind_name(s.entity, s.phone_block_digits) for s in specs)
        distinct_fields = [
            kind_name(s.field, s.phone_block_digits) for s in specs if s.aggregate == "distinct" and s.field
        ]
        # Hash columns: the kinds, then the fields distinct counts read that are not kinds.
        self.hash_columns = self.kinds + [f for f in _unique(distinct_fields) if f not in self.kinds]
        self.number_columns = _unique(s.field for s in specs if s.aggregate in ("sum", "min", "max"))
        self.predicates = _unique_predicates(specs)
        self.column_kinds = [EntityKind(name) for name in self.hash_columns]
        self.fingerprint_column = self.hash_columns.index("fingerprint") if "fingerprint" in self.hash_columns else -1
        self.device_column = -1
        if self.fingerprint_column >= 0:  # the device id is what the fingerprint is remembered by
            if "device_id" not in self.hash_columns:
                self.hash_columns.append("device_id")
                self.column_kinds.append(EntityKind("device_id"))
            self.device_column = self.hash_columns.index("device_id")
        self.rings = [0] * len(self.kinds)
        self.last_width = [0] * len(self.kinds)
        self.distinct_width = [0] * len(self.kinds)
        self.arrays = self._arrays()
        self._check_limits()
        self.index = {s.name: f for f, s in enumerate(specs)}
        per_kind = [self.features_of(k) for k in range(len(self.kinds))]
        self.kind_arrays = KindArrays(
            rings=np.array(self.rings, np.int64),
            ring_stride=np.array([max(self.rings, default=0)], np.int64),
            ring_reserve=np.array([sum(s.slots(lateness_ms) for s in specs)], np.int64),
            last_width=np.array(self.last_width, np.int64),
            distinct_width=np.array(self.distinct_width, np.int64),
            counted_types=np.array([np.bitwise_or.reduce(self.arrays.counted_types[fs]) for fs in per_kind], np.int64),
            features=np.array([f for fs in per_kind for f in fs], np.int64),
            first=np.cumsum([0] + [len(fs) for fs in per_kind]).astype(np.int64),
        )

    def plan(self, read: dict[str, frozenset[str]] | None) -> ReadPlan:
        """What a batch reads: per event type, the features its verdicts need (None: every feature).

        Made again whenever the ruleset changes: a new rule may read a feature no rule read.
        """
        read_types = np.array(
            [
                _bits(kind for kind in TYPE_CODE if read is None or spec.name in read.get(kind, ()))
                for spec in self.specs
            ],
            np.int64,
        )
        touched = self.arrays.counted_types | read_types
        by_type = [[f for f in range(len(self.specs)) if touched[f] >> code & 1] for code in range(len(EVENT_TYPES))]
        count = np.array([len(fs) for fs in by_type], np.int64)
        table = np.full((len(EVENT_TYPES), max(1, int(count.max()))), -1, np.int64)
        for code, fs in enumerate(by_type):
            table[code, : len(fs)] = fs
        return ReadPlan(read_types, table, count)

    def _check_limits(self) -> None:
        """What the kernels rely on (they check no bounds)."""
        distinct = int((self.arrays.aggregate == DISTINCT).sum())
        limits = [
            (len(self.hash_columns) <= MAX_COLUMNS, f"at most {MAX_COLUMNS} entity kinds and distinct fields"),
            (distinct <= MAX_DISTINCT_FEATURES, f"at most {MAX_DISTINCT_FEATURES} distinct features"),
            (len(self.predicates) <= MAX_PREDICATES, f"at most {MAX_PREDICATES} different `where` conditions"),
            (int(self.arrays.slots.max(initial=0)) <= MAX_SLOTS, f"at most {MAX_SLOTS} ring slots per feature"),
        ]
        for holds, limit in limits:
            if not holds:
                raise ConfigError(f"features/: the columnar engine takes {limit}")
        for spec in self.specs:
            # Other events learn their fingerprint from their device, on the device's shard: by then the
            # other entities of the event were counted (on their own shards) without it.
            counts_resolved = (
                spec.field == "fingerprint" and spec.entity != "fingerprint" and set(spec.events) != {"device"}
            )
            if spec.aggregate == "distinct" and counts_resolved:
                raise ConfigError(
                    f"features/: {spec.name} counts distinct fingerprints of {spec.entity} over events other "
                    "than device reports; only device reports carry their own fingerprint"
                )

    def _arrays(self) -> FeatureArrays:
        columns: dict[str, list[int]] = {name: [] for name in FeatureArrays._fields}
        pred_bit = {p: 1 << i for i, p in enumerate(self.predicates)}
        for spec in self.specs:
            k = self.kinds.index(kind_name(spec.entity, spec.phone_block_digits))
            aggregate = AGGREGATES[spec.aggregate]
            ring = last = distinct = -1
            if aggregate == SINCE_LAST:
                last, self.last_width[k] = self.last_width[k], self.last_width[k] + 1
            else:
                ring, self.rings[k] = self.rings[k], self.rings[k] + 1
            if aggregate == DISTINCT:
                distinct, self.distinct_width[k] = self.distinct_width[k], self.distinct_width[k] + 1
            row = {
                "kind": k,
                "aggregate": aggregate,
                "resolution": spec.resolution_ms,
                "window_buckets": spec.window_ms // spec.resolution_ms,
                "slots": spec.slots(self.lateness_ms),
                "ring_index": ring,
                "last_offset": last,
                "distinct_offset": distinct,
                "counted_types": _bits(spec.events),
                "predicates": _or(pred_bit[_predicate(p)] for p in spec.where),
                "hash_column": self.hash_columns.index(kind_name(spec.field, spec.phone_block_digits))
                if aggregate == DISTINCT and spec.field
                else -1,
                "number_column": self.number_columns.index(spec.field)
                if aggregate in (SUM, MIN, MAX) and spec.field
                else -1,
                "lifetime": spec.window_ms + self.lateness_ms,
            }
            for name, value in row.items():
                columns[name].append(value)
        return FeatureArrays(*(np.array(columns[name], np.int64) for name in FeatureArrays._fields))

    def features_of(self, kind: int) -> list[int]:
        return [f for f in range(len(self.specs)) if self.arrays.kind[f] == kind]


class ReadPlan(NamedTuple):
    read_types: np.ndarray  # per feature: bit per event type code whose events read its value
    by_type: np.ndarray  # [type, j]: the features an event of the type counts in or reads
    by_type_count: np.ndarray


def _bits(kinds: Iterable[str]) -> int:
    """One bit per event type (a type listed twice is one bit)."""
    return _or(1 << TYPE_CODE[kind] for kind in kinds)


def _or(bits: Iterable[int]) -> int:
    total = 0
    for bit in bits:
        total |= bit
    return total


def _predicate(p: Any) -> Predicate:
    return Predicate(p.field, p.op, json.dumps(p.value))


def _unique_predicates(specs: list[FeatureSpec]) -> list[Predicate]:
    return _unique(_predicate(p) for s in specs for p in s.where)


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))
