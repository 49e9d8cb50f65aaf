"""A batch of decoded events as the columns the kernels read.

Python touches each event once per column it has: its time and type, one bit
per filter (`where`) it passes, the numbers sums and extremes read, and the
text of each identifier, which `ColumnHashes` turns into keyed hashes in one
numba call per column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import numpy as np

from streamguard.columnar.hashing import ColumnHashes
from streamguard.columnar.layout import TYPE_CODE, Layout
from streamguard.events import EVENT_CLASSES, AnyEvent
from streamguard.features.compiled import PREDICATE_OPS

EVENT_ID_COLUMN: Final = "event_id"
CODE_OF_CLASS: Final = {cls: TYPE_CODE[kind] for kind, cls in EVENT_CLASSES.items()}


@dataclass
class Columns:
    ts: np.ndarray  # int64
    etype: np.ndarray  # int64: TYPE_CODE
    flags: np.ndarray  # int64: bit per layout predicate that holds
    numbers: np.ndarray  # float64[events, layout.number_columns]: NaN where absent
    hashes: np.ndarray  # uint64[events, layout.hash_columns + event id]: ABSENT where absent


def _fields(kind_class: type) -> frozenset[str]:
    info: Any = msgspec.inspect.type_info(kind_class)
    return frozenset(f.name for f in info.fields)


FIELDS: Final = {cls: _fields(cls) for cls in EVENT_CLASSES.values()}


def columns_of(events: list[AnyEvent], layout: Layout, hashes: ColumnHashes) -> Columns:
    n = len(events)
    ts = np.fromiter((e.ts for e in events), np.int64, n)
    etype = np.fromiter((CODE_OF_CLASS[type(e)] for e in events), np.int64, n)
    flags = np.zeros(n, np.int64)
    by_type = {code: np.flatnonzero(etype == code) for code in range(len(CODE_OF_CLASS))}
    for bit, predicate in enumerate(layout.predicates):
        test, value = PREDICATE_OPS[predicate.op], msgspec.json.decode(predicate.value)
        field = predicate.field
        for cls, code in CODE_OF_CLASS.items():
            rows = by_type[code]
            if field not in FIELDS[cls] or not rows.size:
                continue
            held = [(v := getattr(events[i], field)) is not None and test(v, value) for i in rows.tolist()]
            flags[rows[np.fromiter(held, np.bool_, rows.size)]] |= 1 << bit
    numbers = np.full((n, len(layout.number_columns)), np.nan)
    for c, field in enumerate(layout.number_columns):
        numbers[:, c] = [float(v) if (v := getattr(e, field, None)) is not None else np.nan for e in events]
    table = np.empty((n, len(layout.hash_columns) + 1), np.uint64)
    sources: dict[str, list[Any]] = {}
    for c, kind in enumerate(layout.column_kinds):
        table[:, c] = hashes.column(kind.name, kind.values(events, sources))
    table[:, -1] = hashes.column(EVENT_ID_COLUMN, [e.event_id for e in events])
    return Columns(ts, etype, flags, numbers, table)
