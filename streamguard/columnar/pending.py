"""Events decided on a shard held here that wait for the answers of their entities' shards held elsewhere.

A row per event: what has been read of its features so far, its hashes
(a fingerprint the device's shard resolved is written in), and two bit
masks of hash columns: those other shards were asked to count (a shard that
passes a fingerprint on adds its bit) and those answered. The event is
complete when every bit asked is answered, whatever order the answers
came in. Answers are merged a batch at a time, with no Python per value.
What changed since the last `take_changes` (rows parked or answered, and
events decided) is what the changelog carries of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamguard.columnar.changes import PendingRows, Source
from streamguard.columnar.exchange import Answers
from streamguard.columnar.hashing import ABSENT
from streamguard.columnar.pack import shard_of_keys
from streamguard.events import AnyEvent
from streamguard.pipeline.records import Incoming


@dataclass
class Complete:
    """Events whose answers are all in."""

    events: list[AnyEvent]
    sources: list[Incoming]
    etype: np.ndarray
    values: np.ndarray
    hashes: np.ndarray


class PendingEvents:
    def __init__(self, features: int, hash_columns: int, fingerprint_column: int) -> None:
        self._fingerprint = fingerprint_column
        self._row: dict[int, int] = {}  # event id's hash -> its row
        self._free: list[int] = []
        self._events: list[AnyEvent | None] = []
        self._sources: list[Incoming | None] = []
        self._etype = np.zeros(0, np.int64)
        self._values = np.zeros((0, features))
        self._hashes = np.zeros((0, hash_columns), np.uint64)
        self._asked = np.zeros(0, np.int64)
        self._answered = np.zeros(0, np.int64)
        self._touched: set[int] = set()  # keys parked or answered since the last `take_changes`
        self._done: list[int] = []  # keys decided since

    def __len__(self) -> int:
        return len(self._row)

    def park(
        self,
        events: list[AnyEvent],
        sources: list[Incoming],
        etype: np.ndarray,
        values: np.ndarray,
        hashes: np.ndarray,
        asked: np.ndarray,
        answered: np.ndarray | None = None,
    ) -> None:
        """Hold events until their answers are in (`answered`: bits already answered, for a restore)."""
        rows = self._rows_for(len(events))
        self._etype[rows], self._values[rows], self._hashes[rows] = etype, values, hashes
        self._asked[rows], self._answered[rows] = asked, 0 if answered is None else answered
        for row, event, source, key in zip(rows.tolist(), events, sources, hashes[:, -1].tolist(), strict=True):
            self._events[row], self._sources[row] = event, source
            self._row[key] = row
            self._touched.add(key)

    def answer(self, answers: Answers) -> tuple[Complete, np.ndarray]:
        """Merge `answers`; the events now complete (taken out), and which answers had no event waiting."""
        rows = np.fromiter((self._row.get(key, -1) for key in answers.event.tolist()), np.int64, len(answers))
        found = rows >= 0
        at = rows[found]
        np.bitwise_or.at(self._asked, at, answers.passed_on[found])
        np.bitwise_or.at(self._answered, at, answers.answered[found])
        np.fmax.at(self._values, at, answers.values[found])  # each feature is read on one shard: NaN elsewhere
        resolved = found & (answers.fingerprint != np.uint64(ABSENT))
        if self._fingerprint >= 0 and resolved.any():
            self._hashes[rows[resolved], self._fingerprint] = answers.fingerprint[resolved]
        touched = np.unique(at)
        self._touched.update(self._hashes[touched, -1].tolist())
        done = touched[(self._asked[touched] & ~self._answered[touched]) == 0]
        return self._take(done), np.flatnonzero(~found)

    def take_changes(self, shards: int) -> dict[int, tuple[PendingRows, np.ndarray]]:
        """Per shard, the rows parked or answered since the last call, and the keys of those decided."""
        touched = np.array(sorted(self._touched), np.uint64)
        done = np.array(self._done, np.uint64)
        self._touched, self._done = set(), []
        rows = np.array([self._row[key] for key in touched.tolist()], np.int64)
        row_shards, done_shards = shard_of_keys(touched, shards), shard_of_keys(done, shards)
        return {
            shard: (self._rows(rows[row_shards == shard]), done[done_shards == shard])
            for shard in np.union1d(row_shards, done_shards).tolist()
        }

    def of_shard(self, shard: int, shards: int) -> PendingRows:
        """Every event pending of `shard`: what a snapshot holds."""
        keys = np.array(list(self._row), np.uint64)
        return self._rows(np.array([self._row[k] for k in keys[shard_of_keys(keys, shards) == shard].tolist()],
                                   np.int64))  # fmt: skip

    def forget(self, keys: np.ndarray) -> None:
        """Drop the events of `keys` that are held (decided elsewhere, or their shard moved)."""
        rows = np.array([self._row[k] for k in keys.tolist() if k in self._row], np.int64)
        for row in rows.tolist():
            self._events[row] = self._sources[row] = None
            self._free.append(row)
        for key in self._hashes[rows, -1].tolist():
            del self._row[key]
            self._touched.discard(key)

    def forget_done(self, owned: np.ndarray) -> None:
        """Forget that events of the shards `owned` does not mark were decided (those shards moved away)."""
        done = np.array(self._done, np.uint64)
        self._done = done[owned[shard_of_keys(done, owned.shape[0])]].tolist()

    def keys(self) -> np.ndarray:
        return np.array(list(self._row), np.uint64)

    def _rows(self, rows: np.ndarray) -> PendingRows:
        sources: list[Source] = []
        for row in rows.tolist():
            source = self._sources[row]
            assert source is not None
            sources.append((source.topic, source.partition, source.offset, source.key, source.value))
        return PendingRows(sources, self._etype[rows], self._asked[rows], self._answered[rows], self._values[rows],
                           self._hashes[rows])  # fmt: skip

    def _take(self, rows: np.ndarray) -> Complete:
        events, sources = [], []
        for row in rows.tolist():
            event, source = self._events[row], self._sources[row]
            assert event is not None and source is not None
            events.append(event)
            sources.append(source)
            self._events[row] = self._sources[row] = None
            self._free.append(row)
        for key in self._hashes[rows, -1].tolist():
            del self._row[key]
            self._touched.discard(key)
            self._done.append(key)
        return Complete(events, sources, self._etype[rows], self._values[rows], self._hashes[rows])

    def _rows_for(self, n: int) -> np.ndarray:
        reused = [self._free.pop() for _ in range(min(n, len(self._free)))]
        start = len(self._events)
        fresh = n - len(reused)
        if fresh:
            self._events += [None] * fresh
            self._sources += [None] * fresh
            if len(self._events) > self._etype.shape[0]:
                self._grow(max(len(self._events), 2 * self._etype.shape[0]))
        return np.array(reused + list(range(start, start + fresh)), np.int64)

    def _grow(self, size: int) -> None:
        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((size, *array.shape[1:]), array.dtype)
            out[: array.shape[0]] = array
            return out

        self._etype, self._values, self._hashes = grown(self._etype), grown(self._values), grown(self._hashes)
        self._asked, self._answered = grown(self._asked), grown(self._answered)
