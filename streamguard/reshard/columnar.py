"""The columnar engine's state re-sharded: its changelog replayed into one batch core, written out per new shard.

A columnar changelog record holds whole entities (and event ids, and device
-> fingerprint links), each under its keyed hash, and a key's shard is a
function of the hash and the shard count (`pack.shard_of_keys`). So the
state the old changelog replays to is the state at any count; only which
records carry it changes. `Regroup` replays every old shard into a core that
holds them all, then writes each new shard as a snapshot: the first record
a new owner reads replaces whatever it had, like any snapshot.

Events parked for other shards' answers are refused: their answer bits are
about the old shards, and an app at rest (every shards-topic record
consumed) has none. Nothing here knows Kafka.
"""

from __future__ import annotations

from collections import defaultdict

from streamguard.columnar import changes
from streamguard.columnar.core import BatchCore
from streamguard.errors import AppBusy


class Regroup:
    """Feed it every changelog record in each partition's order (`add`), then take each new shard's `records`."""

    def __init__(self, core: BatchCore) -> None:
        self._core = core  # holding every old shard (a new core does)
        self._by_shard: dict[int, list[changes.ShardRecord]] = defaultdict(list)
        self.records_read = 0

    def add(self, record: bytes) -> None:
        """One changelog record; `changes.LayoutMismatch` for one of another layout or hash key."""
        decoded = self._core.decode(record)
        held = self._by_shard[decoded.shard]
        if decoded.snapshot:  # it replaces what came before: no need to hold that
            held.clear()
        held.append(decoded)
        self.records_read += 1

    @property
    def entities(self) -> int:
        """The entities of the records added, once `records` has replayed them."""
        return sum(self._core.state.entity_counts().values())

    def records(self, to_shards: int) -> dict[int, list[bytes]]:
        """Each new shard's state, as the records of a snapshot (an empty shard gets one that says so)."""
        for held in self._by_shard.values():
            self._core.restore(held)
        self._by_shard.clear()
        if len(self._core.pending):
            raise AppBusy(
                f"{len(self._core.pending)} events wait for other shards' answers in the changelog: start the "
                "workers until they are idle, then stop them with SIGTERM; nothing was changed"
            )
        core = self._core
        written = changes.snapshots(core.state, core.fingerprint, to_shards, list(range(to_shards)))
        return {shard: [changes.encode(record) for record in held] for shard, held in written.items()}
