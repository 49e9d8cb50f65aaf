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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from streamguard.entities import EntityKind, kind_name
from streamguard.events import EVENT_TYPES
from streamguard.features.spec import FeatureSpec

COUNT, SUM, DISTINCT, SINCE_LAST, MIN, MAX = range(6)
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
    read_types: np.ndarray  # bit per event type code whose events read its value
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

    def __init__(self, specs: list[FeatureSpec], lateness_ms: int, read: dict[str, frozenset[str]] | None) -> None:
        """`read`: per event type, the features its verdicts need (None: every feature, for the features topic)."""
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
        self.arrays = self._arrays(read)
        by_type = [
            [f for f in range(len(specs)) if (self.arrays.counted_types[f] | self.arrays.read_types[f]) >> code & 1]
            for code in range(len(EVENT_TYPES))
        ]
        self.by_type_count = np.array([len(fs) for fs in by_type], np.int64)
        self.by_type = np.full((len(EVENT_TYPES), max(1, int(self.by_type_count.max()))), -1, np.int64)
        for code, fs in enumerate(by_type):
            self.by_type[code, : len(fs)] = fs
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

    def _arrays(self, read: dict[str, frozenset[str]] | None) -> FeatureArrays:
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
            read_types = sum(
                1 << code for kind, code in TYPE_CODE.items() if read is None or spec.name in read.get(kind, ())
            )
            row = {
                "kind": k,
                "aggregate": aggregate,
                "resolution": spec.resolution_ms,
                "window_buckets": spec.window_ms // spec.resolution_ms,
                "slots": spec.slots(self.lateness_ms),
                "ring_index": ring,
                "last_offset": last,
                "distinct_offset": distinct,
                "counted_types": sum(1 << TYPE_CODE[t] for t in spec.events),
                "predicates": sum(pred_bit[_predicate(p)] for p in spec.where),
                "hash_column": self.hash_columns.index(kind_name(spec.field, spec.phone_block_digits))
                if aggregate == DISTINCT and spec.field
                else -1,
                "number_column": self.number_columns.index(spec.field)
                if aggregate in (SUM, MIN, MAX) and spec.field
                else -1,
                "read_types": read_types,
                "lifetime": spec.window_ms + self.lateness_ms,
            }
            for name, value in row.items():
                columns[name].append(value)
        return FeatureArrays(*(np.array(columns[name], np.int64) for name in FeatureArrays._fields))

    def features_of(self, kind: int) -> list[int]:
        return [f for f in range(len(self.specs)) if self.arrays.kind[f] == kind]


def _predicate(p: Any) -> Predicate:
    return Predicate(p.field, p.op, json.dumps(p.value))


def _unique_predicates(specs: list[FeatureSpec]) -> list[Predicate]:
    return _unique(_predicate(p) for s in specs for p in s.where)


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))
