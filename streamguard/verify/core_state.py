"""V6 and V7 for the columnar engine: each shard's changelog replayed into a batch core.

The columnar engine keeps no RocksDB store (its state is in memory, and its
changelog is the durable copy), so V6 has no store to compare with. What it
checks instead is that the changelog is one a worker can restore: every
committed record of every shard decodes, was made under the layout of the
workers' settings and in its own shard's partition, and each shard's records
restore (from its last snapshot, as a worker's restore does: the records
before it are replaced by it). V7: once restored, no event is left waiting
for other shards' answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from streamguard.columnar.changes import LayoutMismatch, ShardRecord
from streamguard.columnar.core import BatchCore
from streamguard.verify.records import Record
from streamguard.verify.report import Check

TITLE = "every changelog record restores into a batch core"


def replay(core: BatchCore, records: Iterable[Record]) -> tuple[Check, Check]:
    """V6 and V7 over `records`, every committed changelog record, in offset order per shard."""
    refused, applied, by_shard = [], 0, defaultdict[int, list[ShardRecord]](list)
    for record in records:
        if record.value is None:
            continue
        try:
            decoded = core.decode(record.value)
        except LayoutMismatch as exc:
            refused.append(f"shard {record.partition} offset {record.offset}: {exc}")
            continue
        if decoded.shard != record.partition:
            refused.append(f"shard {record.partition} offset {record.offset}: a record of shard {decoded.shard}")
            continue
        held = by_shard[record.partition]
        if decoded.snapshot:  # what came before is decoded (its layout checked) and replaced
            held.clear()
        held.append(decoded)
        applied += 1
    for held in by_shard.values():
        core.restore(held)
    entities = sum(core.state.entity_counts().values())
    counts = {"records": applied, "shards": len(by_shard), "entities": entities}
    restores = Check.of("V6", TITLE, counts, {"records refused": refused})
    parked = [f"{key:016x}" for key in core.pending.keys().tolist()]
    return restores, Check.of("V7", "nothing left parked", {"shards": len(by_shard)}, {"parked events": parked})
