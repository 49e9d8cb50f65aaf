"""V6 and V7 for the columnar engine: each shard's changelog replayed into a batch core.

The columnar engine keeps no RocksDB store (its state is in memory, and its
changelog is the durable copy), so V6 has no store to compare with. What it
checks instead is that the changelog is one a worker can restore: every
committed record of every shard applies (from the first, as a restore
without a snapshot does), made under the layout of the workers'
settings. V7: once applied, no event is left waiting for other shards'
answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamguard.columnar.changes import LayoutMismatch
from streamguard.columnar.core import BatchCore
from streamguard.verify.records import Record
from streamguard.verify.report import Check

TITLE = "every changelog record restores into a batch core"


def replay(core: BatchCore, records: Iterable[Record]) -> tuple[Check, Check]:
    """V6 and V7 over `records`, every committed changelog record, in offset order per shard."""
    refused, applied, shards = [], 0, set()
    for record in records:
        if record.value is None:
            continue
        try:
            core.restore(record.value)
        except LayoutMismatch as exc:
            refused.append(f"shard {record.partition} offset {record.offset}: {exc}")
            continue
        applied += 1
        shards.add(record.partition)
    entities = sum(core.state.entity_counts().values())
    counts = {"records": applied, "shards": len(shards), "entities": entities}
    restores = Check.of("V6", TITLE, counts, {"records refused": refused})
    parked = [f"{key:016x}" for key in core.pending.keys().tolist()]
    return restores, Check.of("V7", "nothing left parked", {"shards": len(shards)}, {"parked events": parked})
