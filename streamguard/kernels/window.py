"""Sliding event-time windows kept as a ring of buckets.

A window of `window_buckets` buckets of `resolution` ms is kept in a ring of
`starts.shape[0]` slots (at least the window plus the allowed lateness).
Slot `b % n` holds bucket `b` (`starts[slot] == b`), or an older bucket that
has left the ring, or nothing (`starts[slot] < 0`). An event at `ts` counts in
bucket `ts // resolution`; a query at `ts` covers buckets
`ts // resolution - window_buckets + 1` to `ts // resolution`, whatever the
order the events arrived in. An event older than the ring keeps is refused
(returns False) and changes nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = -1
NO_FLOOR = 1 << 62  # a lateness that never moves a query: the value at exactly the time asked


@njit(cache=True)
def ring_slot(starts: np.ndarray, ts: int, resolution: int) -> tuple[int, bool]:
    """The slot of the bucket of `ts` and whether it was just claimed; slot -1 if `ts` is too old."""
    bucket = ts // resolution
    slot = bucket % starts.shape[0]
    held = starts[slot]
    if held == bucket:
        return slot, False
    if held > bucket:
        return -1, False
    starts[slot] = bucket  # the slot was free, or held a bucket that has left the ring
    return slot, True


@njit(cache=True)
def ring_add(starts: np.ndarray, values: np.ndarray, ts: int, resolution: int, amount: float) -> bool:
    """Add `amount` to the bucket of `ts` (count, count-where, sum)."""
    slot, fresh = ring_slot(starts, ts, resolution)
    if slot < 0:
        return False
    if fresh:
        values[slot] = 0.0
    values[slot] += amount
    return True


@njit(cache=True)
def ring_extreme(starts: np.ndarray, values: np.ndarray, ts: int, resolution: int, value: float, is_max: bool) -> bool:
    """Keep the max (or min) of the bucket of `ts`."""
    slot, fresh = ring_slot(starts, ts, resolution)
    if slot < 0:
        return False
    if fresh or (value > values[slot] if is_max else value < values[slot]):
        values[slot] = value
    return True


@njit(cache=True)
def ring_newest(starts: np.ndarray, resolution: int) -> int:
    """The last ms of the newest bucket the ring holds; -1 for an empty ring."""
    newest = EMPTY
    for i in range(starts.shape[0]):
        if starts[i] > newest:
            newest = starts[i]
    return EMPTY if newest < 0 else (newest + 1) * resolution - 1


@njit(cache=True)
def ring_spread(buckets: np.ndarray, starts: np.ndarray) -> None:
    """Put each of `buckets` back in its slot of an empty ring (`starts` all EMPTY): decoding a packed ring."""
    n = starts.shape[0]
    for i in range(buckets.shape[0]):
        starts[buckets[i] % n] = buckets[i]


@njit(cache=True)
def ring_spread_values(buckets: np.ndarray, held: np.ndarray, starts: np.ndarray, values: np.ndarray) -> None:
    """`ring_spread`, and each bucket's value (`held[i]` for `buckets[i]`) into `values`."""
    n = starts.shape[0]
    for i in range(buckets.shape[0]):
        slot = buckets[i] % n
        starts[slot] = buckets[i]
        values[slot] = held[i]


@njit(cache=True)
def query_ts(starts: np.ndarray, ts: int, resolution: int, lateness: int) -> int:
    """`ts`, or if it is older, the oldest time the ring still holds whole: its newest minus the lateness."""
    return max(ts, ring_newest(starts, resolution) - lateness)


@njit(cache=True)
def window_bounds(ts: int, resolution: int, window_buckets: int) -> tuple[int, int]:
    """The oldest and newest bucket of the window that ends with the bucket of `ts`."""
    newest = ts // resolution
    return max(newest - window_buckets + 1, 0), newest  # an empty slot holds EMPTY, below every bucket


@njit(cache=True)
def ring_sum(
    starts: np.ndarray, values: np.ndarray, ts: int, resolution: int, window_buckets: int, lateness: int = NO_FLOOR
) -> float:
    """The sum of the buckets in the window that ends with the bucket of `query_ts`."""
    oldest, newest = window_bounds(query_ts(starts, ts, resolution, lateness), resolution, window_buckets)
    total = 0.0
    for i in range(starts.shape[0]):
        if oldest <= starts[i] <= newest:
            total += values[i]
    return total


@njit(cache=True)
def ring_reduce_extreme(
    starts: np.ndarray,
    values: np.ndarray,
    ts: int,
    resolution: int,
    window_buckets: int,
    is_max: bool,
    lateness: int = NO_FLOOR,
) -> float:
    """The max (or min) over the window that ends with the bucket of `query_ts`; NaN for an empty window."""
    oldest, newest = window_bounds(query_ts(starts, ts, resolution, lateness), resolution, window_buckets)
    found = False
    best = 0.0
    for i in range(starts.shape[0]):
        if oldest <= starts[i] <= newest:
            v = values[i]
            if not found or (v > best) == is_max:
                best = v
                found = True
    return best if found else np.nan


@njit(cache=True)
def distinct_add(
    starts: np.ndarray, hashes: np.ndarray, masks: np.ndarray, used: int, value_hash: int, ts: int, resolution: int
) -> int:
    """Record `value_hash` in the bucket of `ts`; the values kept after, -1 when full, -2 if `ts` is too old.

    Exact distinct counts keep each value with a bit mask of the ring slots it
    was seen in (a ring has at most 64 slots); a slot taken over by a newer
    bucket is cleared from every mask, and values left with no bit are dropped.
    """
    slot, fresh = ring_slot(starts, ts, resolution)
    if slot < 0:
        return -2
    bit = np.uint64(1) << np.uint64(slot)
    if fresh:
        used = _clear_slot(hashes, masks, used, ~bit)
    for i in range(used):
        if hashes[i] == value_hash:
            masks[i] |= bit
            return used
    if used == hashes.shape[0]:
        return -1
    hashes[used] = value_hash
    masks[used] = bit
    return used + 1


@njit(cache=True)
def _clear_slot(hashes: np.ndarray, masks: np.ndarray, used: int, keep: np.uint64) -> int:
    kept = 0
    for i in range(used):
        mask = masks[i] & keep
        if mask:
            hashes[kept] = hashes[i]
            masks[kept] = mask
            kept += 1
    return kept


@njit(cache=True)
def distinct_count(
    starts: np.ndarray,
    masks: np.ndarray,
    used: int,
    ts: int,
    resolution: int,
    window_buckets: int,
    lateness: int = NO_FLOOR,
) -> int:
    """How many values were seen in the window that ends with the bucket of `query_ts`."""
    oldest, newest = window_bounds(query_ts(starts, ts, resolution, lateness), resolution, window_buckets)
    window = np.uint64(0)
    for slot in range(starts.shape[0]):
        if oldest <= starts[slot] <= newest:
            window |= np.uint64(1) << np.uint64(slot)
    n = 0
    for i in range(used):
        if masks[i] & window:
            n += 1
    return n


HLL_REGISTERS = 128  # a standard error of about 1.04 / sqrt(128), 9%
_HLL_INDEX_BITS = 7


@njit(cache=True)
def hll_add(starts: np.ndarray, registers: np.ndarray, value_hash: int, ts: int, resolution: int) -> bool:
    """Count `value_hash` in the HyperLogLog of the bucket of `ts` (one row of registers per ring slot)."""
    slot, fresh = ring_slot(starts, ts, resolution)
    if slot < 0:
        return False
    if fresh:
        registers[slot, :] = 0
    hll_update(registers, slot, value_hash)
    return True


@njit(cache=True)
def hll_update(registers: np.ndarray, slot: int, value_hash: int) -> None:
    """Count `value_hash` in the registers of ring slot `slot`."""
    bits = np.uint64(value_hash)
    index = int(bits & np.uint64(HLL_REGISTERS - 1))
    rest = bits >> np.uint64(_HLL_INDEX_BITS)
    rank = 1
    while rank <= 64 - _HLL_INDEX_BITS and not (rest & np.uint64(1)):
        rest >>= np.uint64(1)
        rank += 1
    if rank > registers[slot, index]:
        registers[slot, index] = rank


@njit(cache=True)
def hll_from_exact(hashes: np.ndarray, masks: np.ndarray, used: int, registers: np.ndarray) -> None:
    """Fill the registers (zeroed) with the exact values, in every ring slot each was seen in."""
    for i in range(used):
        for slot in range(registers.shape[0]):
            if masks[i] & (np.uint64(1) << np.uint64(slot)):
                hll_update(registers, slot, hashes[i])


@njit(cache=True)
def hll_count(
    starts: np.ndarray, registers: np.ndarray, ts: int, resolution: int, window_buckets: int, lateness: int = NO_FLOOR
) -> float:
    """The estimated distinct count over the window that ends with the bucket of `query_ts`.

    The buckets' registers are merged by max.
    """
    oldest, newest = window_bounds(query_ts(starts, ts, resolution, lateness), resolution, window_buckets)
    merged = np.zeros(HLL_REGISTERS, np.uint8)
    for slot in range(starts.shape[0]):
        if oldest <= starts[slot] <= newest:
            for j in range(HLL_REGISTERS):
                if registers[slot, j] > merged[j]:
                    merged[j] = registers[slot, j]
    return hll_estimate(merged)


@njit(cache=True)
def hll_estimate(merged: np.ndarray) -> float:
    """The distinct count a set of merged registers estimates."""
    m = float(HLL_REGISTERS)
    total, zeros = 0.0, 0
    for j in range(HLL_REGISTERS):
        total += 2.0 ** -float(merged[j])
        if merged[j] == 0:
            zeros += 1
    estimate = (0.7213 / (1.0 + 1.079 / m)) * m * m / total
    if estimate <= 2.5 * m and zeros > 0:
        estimate = m * np.log(m / zeros)  # small counts: linear counting
    return estimate


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, so that no event waits for numba."""
    starts, values = np.full(4, EMPTY, np.int64), np.zeros(4, np.float64)
    hashes, masks = np.zeros(2, np.int64), np.zeros(2, np.uint64)
    ring_slot(starts, 1, 1)
    ring_newest(starts, 1)
    ring_spread(np.zeros(1, np.int64), starts)
    ring_spread_values(np.zeros(1, np.int64), np.zeros(1, np.float64), starts, values)
    window_bounds(1, 1, 2)
    ring_add(starts, values, 1, 1, 1.0)
    ring_extreme(starts, values, 1, 1, 1.0, True)
    query_ts(starts, 1, 1, 0)
    ring_sum(starts, values, 1, 1, 2, 0)
    ring_reduce_extreme(starts, values, 1, 1, 2, True, 0)
    used = distinct_add(starts, hashes, masks, 0, 7, 1, 1)
    distinct_count(starts, masks, used, 1, 1, 2, 0)
    registers = np.zeros((4, HLL_REGISTERS), np.uint8)
    hll_add(starts, registers, 7, 1, 1)
    hll_count(starts, registers, 1, 1, 2, 0)
    hll_from_exact(hashes, masks, used, registers)


KERNELS = (
    ring_slot,
    ring_newest,
    ring_spread,
    ring_spread_values,
    query_ts,
    window_bounds,
    ring_add,
    ring_extreme,
    ring_sum,
    ring_reduce_extreme,
    distinct_add,
    distinct_count,
)
