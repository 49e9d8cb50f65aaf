"""The worker's transactions: what the engine processed is handed over, committed on a thread of its own, or aborted.

One transaction of the worker's transactional producer carries the verdicts,
dead letters, shard records, state changelog records and consumed offsets of
what was processed: they become visible together or not at all (KIP-447:
`send_offsets_to_transaction` with the consumer's group metadata fences a
worker that lost its partitions). Local RocksDB state is written only after
the commit, at the changelog offsets its changes landed at.

A transaction spends most of its time waiting for the broker (records
acknowledged, offsets, commit markers on every partition it wrote). So it is
committed on a thread of its own, while the engine thread goes on polling and
processing what arrives, on top of the committing state
(`PartitionStore.committing`). Everything processed meanwhile becomes the next
transaction, handed over the moment the previous one has committed: an event
waits for at most the rest of one commit before its own. If a transaction
aborts, what was processed after it is thrown away too, and all of it is read
again.

Polling, processing, rebalances and the state itself stay in the engine; it
hears back through two callbacks: a transaction committed, or what it and the
work after it did must be forgotten and read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamguard.pipeline.delivery import send
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.pipeline.stats import EngineStats
from streamguard.state.store import Changes, PartitionStore
from streamguard.topics.names import TopicNames

log = logging.getLogger(__name__)

Changeset = dict[int, Changes]  # shard -> its state changes in this transaction

TXN_TIMEOUT_S = 30.0


@dataclass
class Processed:
    """Batches processed but not yet handed to a transaction: their state changes are pending in the stores."""

    records: list[Incoming] = field(default_factory=list)
    since_ts: int = 0  # how far in event time the worker had read before the first of them
    outs: list[Outgoing] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # the shards whose state they changed
    duplicates: int = 0
    processing_errors: int = 0
    # A state that writes its changes as records of its own: per shard, the records, in order, and
    # the changelog offsets they landed at once committed.
    changelog: dict[int, list[bytes]] = field(default_factory=dict)
    snapshots: set[int] = field(default_factory=set)  # the shards whose records are a snapshot (from the first)
    changelog_offsets: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class InFlight:
    """Batches whose transaction the committer thread is running; its result: each shard's changelog offset."""

    processed: Processed
    offsets: list[TopicPartition]  # the consumed offsets it commits
    result: Future[dict[int, list[int]]]


class Transactions:
    """The transactional producer and its committer thread.

    The engine thread calls every method; the committer thread runs only the
    transaction itself (produce, offsets, commit, then the stores' writes),
    and sets `open_since`, which the service's watchdog reads. The engine adds
    what it processes to `pending`; `hand_over` makes that the next
    transaction once the one in flight has committed. `sealing` is called
    with what a transaction will hold just before it starts (what the engine
    adds once per transaction rather than per batch); `committed` with what
    it held once it has committed; `rolled_back` with the consumer and the
    records to forget and read again once one aborted.
    """

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        names: TopicNames,
        max_events: int,
        stores: Mapping[int, PartitionStore],
        stats: EngineStats,
        sealing: Callable[[Processed], None],
        committed: Callable[[Processed], None],
        rolled_back: Callable[[Consumer, list[Incoming]], None],
    ) -> None:
        self._config = dict(producer_config)
        self._names = names
        self._max_events = max_events
        self._stores = stores
        self._stats = stats
        self._sealing = sealing
        self._committed = committed
        self._rolled_back = rolled_back
        self._producer: Producer | None = None
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="streamguard-commit")
        self._in_flight: InFlight | None = None
        self._shard_offsets: dict[int, int] = {}  # owned shard -> the offset of its partition committed last
        self._shard_metadata: dict[int, str] = {}  # owned shard -> what its offset's commit says of its state
        self.pending = Processed()
        self.open_since: float | None = None  # time.monotonic(); None between transactions

    def start(self) -> None:
        """Create the producer: it aborts what a killed predecessor left open; waits for a broker that is away."""
        producer = self._producer = Producer(self._config)
        _retrying(lambda: producer.init_transactions(TXN_TIMEOUT_S))

    def close(self) -> None:
        """Stop the committer thread (once `settle` has waited for the transaction in flight)."""
        self._committer.shutdown()

    @property
    def waiting(self) -> bool:
        """Whether processed work waits for the commit in flight."""
        return self._in_flight is not None and bool(self.pending.records)

    def own_shard(self, shard: int, offset: int) -> None:
        """Commit an offset on `shard`'s partition of the shards topic in every transaction from now on.

        `offset` is where this worker took the shard up; each commit moves it to what it read.

        Every transaction commits an offset on each owned shard, even one it
        read nothing of: so while a transaction is open, the coordinator calls
        the offsets of all this worker's shards unstable, and a shard's next
        owner waits for that transaction to end before restoring its state
        (see `Engine._committed_offsets`). A worker frozen mid-transaction
        (SIGSTOP, a VM pause) may come back and commit it after its shards moved.
        """
        self._shard_offsets[shard] = offset

    def describe_shard(self, shard: int, metadata: str) -> None:
        """Commit `metadata` with `shard`'s offset from now on (the owner's next reads it with the offset)."""
        self._shard_metadata[shard] = metadata

    def disown_shard(self, shard: int) -> None:
        self._shard_offsets.pop(shard, None)
        self._shard_metadata.pop(shard, None)

    def hand_over(self, consumer: Consumer) -> None:
        """Start a transaction for what was processed, once the one in flight (if any) has committed.

        Processing goes on while a commit is in flight, up to `max_events`
        records; then it waits for the commit.
        """
        flight = self._in_flight
        if flight is not None:
            if not flight.result.done() and len(self.pending.records) < self._max_events:
                return
            if not self.settle(consumer):
                return  # it aborted, and took what was processed on its state with it
        if self.pending.records:
            self._submit(consumer)

    def drain(self, consumer: Consumer) -> None:
        """Commit everything processed (before partitions change hands, or at a stop)."""
        if self._producer is None:
            return  # not started: nothing was processed
        if self.settle(consumer) and self.pending.records:
            self._submit(consumer)
            self.settle(consumer)

    def settle(self, consumer: Consumer) -> bool:
        """Wait for the transaction in flight; False if it aborted (what was processed since is dropped too)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return True
        try:
            flight.processed.changelog_offsets = flight.result.result()
        except KafkaException as exc:
            later, self.pending = self.pending, Processed()
            self._abort(consumer, [*flight.processed.records, *later.records], exc)
            return False
        for tp in flight.offsets:
            if tp.topic == self._names.shard_topic and tp.partition in self._shard_offsets:
                self._shard_offsets[tp.partition] = tp.offset
        self._committed(flight.processed)
        self._stats.transactions += 1
        return True

    def _submit(self, consumer: Consumer) -> None:
        producer = self._started()
        processed, self.pending = self.pending, Processed()
        self._sealing(processed)
        changes = {shard: self._stores[shard].take_changes() for shard in processed.touched}
        changes = {shard: c for shard, c in changes.items() if c}
        offsets = self._offsets_to_commit(processed.records)
        group = consumer.consumer_group_metadata()
        producer.begin_transaction()  # local to the producer: no broker round trip
        result = self._committer.submit(self._commit_batch, producer, group, processed, offsets, changes)
        self._in_flight = InFlight(processed, offsets, result)

    def _offsets_to_commit(self, records: list[Incoming]) -> list[TopicPartition]:
        """The offsets after `records`, and the offset of every shards partition this worker owns (`own_shard`)."""
        shard_topic = self._names.shard_topic
        offsets = _next_offsets(records)
        read = {tp.partition for tp in offsets if tp.topic == shard_topic}
        offsets += [TopicPartition(shard_topic, p, o) for p, o in self._shard_offsets.items() if p not in read]
        described = self._shard_metadata
        return [
            TopicPartition(tp.topic, tp.partition, tp.offset, metadata=described[tp.partition])
            if tp.topic == shard_topic and tp.partition in described
            else tp
            for tp in offsets
        ]

    def _commit_batch(
        self,
        producer: Producer,
        group: object,
        processed: Processed,
        offsets: list[TopicPartition],
        changes: Changeset,
    ) -> dict[int, list[int]]:
        """On the committer thread: one transaction for the records, state changes and offsets of `processed`."""
        started = time.perf_counter()
        self.open_since = time.monotonic()
        try:
            changelog = send(producer, processed.outs, self._names.changelog, changes, processed.changelog)
            # The consumed offsets go to the group coordinator while the records are on their way.
            producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT_S)
            changelog_offsets = changelog.wait(producer, TXN_TIMEOUT_S)
            _commit(producer)
        finally:
            self.open_since = None
        for shard, shard_changes in changes.items():
            self._stores[shard].apply(shard_changes, changelog_offsets[shard][-1])
        self._stats.last_commit_ms = 1000 * (time.perf_counter() - started)
        return changelog_offsets

    def _abort(self, consumer: Consumer, records: list[Incoming], exc: KafkaException) -> None:
        """Abort the transaction; the engine forgets what `records` did and reads them (and what followed) again."""
        error: KafkaError = exc.args[0]
        if error.fatal():
            raise exc
        log.warning("transaction aborted, the batch will be processed again: %s", error)
        producer = self._started()
        _retrying(lambda: producer.abort_transaction(TXN_TIMEOUT_S))
        self._rolled_back(consumer, records)
        self._stats.aborted += 1

    def _started(self) -> Producer:
        assert self._producer is not None, "Transactions.start() comes first"
        return self._producer


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


def _next_offsets(batch: list[Incoming]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for record in batch:
        key = (record.topic, record.partition)
        last[key] = max(last.get(key, -1), record.offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
