"""The item engine: a batch as work items, shard by shard, over a RocksDB store per shard.

Ingest turns each event into items for the shards of its entities; a shard
this worker holds handles its items in event-time order (and the items they
lead to, in waves), the others' go to their owners over the shards topic.
Each shard's store keeps its changes pending until the transaction that
carries them to the changelog has committed (`Transactions`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rocksdict import Cache

from streamguard.codec import MergeItem, ProgressItem, RecordItem, ShardItem, decode_shard
from streamguard.events import ErrorCode
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.engine import Engine
from streamguard.pipeline.ingest import Ingest, error_code
from streamguard.pipeline.records import Incoming
from streamguard.pipeline.restore import restore_shards, state_lifetimes
from streamguard.pipeline.shard import Result, ShardWork, target_shard
from streamguard.privacy import Pseudonymizer
from streamguard.settings import Settings
from streamguard.state.dedup import RecentIds
from streamguard.state.store import PartitionStore, StoreOptions
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector


class ItemEngine(Engine):
    def __init__(
        self,
        settings: Settings,
        names: TopicNames,
        pseudonymizer: Pseudonymizer,
        features: EntityFeatures,
        detector: Detector,
        worker_id: str,
    ) -> None:
        self._stores: dict[int, PartitionStore] = {}
        super().__init__(settings, names, worker_id, self._stores)
        self._state_dir = Path(settings.data_dir) / "state"
        self._cache = Cache(StoreOptions().block_cache_bytes)
        self._recent: dict[int, RecentIds] = {}
        self._ingest = Ingest(names, pseudonymizer)
        features_topic = settings.topic(settings.features_topic) if settings.features_topic else None
        self._work = ShardWork(
            names, features, detector, pseudonymizer, self._stores.__getitem__, self._recent.__getitem__, features_topic
        )

    def _process(self, batch: list[Incoming], now_ms: int) -> None:
        """Add everything the batch produces to the pending transaction; its state changes stay pending in the stores.

        Work for shards this worker owns is done in this same batch, and so
        is the work it leads to (with one worker, an event is decided in the
        batch that read it); work for other shards travels to their
        owners as one shards-topic record per shard, with how far in event time
        this worker has read its inputs (see `_peer_horizon`).
        """
        wave: list[tuple[int, ShardItem]] = []
        inputs: list[Incoming] = []
        for record in batch:
            if record.topic == self._names.shard_topic and record.value is not None:
                for item in decode_shard(record.value):
                    if isinstance(item, ProgressItem):
                        self._heard(item.sender, item.ts)
                    else:
                        wave.append((record.partition, item))
            else:
                inputs.append(record)
        outs, routed = self._ingest.process(inputs, now_ms)
        ingest_errors = sum(1 for dead in outs if error_code(dead) == ErrorCode.PROCESSING_ERROR)
        wave.extend((shard, item) for shard, items in routed.items() for item in items)
        remote: dict[int, list[RecordItem]] = defaultdict(list)
        touched: set[int] = set()
        result = Result()
        while wave:
            # In event-time order, so that in a batch holding minutes of history (a replay, a
            # backlog) each event still sees the events before it, as it would have live.
            wave.sort(key=_event_time)
            for shard, item in wave:
                if shard not in self._stores:
                    remote[shard].append(item)
                    continue
                touched.add(shard)
                self._work.handle(shard, item, now_ms, result)
            wave = [(target_shard(new, self._names.shards), new) for new in result.items]
            result.items.clear()
        outs += result.outs
        progress = self._tell_progress()
        if progress is not None:
            for shard in set(range(self._names.shards)) - self._owned:
                remote[shard].append(ProgressItem(self._worker_id, progress))
        outs += [out for shard, items in remote.items() for out in self._ingest.shard_records(shard, items)]
        self._work.flush()
        self._work.expire(touched)
        self._add(batch, outs, touched, result.duplicates, result.processing_errors + ingest_errors)

    def _take_up_shards(self, shards: list[int]) -> None:
        self._work.clear()  # a restore writes to the stores behind its back
        for shard in shards:
            self._stores[shard] = PartitionStore(
                self._state_dir / f"shard-{shard}", StoreOptions().to_options(self._cache)
            )
        self._restore(shards)
        for shard in shards:
            self._recent[shard] = self._recent_ids(self._stores[shard])

    def _give_up_shards(self, shards: list[int]) -> None:
        self._work.clear()  # its caches are keyed by store: a closed store's id may be reused
        self._close_stores(shards)

    def _forget_uncommitted(self) -> None:
        self._work.clear()
        for shard, store in self._stores.items():
            store.discard_uncommitted()
            self._recent[shard] = self._recent_ids(store)  # forget what the aborted batch taught it

    def _recent_ids(self, store: PartitionStore) -> RecentIds:
        return RecentIds(store, self._settings.dedup_retention_s * 1000)

    def _close_stores(self, shards: list[int]) -> None:
        for shard in shards:
            self._recent.pop(shard, None)
            store = self._stores.pop(shard, None)
            if store is not None:
                store.close()

    def _restore(self, shards: list[int]) -> None:
        """Replay each shard's changelog from its local checkpoint to the end (committed data only): see `restore`."""
        lifetimes = state_lifetimes(self._work.features, self._settings.dedup_retention_s * 1000)
        stores = {shard: self._stores[shard] for shard in shards}
        restore_shards(self._settings, self._names.changelog, stores, lifetimes)


def _event_time(work: tuple[int, ShardItem]) -> int:
    item = work[1]
    return 0 if isinstance(item, MergeItem) else item.event.ts
