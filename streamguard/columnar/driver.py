"""Several workers in one process: the batch core over in-memory topics, with a clock the caller sets.

`Cluster` does what the Kafka engine does between workers, without Kafka:
each simulated worker reads its input partitions through the event-time
merge (`Aligner`), and the shards-topic records of the shards it holds;
its batch core decides what it can, and what it sends other shards goes to
their partitions of the in-memory shards topic, for their owners' next
batch. A worker reads no further in event time than the slowest worker
plus the batch span, as peers' progress bounds the engine. Input partitions
and shards are dealt out to the workers in turn, and stay there.

Every batch is a transaction: its outputs, its shards-topic records, its
state changes (one changelog record per shard it changed) and how far it
read become visible together. Every `snapshot_every` batches a worker also
writes a snapshot of each shard it holds. `crash` throws a worker's memory
away, optionally after one more batch whose transaction never commits; the
worker comes back from its shards' changelogs (their last snapshot, then
the changes after it) and reads again from what it had committed.

It is what unit tests use to check routing between workers, de-duplication
across partitions, event-time order and recovery in seconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from streamguard.columnar.core import BatchCore
from streamguard.pipeline.align import Aligner
from streamguard.pipeline.records import Incoming, Outgoing
from streamguard.topics.names import TopicNames

Partition = tuple[str, int]


@dataclass
class _Worker:
    core: BatchCore
    inputs: list[Partition]
    shards: list[int]
    aligner: Aligner
    read: dict[Partition, int] = field(default_factory=dict)  # the next offset it reads, per partition
    committed: dict[Partition, int] = field(default_factory=dict)  # where it reads again from after a crash
    batches: int = 0


class Cluster:
    def __init__(
        self,
        names: TopicNames,
        make_core: Callable[[], BatchCore],
        workers: int = 1,
        partitions: int = 3,
        batch_max_events: int = 5000,
        batch_max_span_ms: int = 60_000,
        snapshot_every: int = 20,
    ) -> None:
        self.names = names
        self.partitions = partitions
        self._make_core = make_core
        self._snapshot_every = snapshot_every
        self.now_ms = 0  # the clock: what the workers take as now
        self._batch = (batch_max_events, batch_max_span_ms)
        self._topics: dict[Partition, list[Incoming]] = {}  # the inputs
        self._shards: dict[int, list[bytes]] = {shard: [] for shard in range(names.shards)}
        self.changelog: dict[int, list[tuple[bool, bytes]]] = {shard: [] for shard in range(names.shards)}
        self.outputs: list[Outgoing] = []  # every verdict, dead letter and feature record, in order
        inputs = [(topic, p) for topic in names.inputs.values() for p in range(partitions)]
        self.workers = []
        for w in range(workers):
            mine = [shard for shard in range(names.shards) if shard % workers == w]
            self.workers.append(
                _Worker(self._core_for(mine), inputs[w::workers], mine, self._aligner(inputs[w::workers]))
            )

    def crash(self, w: int, in_flight: bool = False) -> bool:
        """Worker `w` loses its memory (after one more batch that never commits, if `in_flight`) and comes back.

        Whether a batch was lost in flight.
        """
        worker = self.workers[w]
        lost = in_flight and self._step(worker, commit=False)
        worker.core = self._core_for(worker.shards)
        worker.aligner = self._aligner(worker.inputs)
        worker.read = dict(worker.committed)
        return lost

    def _core_for(self, shards: list[int]) -> BatchCore:
        """A worker's core holding `shards`, restored from their changelogs: the last snapshot, then what follows."""
        core = self._make_core()
        core.own(shards)
        for shard in shards:
            log = self.changelog[shard]
            last = max((i for i, (is_snapshot, _) in enumerate(log) if is_snapshot), default=0)
            core.restore([core.decode(record) for _, record in log[last:]])
        return core

    def _aligner(self, inputs: list[Partition]) -> Aligner:
        aligner = Aligner(set(self.names.inputs.values()), lambda p: False, 0.0, 0.0, end_known=lambda p: True)
        aligner.assign(inputs)
        return aligner

    def produce(self, kind: str, value: bytes | None, key: bytes | None = None, partition: int | None = None) -> None:
        """Append an input record to `events.<kind>` (its partition: given, else by key, else the first)."""
        topic = self.names.inputs[kind]
        if partition is None:
            partition = zlib.crc32(key) % self.partitions if key else 0
        log = self._topics.setdefault((topic, partition), [])
        log.append(Incoming(topic, partition, len(log), key, value))

    def run(self) -> list[Outgoing]:
        """Let every worker work until none has anything left; what they published meanwhile."""
        start = len(self.outputs)
        while any([self._step(worker) for worker in self.workers]):
            pass
        return self.outputs[start:]

    def step(self, w: int) -> bool:
        """One batch of worker `w`'s; whether it had anything to do."""
        return self._step(self.workers[w])

    def pending(self) -> int:
        """Events waiting for other shards' answers, over every worker."""
        return sum(len(worker.core.pending) for worker in self.workers)

    def shards_topic(self) -> list[bytes]:
        """Every record sent between shards so far."""
        return [record for log in self._shards.values() for record in log]

    def _step(self, worker: _Worker, commit: bool = True) -> bool:
        """One batch of `worker`'s, committed (or, not `commit`, done and lost); whether it had anything to do."""
        worker.aligner.add(self._poll(worker))
        limit, span = self._batch
        read_to = [w.aligner.read_to() for w in self.workers if len(w.aligner)]
        records = worker.aligner.release(limit, span, min(read_to) + span if read_to else None)
        inbound, read = [], dict(worker.committed)
        for record in records:
            read[(record.topic, record.partition)] = record.offset + 1
        for shard in worker.shards:
            log, at = self._shards[shard], worker.read.get(("shards", shard), 0)
            inbound += log[at:]
            worker.read[("shards", shard)] = read[("shards", shard)] = len(log)
        if not records and not inbound:
            return False
        output = worker.core.process(records, self.now_ms, inbound)
        if not commit:
            return True
        self.outputs += output.outs
        for shard, box in output.remote.items():
            self._shards[shard] += worker.core.encode(box)
        for shard, written in worker.core.take_changes().items():
            self.changelog[shard] += [(False, record) for record in written]
        worker.batches += 1
        if worker.batches % self._snapshot_every == 0:
            for shard, written in worker.core.snapshots().items():
                self.changelog[shard] += [(i == 0, record) for i, record in enumerate(written)]
        worker.committed = read
        return True

    def _poll(self, worker: _Worker) -> list[Incoming]:
        polled = []
        for partition in worker.inputs:
            log, at = self._topics.get(partition, []), worker.read.get(partition, 0)
            polled += log[at:]
            worker.read[partition] = len(log)
        return polled
