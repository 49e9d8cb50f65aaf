"""The engine: consume a batch, process it, produce the results, commit, in one Kafka transaction.

Every batch (input events and shards-topic records together) goes into a
transaction of the worker's transactional producer: its verdicts, dead letters,
shard records, state changelog records and consumed offsets become visible
together or not at all, and local RocksDB state is written only after the
commit. This is what gives exactly one verdict per event through SIGKILL,
restarts and rebalances. The engine polls, processes, follows rebalances and
keeps the state; `transaction.Transactions` hands what it processed over to
the next transaction, commits it on a thread of its own, and aborts.

`Engine` is the loop and what every engine shares (polling, the event-time
merge, rebalances, peers' progress, offsets); what a batch does to state is
its subclass's: `ItemEngine` (`item_engine`) works item by item over RocksDB
stores, `ColumnarEngine` (`columnar_engine`) runs the batch core.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamguard import kafka_config
from streamguard.pipeline.align import Aligner
from streamguard.pipeline.ingest import error_code
from streamguard.pipeline.records import Incoming, Outgoing, first_offsets
from streamguard.pipeline.stats import EngineStats
from streamguard.pipeline.transaction import Processed, Transactions
from streamguard.settings import Settings
from streamguard.state.store import PartitionStore
from streamguard.topics.names import TopicNames

log = logging.getLogger(__name__)

ALIGN_IDLE_MS = 1000.0  # how long a lagging input partition may hold the event-time merge back
BURST_HOLD_MS = 250.0  # how long at most the merge waits for every partition's first fetch after a quiet spell
IN_FLIGHT = 20  # records of a partition on their way in live traffic: a lag this small holds nothing back
PEER_SILENCE_S = 2.0  # a peer not heard from for this long does not hold this worker back
PROGRESS_EVERY_S = 0.5  # an unchanged progress is told again after this long (while it holds peers back)
CAUGHT_UP = 2**62  # the progress of a worker with nothing left to read: it holds no one back
STABLE_OFFSETS_TIMEOUT_S = 120.0  # well past the transaction timeout plus the broker's abort sweep (10 s each)
GC_THRESHOLDS = (50_000, 20, 100)  # allocations before a young collection; young ones per older one
IDLE_POLL_S = 0.1  # how long a poll waits for records when there is nothing else to do
BUSY_POLL_S = 0.001  # ... when the merge holds records, or processed work waits for the commit in flight


class Engine:
    """Runs the stages over Kafka on one thread; `run` returns when `stop` is set.

    A subclass keeps the shards' state: it processes a batch (`_process`),
    takes shards up and gives them up in a rebalance (`_take_up_shards`,
    `_give_up_shards`), forgets what an aborted transaction did
    (`_forget_uncommitted`), and tells the shards it does not hold how far
    it has read when `_tell_progress` says so. `stores` are the RocksDB stores the transactions
    take each batch's changes from and write them to once committed (none
    for a state that carries its changes as records of its own).
    """

    def __init__(
        self, settings: Settings, names: TopicNames, worker_id: str, stores: Mapping[int, PartitionStore]
    ) -> None:
        self._settings = settings
        self._names = names
        self._worker_id = worker_id
        self._aligner = Aligner(
            set(names.inputs.values()), self._lagging, ALIGN_IDLE_MS, BURST_HOLD_MS, end_known=self._end_known
        )
        self._consumer: Consumer | None = None
        self._start_offsets: dict[tuple[str, int], int] = {}  # where each input partition was taken up
        self._paused: set[tuple[str, int]] = set()
        self._owned: set[int] = set()  # the shards this worker holds
        self._shard_metadata: dict[int, str] = {}  # what the commit of each shard's offset said when taken up
        self._peers: dict[str, tuple[int, float]] = {}  # worker -> (event time it has read to, when heard)
        self._told: tuple[int, float] = (-1, 0.0)  # the progress this worker last told its peers, and when
        self.stats = EngineStats()
        self._transactions = Transactions(
            kafka_config.engine_producer(settings, worker_id),
            names,
            settings.batch_max_events,
            stores,
            self.stats,
            sealing=self._seal,
            committed=self._count,
            rolled_back=self._read_again,
        )
        self.ready = threading.Event()

    @property
    def transaction_started(self) -> float | None:
        """When the transaction now committing began (time.monotonic()); None between transactions."""
        return self._transactions.open_since

    # --- what a subclass does with the state ------------------------------------------

    def _process(self, batch: list[Incoming], now_ms: int) -> None:
        """Add what `batch` produces to `self._transactions.pending` (see `_add`)."""
        raise NotImplementedError

    def _seal(self, processed: Processed) -> None:
        """What `processed` needs added once, just before its transaction starts (by default nothing)."""

    def _take_up_shards(self, shards: list[int]) -> None:
        """Hold `shards` from now on: restore their state."""
        raise NotImplementedError

    def _give_up_shards(self, shards: list[int]) -> None:
        """Hold `shards` no more: what this worker processed of them is committed."""
        raise NotImplementedError

    def _forget_uncommitted(self) -> None:
        """An abort: the state goes back to what was committed."""
        raise NotImplementedError

    # --- the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        # A batch makes and drops hundreds of thousands of small objects: with the default
        # thresholds the cyclic collector ran every 700 allocations and took a fifth of the time,
        # freeing nothing. Events, items and windows are not tracked at all (msgspec gc=False);
        # startup's objects are frozen out of it.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        transactions = self._transactions
        transactions.start()
        consumer = self._consumer = Consumer(kafka_config.engine_consumer(self._settings))
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
                busy = transactions.waiting or (len(self._aligner) > 0 and not held_back)
                self._aligner.add(self._poll(consumer, BUSY_POLL_S if busy else IDLE_POLL_S))
                self._pause_full(consumer)
                batch = self._release()
                held_back = not batch and len(transactions.pending.records) < self._settings.batch_max_events
                if batch:
                    self._process(batch, int(time.time() * 1000))
                transactions.hand_over(consumer)
            transactions.drain(consumer)  # a stop commits what was processed
        finally:
            try:
                # After an error, only the transaction in flight: the stores may hold part of a batch.
                transactions.settle(consumer)
            finally:
                transactions.close()
                consumer.close()
                self._give_up_shards(sorted(self._owned))
                log.info("engine stopped")

    def _release(self) -> list[Incoming]:
        """The next batch: what is processed ahead of a transaction stays within one transaction's limits."""
        processed, span = self._transactions.pending, self._span_ms()
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

    def _add(
        self, batch: list[Incoming], outs: list[Outgoing], touched: set[int], duplicates: int, processing_errors: int
    ) -> None:
        """What `batch` produced joins what the next transaction commits (`touched`: the stores it changed)."""
        processed = self._transactions.pending
        processed.records += batch
        processed.outs += outs
        processed.touched |= touched
        processed.duplicates += duplicates
        processed.processing_errors += processing_errors

    def _read_again(self, consumer: Consumer, records: list[Incoming]) -> None:
        """After an abort: forget what `records` did, and read them (and what followed) again."""
        self._forget_uncommitted()
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        # What was polled after the batches (and not released) is read again too.
        for (topic, partition), offset in first_offsets([*records, *self._aligner.unreleased()]).items():
            if (topic, partition) in assigned:
                try:
                    consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as seek_error:  # being revoked: its next owner starts from the commit
                    log.warning("not read again here: %s [%d]: %s", topic, partition, seek_error)

    def _count(self, processed: Processed) -> None:
        """A transaction committed: count what it published."""
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
        self._take_up(consumer, partitions)
        shards = [tp.partition for tp in partitions if tp.topic == self._names.shard_topic]
        self._owned |= set(shards)
        self._take_up_shards(shards)
        self.stats.shards = sorted(self._owned)
        log.info("assigned %d partitions, shards %s", len(partitions), shards)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain_before_rebalance(consumer)
        self._aligner.revoke([(tp.topic, tp.partition) for tp in partitions])
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        # librdkafka keeps an application's pause across a rebalance: a partition that came back
        # here paused, with its pause forgotten, would never be read again.
        if revoked & self._paused:
            consumer.resume([TopicPartition(t, p) for t, p in revoked & self._paused])
        self._paused -= revoked
        shards = [tp.partition for tp in partitions if tp.topic == self._names.shard_topic]
        for shard in shards:
            self._transactions.disown_shard(shard)
        self._owned -= set(shards)
        self._give_up_shards(shards)
        self.stats.shards = sorted(self._owned)

    def _drain_before_rebalance(self, consumer: Consumer) -> None:
        """What was processed is committed (or aborted) before partitions and their stores change hands."""
        self._transactions.drain(consumer)

    def _tell_progress(self) -> int | None:
        """How far in event time this worker has read (`Aligner.read_to`), if it is time to tell the other shards.

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
            return None
        self._told = (progress, now)
        return progress

    def _heard(self, worker: str, progress: int) -> None:
        """A peer told how far it has read (`_tell_progress`)."""
        self._peers[worker] = (progress, time.monotonic())

    def _span_ms(self) -> int:
        """The most event time one transaction covers: `batch_max_span_ms`, unless this worker is alone.

        The span keeps a batch from running ahead of the work it sends other
        workers' shards, which they do a transaction later. A worker that holds
        every shard, with no peer heard from, sends none: its transactions are
        bounded by `batch_max_events` only (a replay of hours of history
        would otherwise pay a transaction per minute of event time).
        """
        alone = len(self._owned) == self._names.shards and self._peer_horizon(0) is None
        return CAUGHT_UP if alone else self._settings.batch_max_span_ms

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
        are committed again by every transaction (`Transactions.own_shard`).
        """
        for tp in self._committed_offsets(consumer, partitions):
            start = tp.offset if tp.offset >= 0 else _log_start(consumer, tp)
            if tp.topic == self._names.shard_topic:
                self._transactions.own_shard(tp.partition, start)
                self._shard_metadata[tp.partition] = tp.metadata or ""
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


def _incoming(msg: Message) -> Incoming:
    """A consumed record without an error, as the stages see it."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return Incoming(topic, partition, offset, msg.key(), msg.value())
