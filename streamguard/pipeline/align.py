"""Event-time alignment of the input partitions: what lets a replay see what live traffic saw.

A consumer reads its partitions at unequal speeds: replaying history, it may
hand over an hour of `events.login` before the device reports of that hour
have arrived. Decided in that order, a login would not see its device's
report, and the verdict would differ from the one live traffic got.

`Aligner` buffers what the consumer polled, per input partition, and releases
records in event-time order (a k-way merge on `ts`, as Kafka Streams does
across a task's partitions). While a partition has nothing buffered but the
broker holds more of it, nothing newer than the last event time it gave is
released (a partition is in event-time order, near enough), and nothing at
all if it gave none yet, for at most `idle_ms`; then the merge goes on
without it. The lag of a partition is what the last fetch said;
when records come after a quiet spell (a burst, a replay starting), nothing is
released until a fetch has told the end of every partition (at once for a
consumer that was fetching all along), for `burst_hold_ms` at most.
A record newer than everything that arrived after it in its partition (a
client clock ahead, a made-up time) is released where it arrived, instead of
holding its partition back until the merge reaches its time; a late record
goes as soon as it reaches the head of its partition. A batch spans at most
`span_ms` of event time past what was already released.
Per partition, what is released is always a prefix of what was polled, so
committing the released offsets never skips a record: an input record with
no usable `ts` (invalid bytes, a time too far ahead) waits in its partition
like any other and goes as soon as it reaches the head. Records of other
topics (internal ones) pass at once.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable

import msgspec

from streamguard.codec import MAX_FUTURE_MS
from streamguard.pipeline.records import Incoming

Partition = tuple[str, int]
IDLE_GAP_S = 1.0  # records after this long without any start a burst


class _Ts(msgspec.Struct):
    ts: int = -1


_ts_decoder = msgspec.json.Decoder(_Ts)


def event_ts(value: bytes | None, now_ms: int) -> int:
    """The `ts` of an event's JSON, cheaply; -1 when it has none the codec would accept (it goes through at once)."""
    if not value:
        return -1
    try:
        ts = _ts_decoder.decode(value).ts
    except (msgspec.MsgspecError, OverflowError, RecursionError):  # deep nesting: the codec dead-letters it
        return -1
    return ts if ts <= now_ms + MAX_FUTURE_MS else -1  # a far-future ts would hold its partition back


class _PartitionQueue:
    """What is buffered of one partition, in arrival order, knowing the newest `ts` behind its head.

    A record newer than every record that arrived after it (a client clock
    ahead, a malformed event with a made-up time) is out of line with its
    partition: were the merge to wait for its `ts`, it would hold back every
    record behind it. `head_is_ahead` tells, in constant time (a running
    maximum over the queue, kept as a monotonic deque).
    """

    def __init__(self) -> None:
        self._records: deque[tuple[int, int, Incoming]] = deque()  # (ts, arrival number, record)
        self._newest: deque[tuple[int, int]] = deque()  # decreasing ts: the maximum of every suffix
        self._arrivals = 0
        self.last_ts = -1  # the ts of the last record polled, kept when the queue empties

    def __len__(self) -> int:
        return len(self._records)

    def append(self, ts: int, record: Incoming) -> None:
        """Queue `record`; a `ts` of -1 (none usable) goes as soon as it reaches the head."""
        self._arrivals += 1
        self._records.append((ts, self._arrivals, record))
        if ts < 0:
            return  # neither the partition's time nor ahead of it
        self.last_ts = ts
        while self._newest and self._newest[-1][0] <= ts:
            self._newest.pop()
        self._newest.append((ts, self._arrivals))

    def head_ts(self) -> int:
        return self._records[0][0]

    def popleft(self) -> Incoming:
        _, arrival, record = self._records.popleft()
        if self._newest and self._newest[0][1] == arrival:
            self._newest.popleft()
        return record

    def head_is_ahead(self) -> bool:
        """Whether records arrived after the head, all of them older than it."""
        return len(self._newest) > 1 and self._newest[0][1] == self._records[0][1]

    def records(self) -> list[Incoming]:
        return [record for _, _, record in self._records]


class Aligner:
    def __init__(
        self,
        inputs: set[str],
        lagging: Callable[[Partition], bool],
        idle_ms: float,
        burst_hold_ms: float,
        end_known: Callable[[Partition], bool] = lambda p: False,
    ) -> None:
        self._inputs = inputs
        self._lagging = lagging  # whether the broker holds records of a partition not polled yet
        self._end_known = end_known  # whether a fetch has told where the partition ends (so `lagging` holds)
        self._idle_s = idle_ms / 1000
        self._burst_hold_s = burst_hold_ms / 1000
        self._last_polled = 0.0  # time.monotonic() of the last record polled
        self._last_add = 0.0  # of the last call to `add`
        self._hold_until = 0.0
        self._queues: dict[Partition, _PartitionQueue] = {}
        self._passing: list[Incoming] = []
        self._empty_since: dict[Partition, float] = {}  # lagging partitions with nothing buffered
        self._partitions: set[Partition] = set()  # the assigned input partitions
        self.released_ts = 0  # the newest event time released: how far this worker has read

    def __len__(self) -> int:
        return len(self._passing) + sum(len(q) for q in self._queues.values())

    def assign(self, partitions: list[Partition]) -> None:
        self._partitions |= {p for p in partitions if p[0] in self._inputs}

    def revoke(self, partitions: list[Partition]) -> None:
        """Forget revoked partitions and what is buffered of them (their new owner reads it again)."""
        gone = set(partitions)
        for p in gone:
            self._partitions.discard(p)
            self._queues.pop(p, None)
        self._passing = [r for r in self._passing if (r.topic, r.partition) not in gone]

    def add(self, records: list[Incoming]) -> None:
        now = time.monotonic()
        if now - self._last_add > self._idle_s:
            self._empty_since.clear()  # the caller was busy: the waiting only starts now
        self._last_add = now
        if not records:
            return
        if now - self._last_polled > IDLE_GAP_S:
            # The first records after a quiet spell: the lag of a partition no fetch has answered
            # for yet (just assigned, just started) is unknown, so the merge waits for that.
            self._hold_until = now + self._burst_hold_s
        self._last_polled = now
        now_ms = int(time.time() * 1000)
        for record in records:
            if record.topic in self._inputs:
                queue = self._queues.setdefault((record.topic, record.partition), _PartitionQueue())
                queue.append(event_ts(record.value, now_ms), record)
            else:
                self._passing.append(record)

    def release(self, limit: int, span_ms: int, horizon_ts: int | None = None) -> list[Incoming]:
        """Up to `limit` records within `span_ms` of event time, in event-time order across partitions.

        Maybe none while a partition lags. The span bounds how far one batch
        runs ahead in event time of the work it sends to other workers (which
        they do a transaction later): in a replay, a batch of many minutes of
        history would decide its later events before its earlier ones reached
        their entities on other workers. Live traffic spans far less. Nothing
        past `horizon_ts` is released (how far the slowest peer has read, plus
        the span), so that one worker does not run ahead of the others.
        """
        out, self._passing = self._passing[:limit], self._passing[limit:]
        for queue in self._queues.values():
            self._release_ahead(queue, out, limit)
        heads = [(q.head_ts(), p) for p, q in self._queues.items() if q]
        if not heads or self._holding():
            return out
        heapq.heapify(heads)
        until = self._bound(heads[0][0])
        if until is None:
            return out
        # The span counts from the newest event time released so far: a late record (older than
        # that) goes at once, and does not drag the batch back to its own time.
        until = min(until, max(heads[0][0], self.released_ts) + span_ms)
        if horizon_ts is not None:
            until = min(until, horizon_ts)
        while heads and len(out) < limit and heads[0][0] <= until:
            ts, p = heapq.heappop(heads)
            queue = self._queues[p]
            out.append(queue.popleft())
            self.released_ts = max(self.released_ts, ts)
            self._release_ahead(queue, out, limit)
            if queue:
                heapq.heappush(heads, (queue.head_ts(), p))
            elif self._lagging(p):
                until = min(until, queue.last_ts)  # its next records are no older than its last
        return out

    @staticmethod
    def _release_ahead(queue: _PartitionQueue, out: list[Incoming], limit: int) -> None:
        """Release the records at the head of `queue` that have no usable `ts` or are ahead of their partition."""
        while len(out) < limit and queue and (queue.head_ts() < 0 or queue.head_is_ahead()):
            out.append(queue.popleft())

    def unreleased(self) -> list[Incoming]:
        """The records buffered and not released, forgotten here (after an abort, they are read again)."""
        records = self._passing + [r for q in self._queues.values() for r in q.records()]
        self._passing.clear()
        self._queues.clear()
        return records

    def _holding(self) -> bool:
        """After a quiet spell, until a fetch has told the end of every partition (`burst_hold_ms` at most)."""
        if self._hold_until and all(self._end_known(p) for p in self._partitions):
            self._hold_until = 0.0
        return time.monotonic() < self._hold_until

    def caught_up(self) -> bool:
        """Nothing buffered and nothing more at the broker: this worker holds no one back."""
        return not len(self) and not any(self._lagging(p) for p in self._partitions)

    def read_to(self) -> int:
        """How far in event time this worker has read, for its peers to keep within a span of (0: nothing yet).

        The newest time released, or, when everything it holds is newer than
        that, the oldest time it holds: a record held far ahead of the rest (a
        client clock ahead, a replay's last event) holds its worker at that
        time, and two workers each holding one would otherwise each wait for
        ever for the other to read further.
        """
        held = [q.head_ts() for q in self._queues.values() if q and q.head_ts() >= 0]  # -1 goes at once
        return max(self.released_ts, min(held, default=0))

    def full(self, limit: int) -> list[Partition]:
        """The partitions with over `limit` records buffered: the consumer pauses them, so others get fetched."""
        return [p for p, q in self._queues.items() if len(q) > limit]

    def _bound(self, oldest_head: int) -> int | None:
        """The newest event time that may go now (None: nothing, yet).

        A partition with nothing buffered that the broker has more of bounds
        the merge at the last event time it gave (its next records are no
        older, a partition being in order); one that gave nothing yet, or
        nothing as old as the oldest head, holds everything back, for
        `idle_ms` at most.
        """
        now = time.monotonic()
        bound: int | None = 2**62
        for p in self._partitions:
            queue = self._queues.get(p)
            if queue or not self._lagging(p):
                self._empty_since.pop(p, None)
                continue
            last = queue.last_ts if queue is not None else -1  # no queue: it gave nothing yet
            if last >= oldest_head:
                bound = None if bound is None else min(bound, last)
                continue
            if now - self._empty_since.setdefault(p, now) < self._idle_s:
                bound = None
        return bound
