"""Typed wrappers around the window kernels: one entity's state for one feature.

Each wrapper owns its arrays, their (de)serialisation for the state store and
the calls into `streamguard.kernels.window`; the kernels see arrays and
scalars only. Sizes: a count/sum/min/max window costs 16 bytes per ring slot
(at most 64 slots: 1 KiB); a distinct window 8 bytes per slot plus 16 per
value kept; a since_last one 8 bytes.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from streamguard.kernels import window as k


class Window(Protocol):
    def add(self, ts: int, value: float | int) -> bool: ...

    def value(self, ts: int) -> float: ...

    def to_bytes(self) -> bytes: ...


class SumWindow:
    """count (add 1), count-where and sum."""

    def __init__(self, slots: int, resolution: int, window_buckets: int, raw: bytes | None = None) -> None:
        self.resolution, self.window_buckets = resolution, window_buckets
        if raw is None:
            self.starts, self.values = np.full(slots, k.EMPTY, np.int64), np.zeros(slots, np.float64)
        else:
            self.starts = np.frombuffer(raw, np.int64, slots).copy()
            self.values = np.frombuffer(raw, np.float64, slots, offset=8 * slots).copy()

    def add(self, ts: int, value: float | int) -> bool:
        return bool(k.ring_add(self.starts, self.values, ts, self.resolution, float(value)))

    def value(self, ts: int) -> float:
        return float(k.ring_sum(self.starts, self.values, ts, self.resolution, self.window_buckets))

    def to_bytes(self) -> bytes:
        return self.starts.tobytes() + self.values.tobytes()


class ExtremeWindow(SumWindow):
    """min or max; NaN for an empty window."""

    def __init__(self, slots: int, resolution: int, window_buckets: int, is_max: bool, raw: bytes | None = None):
        super().__init__(slots, resolution, window_buckets, raw)
        self.is_max = is_max

    def add(self, ts: int, value: float | int) -> bool:
        return bool(k.ring_extreme(self.starts, self.values, ts, self.resolution, float(value), self.is_max))

    def value(self, ts: int) -> float:
        return float(k.ring_reduce_extreme(self.starts, self.values, ts, self.resolution, self.window_buckets,
                                           self.is_max))  # fmt: skip


class DistinctWindow:
    """Exact distinct count of value hashes, up to `cap` values per entity-window.

    Past the cap, new values are not counted and `saturated` is set: the count
    is then a lower bound (an estimator for that case is still to come).
    """

    def __init__(self, slots: int, resolution: int, window_buckets: int, cap: int, raw: bytes | None = None):
        self.resolution, self.window_buckets = resolution, window_buckets
        self.hashes, self.masks = np.zeros(cap, np.int64), np.zeros(cap, np.uint64)
        self.saturated = False
        if raw is None:
            self.starts, self.used = np.full(slots, k.EMPTY, np.int64), 0
            return
        self.starts = np.frombuffer(raw, np.int64, slots).copy()
        self.used = int(np.frombuffer(raw, np.int64, 1, offset=8 * slots)[0])
        offset = 8 * slots + 8
        self.hashes[: self.used] = np.frombuffer(raw, np.int64, self.used, offset=offset)
        self.masks[: self.used] = np.frombuffer(raw, np.uint64, self.used, offset=offset + 8 * self.used)

    def add(self, ts: int, value: float | int) -> bool:
        result = int(k.distinct_add(self.starts, self.hashes, self.masks, self.used, int(value), ts, self.resolution))
        if result == -1:
            self.saturated = True
        elif result >= 0:
            self.used = result
        return result != -2

    def value(self, ts: int) -> float:
        return float(k.distinct_count(self.starts, self.masks, self.used, ts, self.resolution, self.window_buckets))

    def to_bytes(self) -> bytes:
        used = np.array([self.used], np.int64)
        return (
            self.starts.tobytes()
            + used.tobytes()
            + self.hashes[: self.used].tobytes()
            + self.masks[: self.used].tobytes()
        )


class SinceLastWindow:
    """Seconds from the entity's newest earlier event to `ts` (NaN if none): what was known before this event."""

    def __init__(self, raw: bytes | None = None) -> None:
        self.last = -1 if raw is None else int(np.frombuffer(raw, np.int64, 1)[0])
        self.before = self.last

    def add(self, ts: int, value: float | int) -> bool:
        self.last = max(self.last, ts)
        return True

    def value(self, ts: int) -> float:
        return math.nan if self.before < 0 else max(0.0, (ts - self.before) / 1000)

    def to_bytes(self) -> bytes:
        return np.array([self.last], np.int64).tobytes()
