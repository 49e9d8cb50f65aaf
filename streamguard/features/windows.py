"""Typed wrappers around the window kernels: one entity's state for one feature.

Each wrapper owns its arrays, their (de)serialisation for the state store and
the calls into `streamguard.kernels.window`; the kernels see arrays and
scalars only. Their bytes hold only the ring slots that hold a bucket (most
windows are young or sparse): a count/sum/min/max window costs 16 bytes per
such slot (at most 64 slots: 1 KiB); a distinct window 24 bytes, 8 per such
slot and 16 per value kept (at most `distinct_cap`, 256 by default: 4 KiB),
or, past the cap, 136 bytes per such slot (at most 8.5 KiB); a since_last
one 8 bytes. Decoded, every slot takes its room.

Windows are msgspec Structs with `gc=False`: a worker keeps hundreds of thousands of
them decoded and makes thousands per batch, and as ordinary objects every
young collection walked them (up to 235 ms, holding the GIL, freeing
nothing). They hold arrays and numbers only, never a cycle. Build them with
`of(...)`, from their bytes or empty.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import ClassVar, Protocol

import msgspec
import numpy as np

from streamguard.kernels import window as k


class Window(Protocol):
    def add(self, ts: int, value: float | int) -> bool: ...

    def value(self, ts: int, lateness_ms: int = k.NO_FLOOR) -> float:
        """The value at `ts`; at the newest data minus `lateness_ms` for a `ts` older than that.

        That is the oldest time the ring still holds whole.
        """
        ...

    def to_bytes(self) -> bytes: ...

    def newest_ts(self) -> int:
        """The event time of the newest data kept (-1 for none): the window is useless a span after it."""
        ...


@functools.cache
def _empty_ring(slots: int) -> np.ndarray:
    """Every slot EMPTY: copied for each new window (a copy takes a sixth of the time `np.full` does)."""
    return np.full(slots, k.EMPTY, np.int64)


def _pack_ring(starts: np.ndarray, values: np.ndarray) -> bytes:
    """A ring's held slots only: their buckets, then their values (a ring is mostly empty)."""
    held = np.flatnonzero(starts >= 0)
    return starts[held].tobytes() + values[held].tobytes()


def _newest_in_packed_ring(raw: bytes, resolution: int) -> int:
    return int(k.ring_newest(np.frombuffer(raw, np.int64, len(raw) // 16), resolution))


class SumWindow(msgspec.Struct, gc=False):
    """count (add 1), count-where and sum."""

    resolution: int
    window_buckets: int
    starts: np.ndarray  # int64: the bucket each ring slot holds
    values: np.ndarray  # float64

    @classmethod
    def of(cls, slots: int, resolution: int, window_buckets: int, raw: bytes | None = None) -> SumWindow:
        window = cls(resolution, window_buckets, _empty_ring(slots).copy(), np.zeros(slots, np.float64))
        if raw:
            held = len(raw) // 16
            buckets, values = np.frombuffer(raw, np.int64, held), np.frombuffer(raw, np.float64, held, 8 * held)
            k.ring_spread_values(buckets, values, window.starts, window.values)
        return window

    def add(self, ts: int, value: float | int) -> bool:
        return bool(k.ring_add(self.starts, self.values, ts, self.resolution, float(value)))

    def value(self, ts: int, lateness_ms: int = k.NO_FLOOR) -> float:
        return float(k.ring_sum(self.starts, self.values, ts, self.resolution, self.window_buckets, lateness_ms))

    def to_bytes(self) -> bytes:
        return _pack_ring(self.starts, self.values)

    def newest_ts(self) -> int:
        return int(k.ring_newest(self.starts, self.resolution))

    @staticmethod
    def newest_ts_in(raw: bytes, slots: int, resolution: int) -> int:
        """`newest_ts` of the window `raw` holds, read in place (what a sweep needs of each window)."""
        return _newest_in_packed_ring(raw, resolution)


class ExtremeWindow(msgspec.Struct, gc=False):
    """min or max; NaN for an empty window. Its bytes are laid out as a `SumWindow`'s."""

    resolution: int
    window_buckets: int
    starts: np.ndarray
    values: np.ndarray
    is_max: bool

    @classmethod
    def of(
        cls, slots: int, resolution: int, window_buckets: int, is_max: bool, raw: bytes | None = None
    ) -> ExtremeWindow:
        ring = SumWindow.of(slots, resolution, window_buckets, raw)
        return cls(resolution, window_buckets, ring.starts, ring.values, is_max)

    def add(self, ts: int, value: float | int) -> bool:
        return bool(k.ring_extreme(self.starts, self.values, ts, self.resolution, float(value), self.is_max))

    def value(self, ts: int, lateness_ms: int = k.NO_FLOOR) -> float:
        return float(k.ring_reduce_extreme(self.starts, self.values, ts, self.resolution, self.window_buckets,
                                           self.is_max, lateness_ms))  # fmt: skip

    def to_bytes(self) -> bytes:
        return _pack_ring(self.starts, self.values)

    def newest_ts(self) -> int:
        return int(k.ring_newest(self.starts, self.resolution))

    newest_ts_in = staticmethod(SumWindow.newest_ts_in)


_DISTINCT_HEAD = struct.Struct("=qqq")  # mode, values kept, slots held: int64 in native order, as numpy writes


class DistinctWindow(msgspec.Struct, gc=False):
    """Distinct count of value hashes: exact up to `cap` values per entity-window, then estimated.

    Past the cap the window turns into one HyperLogLog per ring slot (128
    one-byte registers, about 9% standard error), seeded with the exact values
    it had, so its memory stays bounded whatever the cardinality.
    """

    resolution: int
    window_buckets: int
    cap: int
    starts: np.ndarray
    registers: np.ndarray | None = None  # uint8, slots x HLL_REGISTERS, once estimated
    used: int = 0
    hashes: np.ndarray = msgspec.field(default_factory=lambda: np.zeros(0, np.int64))  # the exact values kept
    masks: np.ndarray = msgspec.field(default_factory=lambda: np.zeros(0, np.uint64))  # the slots each was seen in

    EXACT: ClassVar[int] = 0
    ESTIMATED: ClassVar[int] = 1

    @classmethod
    def of(cls, slots: int, resolution: int, window_buckets: int, cap: int, raw: bytes | None = None) -> DistinctWindow:
        """A window from its bytes, or empty.

        The bytes: mode, values kept, slots held (int64 each); the held slots'
        buckets; then, as `mode` says, the held slots' registers, or the values
        kept and their slot masks.
        """
        window = cls(resolution, window_buckets, cap, _empty_ring(slots).copy())
        if raw is None:
            window._allocate(8)
            return window
        mode, used, held = _DISTINCT_HEAD.unpack_from(raw)
        buckets = np.frombuffer(raw, np.int64, held, 24)
        k.ring_spread(buckets, window.starts)
        offset = 24 + 8 * held
        if mode == cls.ESTIMATED:
            window.registers = np.zeros((slots, k.HLL_REGISTERS), np.uint8)
            rows = np.frombuffer(raw, np.uint8, held * k.HLL_REGISTERS, offset).reshape(held, k.HLL_REGISTERS)
            window.registers[buckets % slots] = rows
            return window
        window._allocate(max(8, 2 * used))
        window.hashes[:used] = np.frombuffer(raw, np.int64, used, offset)
        window.masks[:used] = np.frombuffer(raw, np.uint64, used, offset + 8 * used)
        window.used = used
        return window

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

    @staticmethod
    def newest_ts_in(raw: bytes, slots: int, resolution: int) -> int:
        """`newest_ts` read in place, from the held buckets."""
        held = _DISTINCT_HEAD.unpack_from(raw)[2]
        return int(k.ring_newest(np.frombuffer(raw, np.int64, held, 24), resolution))

    def _to_estimate(self) -> None:
        self.registers = np.zeros((self.starts.shape[0], k.HLL_REGISTERS), np.uint8)
        k.hll_from_exact(self.hashes, self.masks, self.used, self.registers)
        self.used = 0

    def value(self, ts: int, lateness_ms: int = k.NO_FLOOR) -> float:
        if self.registers is not None:
            return float(k.hll_count(self.starts, self.registers, ts, self.resolution, self.window_buckets,
                                     lateness_ms))  # fmt: skip
        return float(k.distinct_count(self.starts, self.masks, self.used, ts, self.resolution, self.window_buckets,
                                      lateness_ms))  # fmt: skip

    def to_bytes(self) -> bytes:
        held = np.flatnonzero(self.starts >= 0)
        mode = self.ESTIMATED if self.registers is not None else self.EXACT
        head = _DISTINCT_HEAD.pack(mode, self.used, held.shape[0]) + self.starts[held].tobytes()
        if self.registers is not None:
            return head + self.registers[held].tobytes()
        return head + self.hashes[: self.used].tobytes() + self.masks[: self.used].tobytes()


class SinceLastWindow(msgspec.Struct, gc=False):
    """Seconds from the entity's newest earlier event to `ts` (NaN if none).

    `value` at the `ts` of the event just added reports the gap to the event
    before it; otherwise the gap to the newest event counted so far.
    """

    last: int = -1
    added: tuple[int, int] | None = None  # (ts of the event just added, the newest ts before it)

    @classmethod
    def of(cls, raw: bytes | None = None) -> SinceLastWindow:
        return cls() if raw is None else cls(int(np.frombuffer(raw, np.int64, 1)[0]))

    def add(self, ts: int, value: float | int) -> bool:
        self.added = (ts, self.last)
        self.last = max(self.last, ts)
        return True

    def value(self, ts: int, lateness_ms: int = k.NO_FLOOR) -> float:
        ts = max(ts, self.last - lateness_ms)
        added, self.added = self.added, None
        previous = added[1] if added is not None and added[0] == ts else self.last
        return math.nan if previous < 0 else max(0.0, (ts - previous) / 1000)

    def to_bytes(self) -> bytes:
        return np.array([self.last], np.int64).tobytes()

    def newest_ts(self) -> int:
        return self.last

    @staticmethod
    def newest_ts_in(raw: bytes, slots: int, resolution: int) -> int:
        return int(np.frombuffer(raw, np.int64, 1)[0])
