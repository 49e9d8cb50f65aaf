"""The columnar engine: each batch through the batch core (`columnar.core`), its state changes as records.

The core's memory is the state of the shards this worker holds. Each
transaction carries, besides the verdicts:

- the work for shards other workers hold, one shards-topic record per shard
  (`BatchCore.encode`), and how far this worker has read (`PROGRESS_KEY`);
- what the batches changed, one changelog record (or a few) per shard
  changed (`BatchCore.take_changes`), or for one shard held a snapshot
  instead (`BatchCore.snapshots`): in turn, so that each is written whole
  every `SNAPSHOT_EVERY_S`, and a transaction never carries all of them.

Once a snapshot has committed, every later transaction commits its changelog
offset with the shard's offset on the shards topic, as the commit's metadata
(`snapshot=<offset>`): the shard's next owner reads it with the committed
offset it starts from, and restores from that snapshot on (`Restore`, the
same replay the item engine's stores use; the records read are applied
together, each entity loaded once from its newest copy). Without one it
replays the shard's whole changelog; records hold whole entities, and a
snapshot's first record replaces what came before, so that gives the same
state, only slower.

An aborted transaction leaves the core holding work that never committed:
the engine throws the core's state away and restores every shard it holds
from the changelog, as a new owner would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import orjson

from streamguard.columnar.changes import LayoutMismatch, ShardRecord
from streamguard.columnar.core import BatchCore
from streamguard.pipeline.engine import Engine
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.pipeline.restore import restore_shards
from streamguard.pipeline.transaction import Processed
from streamguard.settings import Settings
from streamguard.topics.names import TopicNames

log = logging.getLogger(__name__)

PROGRESS_KEY: Final = b"progress"  # the key of a shards-topic record that tells how far its sender has read
SNAPSHOT_EVERY_S: Final = 30.0  # how often each shard held is written whole to the changelog (one at a time)
SNAPSHOT_PREFIX: Final = "snapshot="


class ColumnarEngine(Engine):
    def __init__(
        self,
        settings: Settings,
        names: TopicNames,
        make_core: Callable[[], BatchCore],
        lifetimes: dict[str, int],
        worker_id: str,
    ) -> None:
        super().__init__(settings, names, worker_id, {})
        self._make_core = make_core
        self._lifetimes = lifetimes  # how long each kind of state lives: what the changelog must keep
        self._core = self._new_core()
        self._snapshot_due: set[int] = set()  # shards to write whole in the next transaction
        self._snapshot_taken: dict[int, float] = {}  # shard -> when it was last written whole (time.monotonic())
        self._snapshot_at: dict[int, int] = {}  # shard -> the changelog offset of its last snapshot committed
        self._last_snapshot = time.monotonic()  # when some shard was last written whole

    # --- a batch ------------------------------------------------------------------

    def _process(self, batch: list[Incoming], now_ms: int) -> None:
        shard_topic = self._names.shard_topic
        inputs, inbound = [], []
        for record in batch:
            if record.topic != shard_topic:
                inputs.append(record)
            elif record.key == PROGRESS_KEY and record.value is not None:
                self._heard_from(record.value)
            elif record.value is not None:
                inbound.append(record.value)
        output = self._core.process(inputs, now_ms, inbound)
        outs = output.outs
        for shard, box in output.remote.items():
            outs += [Outgoing(shard_topic, record, None, shard) for record in self._core.encode(box)]
        progress = self._tell_progress()
        if progress is not None:
            told = orjson.dumps([self._worker_id, progress])
            outs += [Outgoing(shard_topic, told, PROGRESS_KEY, shard) for shard in self._others()]
        self._add(batch, outs, set(), output.duplicates, output.processing_errors)

    def _seal(self, processed: Processed) -> None:
        """The state changes of the transaction's batches join it: as they are, or as a snapshot of a shard due one.

        Once per transaction, not per batch: what it costs per shard (a record
        each, the packing) is paid once however many polls the batches took.
        """
        self._snapshot_due |= self._next_in_turn()
        changed = self._core.take_changes()
        snapshots = self._core.snapshots(self._snapshot_due) if self._snapshot_due else {}
        now = time.monotonic()
        self._snapshot_taken.update(dict.fromkeys(snapshots, now))
        self._snapshot_due.clear()
        processed.changelog = {**changed, **snapshots}  # a snapshot holds the shard's changes too
        processed.snapshots = set(snapshots)
        self.stats.memory_state_bytes = self._core.state.nbytes

    def _next_in_turn(self) -> set[int]:
        """The shard held longest without a snapshot, when one is due: a shard every SNAPSHOT_EVERY_S / shards held.

        One at a time, a snapshot costs a transaction 1/N of the state's bytes
        (N shards held) instead of all of it at once, which stalled the
        engine for a second and held every shard's bytes twice in memory.
        """
        waiting = self._owned - self._snapshot_due  # those due already (just taken up) are written anyway
        if not waiting or time.monotonic() - self._last_snapshot < SNAPSHOT_EVERY_S / len(self._owned):
            return set()
        self._last_snapshot = time.monotonic()
        return {min(waiting, key=lambda shard: self._snapshot_taken.get(shard, 0.0))}

    def _count(self, processed: Processed) -> None:
        """A transaction committed: the snapshots it wrote are where the shards' next owners restore from."""
        super()._count(processed)
        for shard in processed.snapshots:
            if shard in self._owned:
                self._snapshot_is_at(shard, processed.changelog_offsets[shard][0])

    def _heard_from(self, value: bytes) -> None:
        try:
            worker, progress = orjson.loads(value)
            self._heard(str(worker), int(progress))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("a progress record on %s that is not one: %r", self._names.shard_topic, value[:100])

    def _others(self) -> list[int]:
        return [shard for shard in range(self._names.shards) if shard not in self._owned]

    # --- shards coming and going ----------------------------------------------------

    def _take_up_shards(self, shards: list[int]) -> None:
        self._core.own(self._owned)
        for shard in shards:
            snapshot = self._committed_snapshot(shard)
            if snapshot is not None:
                self._snapshot_at[shard] = snapshot
        self._restore(shards)

    def _give_up_shards(self, shards: list[int]) -> None:
        self._core.own(self._owned)
        self._snapshot_due -= set(shards)
        for shard in shards:
            self._snapshot_at.pop(shard, None)
            self._snapshot_taken.pop(shard, None)

    def _forget_uncommitted(self) -> None:
        self._core = self._new_core()
        self._restore(sorted(self._owned))

    def _new_core(self) -> BatchCore:
        core = self._make_core()
        core.own(self._owned)
        return core

    def _restore(self, shards: list[int]) -> None:
        """Replay each shard's changelog from its last snapshot committed (else its start); snapshot it soon."""
        targets = {shard: CoreShard(self._core, shard, self._snapshot_at.get(shard)) for shard in shards}
        started = time.monotonic()
        before = sum(self._core.state.entity_counts().values())
        restore_shards(self._settings, self._names.changelog, targets, self._lifetimes)
        for target in targets.values():
            target.apply()
        entities = sum(self._core.state.entity_counts().values()) - before
        seconds = time.monotonic() - started
        if shards:
            log.info("shards %s hold %d entities after their restore in %.2f s (%.0f entities/s)",
                     shards, entities, seconds, entities / seconds if seconds > 0 else 0.0)  # fmt: skip
        for shard in shards:
            snapshot = targets[shard].snapshot  # None if the replay found the log no longer reaches it
            if snapshot is not None:
                self._snapshot_is_at(shard, snapshot)
        self._snapshot_due |= set(shards)  # this worker's own snapshot, soon: where the next owner starts

    def _snapshot_is_at(self, shard: int, offset: int) -> None:
        self._snapshot_at[shard] = offset
        self._transactions.describe_shard(shard, f"{SNAPSHOT_PREFIX}{offset}")

    def _committed_snapshot(self, shard: int) -> int | None:
        """Where the shard's last snapshot is, as its previous owner committed with the shard's offset."""
        metadata = self._shard_metadata.get(shard, "")
        if not metadata.startswith(SNAPSHOT_PREFIX):
            return None
        try:
            return int(metadata.removeprefix(SNAPSHOT_PREFIX))
        except ValueError:
            log.warning("shard %d: its committed offset says %r, not where its snapshot is", shard, metadata)
            return None


class CoreShard:
    """A shard of the batch core as a restore target (`RestoreTarget`): its snapshot offset is its checkpoint.

    The records replayed are kept, decoded, and applied together (`apply`):
    each entity is then loaded once, from its newest copy, however many
    transactions since the snapshot changed it.
    """

    def __init__(self, core: BatchCore, shard: int, snapshot: int | None) -> None:
        self._core = core
        self._shard = shard
        self.snapshot = snapshot  # the changelog offset of its last snapshot committed
        self._records: list[ShardRecord] = []
        self._refused = 0

    @property
    def checkpoint(self) -> int | None:
        """The offset before the snapshot: the replay starts at the snapshot."""
        return None if self.snapshot is None else self.snapshot - 1

    def clear(self) -> None:
        self._core.forget(self._shard)
        self._records.clear()
        self.snapshot = None

    def replay(self, record: bytes | None, changelog_offset: int) -> int:
        if record is None:
            return 0
        try:
            decoded = self._core.decode(record)
            if decoded.snapshot:  # it replaces what came before: no need to hold that
                self._records.clear()
            self._records.append(decoded)
        except LayoutMismatch as exc:
            if not self._refused:
                log.warning("shard %d: changelog records of another layout are skipped (from offset %d): %s",
                            self._shard, changelog_offset, exc)  # fmt: skip
            self._refused += 1
        return 0

    def apply(self) -> None:
        """Put what was replayed into the core."""
        self._core.restore(self._records)
        self._records = []
