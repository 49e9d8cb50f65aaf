"""The engine: consume a batch, process it, produce the results, commit, in one Kafka transaction.

Every batch (input events and shards-topic records together) is one transaction
of the worker's transactional producer: its verdicts, dead letters, shard records,
state changelog records and consumed offsets become visible together or not
at all (KIP-447: `send_offsets_to_transaction` with the consumer's group
metadata fences a worker that lost its partitions). Local RocksDB state is
written only after the commit. This is what gives exactly one verdict per
event through SIGKILL, restarts and rebalances.

A transaction spends most of its time waiting for the broker (records
acknowledged, offsets, commit markers on every partition it wrote). So it is
committed on a thread of its own, while the engine thread goes on polling and
processing what arrives, on top of the committing state
(`PartitionStore.committing`). Everything processed meanwhile becomes the next
transaction, handed over the moment the previous one has committed: an event
waits for at most the rest of one commit before its own. If a transaction
aborts, what was processed after it is thrown away too, and all of it is read
again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from rocksdict import Cache

from streamguard.codec import MAX_RECORD_BYTES, MergeItem, ProgressItem, RecordItem, ShardItem, decode_shard
from streamguard.events import ErrorCode
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.align import Aligner
from streamguard.pipeline.ingest import Ingest, error_code
from streamguard.pipeline.records import Headers, Incoming, Outgoing, first_offsets
from streamguard.pipeline.restore import restore_shards, state_lifetimes
from streamguard.pipeline.shard import Result, ShardWork, target_shard
from streamguard.privacy import Pseudonymizer
from streamguard.settings import Settings
from streamguard.state.dedup import RecentIds
from streamguard.state.store import Changes, PartitionStore, StoreOptions, encode_changes
from streamguard.topics.names import TopicNames
from streamguard.verdicts import Detector

log = logging.getLogger(__name__)

Changeset = dict[int, Changes]  # shard -> its state changes in this transaction

TXN_TIMEOUT_S = 30.0
ALIGN_IDLE_MS = 1000.0  # how long a lagging input partition may hold the event-time merge back
BURST_HOLD_MS = 250.0  # how long at most the merge waits for every partition's first fetch after a quiet spell
READ_AHEAD = 2000  # records librdkafka fetches ahead per partition
IN_FLIGHT = 20  # records of a partition on their way in live traffic: a lag this small holds nothing back
PEER_SILENCE_S = 2.0  # a peer not heard from for this long does not hold this worker back
PROGRESS_EVERY_S = 0.5  # an unchanged progress is told again after this long (while it holds peers back)
CAUGHT_UP = 2**62  # the progress of a worker with nothing left to read: it holds no one back
STABLE_OFFSETS_TIMEOUT_S = 120.0  # well past the transaction timeout plus the broker's abort sweep (10 s each)
GC_THRESHOLDS = (50_000, 20, 100)  # allocations before a young collection; young ones per older one
IDLE_POLL_S = 0.1  # how long a poll waits for records when there is nothing else to do
BUSY_POLL_S = 0.001  # ... when the merge holds records, or processed work waits for the commit in flight


@dataclass
class EngineStats:
    """Counters a worker exposes; they hold no identifiers."""

    events_in: int = 0
    deadletters: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # event type -> verdicts published
    transactions: int = 0
    aborted: int = 0
    shards: list[int] = field(default_factory=list)
    last_commit_ms: float = 0.0
    pauses: int = 0  # input partitions paused for holding over `partition_buffer` records
    processing_errors: int = 0  # records and work items whose processing raised (their events were dead-lettered)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "deadletters": dict(self.deadletters),
            "duplicates": self.duplicates,
            "verdicts": dict(self.verdicts),
            "transactions": self.transactions,
            "aborted_transactions": self.aborted,
            "shards": sorted(self.shards),
            "last_commit_ms": round(self.last_commit_ms, 2),
            "pauses": self.pauses,
            "processing_errors": self.processing_errors,
        }


@dataclass
class Processed:
    """Batches processed but not yet handed to a transaction: their state changes are pending in the stores."""

    records: list[Incoming] = field(default_factory=list)
    since_ts: int = 0  # how far in event time the worker had read before the first of them
    outs: list[Outgoing] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # the shards whose state they changed
    duplicates: int = 0
    processing_errors: int = 0


@dataclass
class InFlight:
    """Batches whose transaction the committer thread is running; its result: each shard's changelog offset."""

    processed: Processed
    offsets: list[TopicPartition]  # the consumed offsets it commits
    result: Future[dict[int, int]]


def kafka_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap, "client.id": f"{settings.app_id}-engine"}


class Engine:
    """Runs the stages over Kafka on one thread; `run` returns when `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        names: TopicNames,
        pseudonymizer: Pseudonymizer,
        features: EntityFeatures,
        detector: Detector,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._names = names
        self._worker_id = worker_id
        self._state_dir = Path(settings.data_dir) / "state"
        self._cache = Cache(StoreOptions().block_cache_bytes)
        self._stores: dict[int, PartitionStore] = {}
        self._recent: dict[int, RecentIds] = {}
        self._ingest = Ingest(names, pseudonymizer)
        self._aligner = Aligner(
            set(names.inputs.values()), self._lagging, ALIGN_IDLE_MS, BURST_HOLD_MS, end_known=self._end_known
        )
        self._consumer: Consumer | None = None
        self._start_offsets: dict[tuple[str, int], int] = {}  # where each input partition was taken up
        self._paused: set[tuple[str, int]] = set()
        self._shard_offsets: dict[int, int] = {}  # owned shard -> the offset of its partition committed last
        self._peers: dict[str, tuple[int, float]] = {}  # worker -> (event time it has read to, when heard)
        self._told: tuple[int, float] = (-1, 0.0)  # the progress this worker last told its peers, and when
        features_topic = settings.topic(settings.features_topic) if settings.features_topic else None
        self._work = ShardWork(
            names, features, detector, pseudonymizer, self._stores.__getitem__, self._recent.__getitem__, features_topic
        )
        self._producer: Producer | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="streamguard-commit")
        self._in_flight: InFlight | None = None
        self._processed = Processed()
        self.stats = EngineStats()
        self.ready = threading.Event()
        self.transaction_started: float | None = None  # time.monotonic(); None between transactions

    # --- the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        # A batch makes and drops hundreds of thousands of small objects: with the default
        # thresholds the cyclic collector ran every 700 allocations and took a fifth of the time,
        # freeing nothing. Events, items and windows are not tracked at all (msgspec gc=False);
        # startup's objects are frozen out of it.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        producer = self._producer = Producer(self._producer_config())
        # Aborts what a killed predecessor left open; waits for a broker that is away.
        _retrying(lambda: producer.init_transactions(TXN_TIMEOUT_S))
        consumer = self._consumer = Consumer(self._consumer_config())
        consumer.subscribe(
            [*self._names.inputs.values(), self._names.shard_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info("engine started as %s", self._worker_id)
        held_back = False  # the merge kept its records last time (a lagging partition, a slower peer)
        try:
            while not stop.is_set():
                # With work at hand, poll briefly: in a backlog the merge holds up to 50,000 records
                # a partition while the consumer has none to give, and a 100 ms wait per batch was a
                # third of the engine's time. A merge that is holding back waits for news instead.
                waiting = self._in_flight is not None and bool(self._processed.records)
                busy = waiting or (len(self._aligner) > 0 and not held_back)
                self._aligner.add(self._poll(consumer, BUSY_POLL_S if busy else IDLE_POLL_S))
                self._pause_full(consumer)
                batch = self._release()
                held_back = not batch and len(self._processed.records) < self._settings.batch_max_events
                if batch:
                    self._process(batch, int(time.time() * 1000))
                self._hand_over(consumer, producer)
            self._drain(consumer, producer)  # a stop commits what was processed
        finally:
            try:
                # After an error, only the transaction in flight: the stores may hold part of a batch.
                self._settle(consumer, producer)
            finally:
                self._committer.shutdown()
                consumer.close()
                self._close_stores(list(self._stores))
                log.info("engine stopped")

    def _release(self) -> list[Incoming]:
        """The next batch: what is processed ahead of a transaction stays within one transaction's limits."""
        processed, span = self._processed, self._settings.batch_max_span_ms
        room = self._settings.batch_max_events - len(processed.records)
        if room <= 0:
            return []
        horizon = self._peer_horizon(span)
        if processed.records:  # one transaction covers at most the span past what was read before it
            horizon = min(horizon or CAUGHT_UP, processed.since_ts + span)
        else:
            processed.since_ts = self._aligner.released_ts
        return self._aligner.release(room, span, horizon)

    def _poll(self, consumer: Consumer, timeout_s: float) -> list[Incoming]:
        first = consumer.poll(timeout_s)
        self.ready.set()
        if first is None:
            return []
        rest = consumer.consume(self._settings.batch_max_events - 1, 0)
        batch = []
        for msg in [first, *rest]:
            err = msg.error()
            if err is None:
                batch.append(_incoming(msg))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        return batch

    def _hand_over(self, consumer: Consumer, producer: Producer) -> None:
        """Start a transaction for what was processed, once the one in flight (if any) has committed.

        Processing goes on while a commit is in flight, up to `batch_max_events`
        records; then it waits for the commit.
        """
        processed = self._processed
        flight = self._in_flight
        if flight is not None:
            if not flight.result.done() and len(processed.records) < self._settings.batch_max_events:
                return
            if not self._settle(consumer, producer):
                return  # it aborted, and took what was processed on its state with it
        if processed.records:
            self._submit(consumer, producer)

    def _submit(self, consumer: Consumer, producer: Producer) -> None:
        processed, self._processed = self._processed, Processed()
        changes = {shard: self._stores[shard].take_changes() for shard in processed.touched}
        changes = {shard: c for shard, c in changes.items() if c}
        offsets = self._offsets_to_commit(processed.records)
        group = consumer.consumer_group_metadata()
        producer.begin_transaction()  # local to the producer: no broker round trip
        result = self._committer.submit(self._commit_batch, producer, group, processed, offsets, changes)
        self._in_flight = InFlight(processed, offsets, result)

    def _offsets_to_commit(self, records: list[Incoming]) -> list[TopicPartition]:
        """The offsets after `records`, and the offset of every shards partition this worker owns.

        Every transaction commits an offset on each owned shard, even one it
        read nothing of: so while a transaction is open, the coordinator calls
        the offsets of all this worker's shards unstable, and a shard's next
        owner waits for that transaction to end before restoring its state
        (see `_committed_offsets`). A worker frozen mid-transaction (SIGSTOP, a
        VM pause) may come back and commit it after its shards moved.
        """
        shard_topic = self._names.shard_topic
        offsets = _next_offsets(records)
        read = {tp.partition for tp in offsets if tp.topic == shard_topic}
        offsets += [TopicPartition(shard_topic, p, o) for p, o in self._shard_offsets.items() if p not in read]
        return offsets

    def _settle(self, consumer: Consumer, producer: Producer) -> bool:
        """Wait for the transaction in flight; False if it aborted (what was processed since is dropped too)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return True
        try:
            flight.result.result()
        except KafkaException as exc:
            later, self._processed = self._processed, Processed()
            self._abort(consumer, producer, [*flight.processed.records, *later.records], exc)
            return False
        for tp in flight.offsets:
            if tp.topic == self._names.shard_topic and tp.partition in self._shard_offsets:
                self._shard_offsets[tp.partition] = tp.offset
        self._count(flight.processed)
        self.stats.transactions += 1
        return True

    def _drain(self, consumer: Consumer, producer: Producer) -> None:
        """Commit everything processed (before partitions change hands, or at a stop)."""
        if self._settle(consumer, producer) and self._processed.records:
            self._submit(consumer, producer)
            self._settle(consumer, producer)

    def _commit_batch(
        self,
        producer: Producer,
        group: object,
        processed: Processed,
        offsets: list[TopicPartition],
        changes: Changeset,
    ) -> dict[int, int]:
        """On the committer thread: one transaction for the records, state changes and offsets of `processed`."""
        started = time.perf_counter()
        self.transaction_started = time.monotonic()
        try:
            changelog = self._send(producer, processed.outs, changes)
            # The consumed offsets go to the group coordinator while the records are on their way.
            producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT_S)
            changelog_offsets = changelog.wait(producer)
            _commit(producer)
        finally:
            self.transaction_started = None
        for shard, offset in changelog_offsets.items():
            self._stores[shard].apply(changes[shard], offset)
        self.stats.last_commit_ms = 1000 * (time.perf_counter() - started)
        return changelog_offsets

    def _process(self, batch: list[Incoming], now_ms: int) -> None:
        """Add to `_processed` everything the batch produces; its state changes are left pending in the stores.

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
                        self._peers[item.sender] = (item.ts, time.monotonic())
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
        self._tell_progress(remote)
        outs += [out for shard, items in remote.items() for out in self._ingest.shard_records(shard, items)]
        self._work.flush()
        self._work.expire(touched)
        processed = self._processed
        processed.records += batch
        processed.outs += outs
        processed.touched |= touched
        processed.duplicates += result.duplicates
        processed.processing_errors += result.processing_errors + ingest_errors

    def _send(self, producer: Producer, outs: list[Outgoing], changes: Changeset) -> ChangelogDeliveries:
        """Produce everything; what to wait on for the changelog offset each shard's changes land at."""
        for out in outs:
            _produce(producer, out.topic, out.value, out.key, out.partition, out.headers, _log_undelivered)
        changelog = ChangelogDeliveries()
        for shard, shard_changes in changes.items():
            for record in encode_changes(shard_changes, MAX_RECORD_BYTES):
                _produce(producer, self._names.changelog, record, None, shard, None, changelog.expect(shard))
        return changelog

    def _abort(self, consumer: Consumer, producer: Producer, records: list[Incoming], exc: KafkaException) -> None:
        """Abort the transaction, forget what `records` did, and read them (and what followed) again."""
        error: KafkaError = exc.args[0]
        if error.fatal():
            raise exc
        log.warning("transaction aborted, the batch will be processed again: %s", error)
        _retrying(lambda: producer.abort_transaction(TXN_TIMEOUT_S))
        self._work.clear()
        for shard, store in self._stores.items():
            store.discard_uncommitted()
            self._recent[shard] = self._recent_ids(store)  # forget what the aborted batch taught it
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        # What was polled after the batches (and not released) is read again too.
        for (topic, partition), offset in first_offsets([*records, *self._aligner.unreleased()]).items():
            if (topic, partition) in assigned:
                try:
                    consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as seek_error:  # being revoked: its next owner starts from the commit
                    log.warning("not read again here: %s [%d]: %s", topic, partition, seek_error)
        self.stats.aborted += 1

    def _count(self, processed: Processed) -> None:
        self.stats.events_in += sum(1 for record in processed.records if record.topic != self._names.shard_topic)
        self.stats.duplicates += processed.duplicates
        self.stats.processing_errors += processed.processing_errors
        verdict_type = {topic: kind for kind, topic in self._names.verdicts.items()}
        for out in processed.outs:
            if out.topic == self._names.deadletter:
                self.stats.deadletters[error_code(out)] += 1
            elif out.topic in verdict_type:
                self.stats.verdicts[verdict_type[out.topic]] += 1

    # --- partitions and their state -------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain_before_rebalance(consumer)
        self._aligner.assign([(tp.topic, tp.partition) for tp in partitions])
        self._work.clear()  # a restore writes to the stores behind its back
        self._take_up(consumer, partitions)
        shards = [tp.partition for tp in partitions if tp.topic == self._names.shard_topic]
        for shard in shards:
            self._stores[shard] = PartitionStore(
                self._state_dir / f"shard-{shard}", StoreOptions().to_options(self._cache)
            )
        self._restore(shards)
        for shard in shards:
            self._recent[shard] = self._recent_ids(self._stores[shard])
        self.stats.shards = sorted(self._stores)
        log.info("assigned %d partitions, shards %s", len(partitions), shards)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain_before_rebalance(consumer)
        self._aligner.revoke([(tp.topic, tp.partition) for tp in partitions])
        self._work.clear()  # its caches are keyed by store: a closed store's id may be reused
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        # librdkafka keeps an application's pause across a rebalance: a partition that came back
        # here paused, with its pause forgotten, would never be read again.
        if revoked & self._paused:
            consumer.resume([TopicPartition(t, p) for t, p in revoked & self._paused])
        self._paused -= revoked
        for tp in partitions:
            if tp.topic == self._names.shard_topic:
                self._shard_offsets.pop(tp.partition, None)
        self._close_stores([tp.partition for tp in partitions if tp.topic == self._names.shard_topic])
        self.stats.shards = sorted(self._stores)

    def _drain_before_rebalance(self, consumer: Consumer) -> None:
        """What was processed is committed (or aborted) before partitions and their stores change hands."""
        if self._producer is not None:
            self._drain(consumer, self._producer)

    def _tell_progress(self, remote: dict[int, list[RecordItem]]) -> None:
        """Tell every other shard's owner how far in event time this worker has read (`Aligner.read_to`).

        Only when it changed, or a while after the last time while it holds
        peers back (they stop waiting for a worker they have not heard from,
        which is what being caught up asks of them anyway): a worker that
        answered every record of a peer's progress with its own kept two idle
        workers committing dozens of transactions a second.
        """
        progress = CAUGHT_UP if self._aligner.caught_up() else self._aligner.read_to()
        now = time.monotonic()
        unchanged = progress == self._told[0]
        if not progress or (unchanged and (progress == CAUGHT_UP or now - self._told[1] < PROGRESS_EVERY_S)):
            return
        self._told = (progress, now)
        for shard in set(range(self._names.shards)) - set(self._stores):
            remote[shard].append(ProgressItem(self._worker_id, progress))

    def _peer_horizon(self, span_ms: int) -> int | None:
        """How far this worker may read: the slowest peer heard from lately, plus `span_ms` (None: no peer)."""
        now = time.monotonic()
        heard = [ts for ts, seen in self._peers.values() if now - seen < PEER_SILENCE_S]
        return min(heard) + span_ms if heard else None

    def _pause_full(self, consumer: Consumer) -> None:
        """Pause the input partitions the aligner holds much of; resume the rest."""
        full = set(self._aligner.full(self._settings.partition_buffer))
        if full == self._paused:
            return
        if self._paused - full:
            consumer.resume([TopicPartition(t, p) for t, p in self._paused - full])
        if full - self._paused:
            self.stats.pauses += len(full - self._paused)
            consumer.pause([TopicPartition(t, p) for t, p in full - self._paused])
        self._paused = full

    def _take_up(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Note where reading each assigned partition starts (committed, else earliest) once that is stable.

        The input partitions' start tells their lag before any read; the shards'
        are committed again by every transaction (`_offsets_to_commit`).
        """
        for tp in self._committed_offsets(consumer, partitions):
            start = tp.offset if tp.offset >= 0 else _log_start(consumer, tp)
            if tp.topic == self._names.shard_topic:
                self._shard_offsets[tp.partition] = start
            else:
                self._start_offsets[(tp.topic, tp.partition)] = start

    def _committed_offsets(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets of `partitions`, once no transaction that commits any of them is open.

        Under read_committed, librdkafka asks for stable offsets: while another
        worker's transaction holds offsets of these partitions (it owned them,
        and may still commit), the coordinator answers UNSTABLE_OFFSET_COMMIT.
        That transaction also wrote the changelog of the shards that move here,
        so their state is restored only after it committed or aborted: at most
        the transaction timeout plus the coordinator's abort sweep.
        """
        deadline = time.monotonic() + STABLE_OFFSETS_TIMEOUT_S
        while True:
            try:
                answered = consumer.committed(partitions, timeout=10)
                unstable = [tp for tp in answered if tp.error is not None]
                if not unstable:
                    return list(answered)
                reason = unstable[0].error
            except KafkaException as exc:
                reason = exc.args[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"committed offsets not stable in {STABLE_OFFSETS_TIMEOUT_S:.0f} s: {reason}")
            log.info("waiting for a previous owner's transaction to end before taking partitions up: %s", reason)
            time.sleep(0.2)

    def _lagging(self, partition: tuple[str, int]) -> bool:
        """Whether the broker holds more records of `partition` than are normally in flight.

        Live traffic always has a few records on their way (fetched by
        librdkafka, or appended since its last fetch): waiting for those would
        hold every batch back by a fetch. A backlog (a replay, a restart) is
        far bigger.
        """
        if self._consumer is None:
            return False
        tp = TopicPartition(*partition)
        position = self._consumer.position([tp])[0].offset
        if position < 0:  # nothing read since it was assigned
            position = self._start_offsets.get(partition, -1)
        _, high = self._consumer.get_watermark_offsets(tp, cached=True)
        return bool(position >= 0 and high - position > IN_FLIGHT)

    def _end_known(self, partition: tuple[str, int]) -> bool:
        """Whether a fetch has told where `partition` ends: the consumer caches it from every fetch answer."""
        if self._consumer is None:
            return False
        _, high = self._consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
        return bool(high >= 0)

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
        restore_shards(
            kafka_config(self._settings), f"{self._settings.app_id}-restore", self._names.changelog, stores, lifetimes
        )

    # --- configuration ----------------------------------------------------------

    def _producer_config(self) -> dict[str, Any]:
        return {
            **kafka_config(self._settings),
            "transactional.id": f"{self._settings.app_id}-{self._worker_id}",
            "transaction.timeout.ms": 10_000,  # bounds how long a killed worker's open transaction blocks readers
            "linger.ms": 1,
            # A transaction begun right after a commit meets the coordinator still writing the
            # previous one's markers (CONCURRENT_TRANSACTIONS) and is retried after this backoff;
            # librdkafka's default, 100 ms, was the p99 latency of a paced run.
            "retry.backoff.ms": 2,
            "retry.backoff.max.ms": 100,
            "partitioner": "murmur2_random",  # the same key -> partition mapping as Java clients
            "message.max.bytes": 9_000_000,  # above the deadletter topic's max.message.bytes
        }

    def _consumer_config(self) -> dict[str, Any]:
        return {
            **kafka_config(self._settings),
            "group.id": self._settings.app_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": 10,
            # A small read-ahead per partition, so that every partition's next records are at hand
            # for the event-time merge instead of one partition's backlog filling the queue; and up
            # to 32 MiB ahead in all: the scale-5 flood ran at 3,700 events/s with 4 MiB, 4,370 with
            # 32 MiB and 4,390 with librdkafka's 64 MiB.
            "queued.min.messages": READ_AHEAD,
            "queued.max.messages.kbytes": 32 * 1024,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 300_000,
        }


def _commit(producer: Producer) -> None:
    """Commit, retrying what librdkafka says may be retried.

    A timed-out commit may have gone through, so it must not be taken for a
    failure and aborted: the batch would then be decided twice.
    """
    while True:
        try:
            producer.commit_transaction(TXN_TIMEOUT_S)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
            log.warning("commit not confirmed yet, retrying: %s", exc.args[0])


def _log_start(consumer: Consumer, tp: TopicPartition) -> int:
    """The first offset the broker holds of `tp`, asked again while the broker says a retry may help."""
    while True:
        try:
            low: int = consumer.get_watermark_offsets(tp, timeout=10)[0]
            return low
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
            log.warning("retrying after: %s", exc.args[0])
            time.sleep(0.2)


def _retrying(operation: Callable[[], None]) -> None:
    """Run `operation` until it succeeds or fails for good (a broker that is away comes back)."""
    while True:
        try:
            operation()
            return
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise
            log.warning("retrying after: %s", exc.args[0])
            time.sleep(1.0)


def _produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int,
    headers: Headers | None,
    on_delivery: Callable[..., None] | None = None,
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)  # the local queue is full: let deliveries drain


def _log_undelivered(err: KafkaError | None, msg: Message) -> None:
    """The delivery callback of every record: one the broker refused (too large...) aborts its transaction."""
    if err is not None:
        log.error("a record for %s [%s] was not delivered: %s (%s)", msg.topic(), msg.partition(), err.name(),
                  err.str())  # fmt: skip


class ChangelogDeliveries:
    """The changelog records of a transaction, and the offsets they were written at."""

    def __init__(self) -> None:
        self._offsets: dict[int, list[int]] = defaultdict(list)
        self._expected = 0

    def expect(self, shard: int) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of one more record of `shard`'s changes."""
        self._expected += 1

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            offset = msg.offset()
            if err is None and offset is not None:
                self._offsets[shard].append(offset)
            elif err is not None:
                _log_undelivered(err, msg)

        return on_delivery

    def wait(self, producer: Producer) -> dict[int, int]:
        """Wait for every record of the transaction; the last changelog offset of each shard.

        Waiting here, not in the commit, means a broker that went away shows as
        undelivered records (and an abort) instead of a commit that blocks.
        """
        if producer.flush(TXN_TIMEOUT_S) or sum(map(len, self._offsets.values())) != self._expected:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "records of the transaction were not delivered"))
        return {shard: max(offsets) for shard, offsets in self._offsets.items()}


def _incoming(msg: Message) -> Incoming:
    """A consumed record without an error, as the stages see it."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return Incoming(topic, partition, offset, msg.key(), msg.value())


def _event_time(work: tuple[int, ShardItem]) -> int:
    item = work[1]
    return 0 if isinstance(item, MergeItem) else item.event.ts


def _next_offsets(batch: list[Incoming]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for record in batch:
        key = (record.topic, record.partition)
        last[key] = max(last.get(key, -1), record.offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
