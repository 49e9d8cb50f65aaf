"""Which cluster a data directory's stores were built for, so that no store outlives its shard numbering.

A store `state/shard-N` holds the state of the event ids and entities whose
keyed hash fell on shard N, with the offset of changelog partition N it was
restored up to. Both mean something under one cluster identity only: after
`streamguard reshard`, shard N holds other entities and its changelog is a
new log, and a store kept from before would resume at its old offset in a log
it never read, mixing two numberings. So a data directory records the identity
its stores were built under (`state/CLUSTER`), and a worker that finds another
one wipes them, with a WARNING, before it takes any shard: each shard is then
rebuilt from the changelog.

A directory written before this record existed has stores and no record: its
stores are kept unless the cluster was re-sharded since (which old workers
cannot have seen: they refuse another shard count).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

RECORD: Final = "CLUSTER"


def adopt_state_dir(state_dir: Path, identity: bytes, resharded: bool) -> bool:
    """Make `state_dir` hold the stores of the cluster `identity` (its record); True if stores there were wiped."""
    record = state_dir / RECORD
    built_for = record.read_bytes() if record.exists() else None
    if built_for == identity:
        return False
    stores = sorted(state_dir.glob("shard-*"))
    stale = bool(stores) and (built_for is not None or resharded)
    if stale:
        log.warning(
            "%s: its %d stores were built for another cluster identity (%s), this cluster is %s (re-sharded or "
            "recreated): they are wiped, and each shard this worker is given is rebuilt from the changelog",
            state_dir, len(stores), (built_for or b"recorded before re-sharding").decode(errors="replace"),
            identity.decode(errors="replace"),
        )  # fmt: skip
        for store in stores:
            shutil.rmtree(store)
    state_dir.mkdir(parents=True, exist_ok=True)
    written = record.with_suffix(".new")
    written.write_bytes(identity)
    written.replace(record)  # atomic: a crash leaves the old record or the new one
    return stale
