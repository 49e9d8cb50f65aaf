"""Typed wrappers around the window kernels: one entity's state for one feature.

Each wrapper owns its arrays, their (de)serialisation for the state store and
the calls into `streamguard.kernels.window`; the kernels see arrays and
scalars only. Sizes: a count/sum/min/max window costs 16 bytes per ring slot
(at most 64 slots: 1 KiB); a distinct window 8 bytes per slot plus 16 per
value kept (at most `distinct_cap`, 256 by default: 4 KiB), or, past the
cap, 136 bytes per slot (at most 8.5 KiB); a since_last one 8 bytes.
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

    def newest_ts(self) -> int:
        """The event time of the newest data kept (-1 for none): the window is useless a span after it."""
        ...


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

    def newest_ts(self) -> int:
        return int(k.ring_newest(self.starts, self.resolution))


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
    """Distinct count of value hashes: exact up to `cap` values per entity-window, then estimated.

    Past the cap the window turns into one HyperLogLog per ring slot (128
    one-byte registers, about 9% standard error), seeded with the exact values
    it had, so its memory stays bounded whatever the cardinality.
    """

    EXACT, ESTIMATED = 0, 1

    def __init__(self, slots: int, resolution: int, window_buckets: int, cap: int, raw: bytes | None = None):
        self.resolution, self.window_buckets, self.cap = resolution, window_buckets, cap
        self.registers: np.ndarray | None = None
        self.used = 0
        self.hashes, self.masks = np.zeros(0, np.int64), np.zeros(0, np.uint64)
        if raw is None:
            self.starts = np.full(slots, k.EMPTY, np.int64)
            self._allocate(8)
            return
        mode, used = (int(x) for x in np.frombuffer(raw, np.int64, 2))
        self.starts = np.frombuffer(raw, np.int64, slots, offset=16).copy()
        offset = 16 + 8 * slots
        if mode == self.ESTIMATED:
            self.registers = (
                np.frombuffer(raw, np.uint8, slots * k.HLL_REGISTERS, offset=offset)
                .reshape(slots, k.HLL_REGISTERS)
                .copy()
            )
            return
        self._allocate(max(8, 2 * used))
        self.hashes[:used] = np.frombuffer(raw, np.int64, used, offset=offset)
        self.masks[:used] = np.frombuffer(raw, np.uint64, used, offset=offset + 8 * used)
        self.used = used

    def _allocate(self, size: int) -> None:
        """Room for `size` values (at most the cap), keeping those there are."""
        size = min(size, self.cap)
        hashes, masks = np.zeros(size, np.int64), np.zeros(size, np.uint64)
        if self.used:
            hashes[: self.used], masks[: self.used] = self.hashes[: self.used], self.masks[: self.used]
        self.hashes, self.masks = hashes, masks

    @property
    def estimated(self) -> bool:
        return self.registers is not None

    def add(self, ts: int, value: float | int) -> bool:
        if self.registers is not None:
            return bool(k.hll_add(self.starts, self.registers, int(value), ts, self.resolution))
        result = int(k.distinct_add(self.starts, self.hashes, self.masks, self.used, int(value), ts, self.resolution))
        if result == -1 and self.hashes.shape[0] < self.cap:
            self._allocate(2 * self.hashes.shape[0])
            return self.add(ts, value)
        if result == -1:
            self._to_estimate()
            return self.add(ts, value)
        if result >= 0:
            self.used = result
        return result != -2

    def newest_ts(self) -> int:
        return int(k.ring_newest(self.starts, self.resolution))

    def _to_estimate(self) -> None:
        self.registers = np.zeros((self.starts.shape[0], k.HLL_REGISTERS), np.uint8)
        k.hll_from_exact(self.hashes, self.masks, self.used, self.registers)
        self.used = 0

    def value(self, ts: int) -> float:
        if self.registers is not None:
            return float(k.hll_count(self.starts, self.registers, ts, self.resolution, self.window_buckets))
        return float(k.distinct_count(self.starts, self.masks, self.used, ts, self.resolution, self.window_buckets))

    def to_bytes(self) -> bytes:
        mode = self.ESTIMATED if self.registers is not None else self.EXACT
        head = np.array([mode, self.used], np.int64).tobytes() + self.starts.tobytes()
        if self.registers is not None:
            return head + self.registers.tobytes()
        return head + self.hashes[: self.used].tobytes() + self.masks[: self.used].tobytes()


class SinceLastWindow:
    """Seconds from the entity's newest earlier event to `ts` (NaN if none).

    `value` at the `ts` of the event just added reports the gap to the event
    before it; otherwise the gap to the newest event counted so far.
    """

    def __init__(self, raw: bytes | None = None) -> None:
        self.last = -1 if raw is None else int(np.frombuffer(raw, np.int64, 1)[0])
        self._added: tuple[int, int] | None = None  # (ts of the event just added, the newest ts before it)

    def add(self, ts: int, value: float | int) -> bool:
        self._added = (ts, self.last)
        self.last = max(self.last, ts)
        return True

    def value(self, ts: int) -> float:
        added, self._added = self._added, None
        previous = added[1] if added is not None and added[0] == ts else self.last
        return math.nan if previous < 0 else max(0.0, (ts - previous) / 1000)

    def to_bytes(self) -> bytes:
        return np.array([self.last], np.int64).tobytes()

    def newest_ts(self) -> int:
        return self.last
