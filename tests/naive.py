"""Plain-Python twins of the numba kernels, written for clarity, not speed.

Each keeps every event it accepted and answers queries by brute force; the
property tests check that the kernels give the same answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class NaiveRing:
    """A ring of `slots` buckets of `resolution` ms, as `streamguard.kernels.window` keeps it."""

    slots: int
    resolution: int
    events: list[tuple[int, float]] = field(default_factory=list)  # (bucket, value)

    def accepts(self, ts: int) -> bool:
        bucket = ts // self.resolution
        return not any(b % self.slots == bucket % self.slots and b > bucket for b, _ in self.events)

    def add(self, ts: int, value: float) -> bool:
        if not self.accepts(ts):
            return False
        self.events.append((ts // self.resolution, value))
        return True

    def live(self) -> list[tuple[int, float]]:
        """Events whose bucket still holds its slot (a newer bucket in the slot evicts older ones)."""
        newest: dict[int, int] = {}
        for b, _ in self.events:
            newest[b % self.slots] = max(newest.get(b % self.slots, -1), b)
        return [(b, v) for b, v in self.events if newest[b % self.slots] == b]

    def in_window(self, ts: int, window_buckets: int) -> list[tuple[int, float]]:
        newest = ts // self.resolution
        return [(b, v) for b, v in self.live() if newest - window_buckets + 1 <= b <= newest]

    def sum(self, ts: int, window_buckets: int) -> float:
        return sum(v for _, v in self.in_window(ts, window_buckets))

    def extreme(self, ts: int, window_buckets: int, is_max: bool) -> float:
        values = [v for _, v in self.in_window(ts, window_buckets)]
        if not values:
            return math.nan
        return max(values) if is_max else min(values)

    def distinct(self, ts: int, window_buckets: int) -> int:
        return len({v for _, v in self.in_window(ts, window_buckets)})


def naive_hll_estimate(value_hashes: list[int], registers: int = 128) -> float:
    """HyperLogLog of `value_hashes` with `registers` registers, as the kernels compute it."""
    index_bits = registers.bit_length() - 1
    regs = [0] * registers
    for h in value_hashes:
        bits = h % 2**64
        index, rest = bits & (registers - 1), bits >> index_bits
        rank = 1
        while rank <= 64 - index_bits and not rest & 1:
            rest >>= 1
            rank += 1
        regs[index] = max(regs[index], rank)
    m = float(registers)
    estimate = (0.7213 / (1 + 1.079 / m)) * m * m / sum(2.0**-r for r in regs)
    zeros = regs.count(0)
    if estimate <= 2.5 * m and zeros:
        estimate = m * math.log(m / zeros)
    return estimate
