"""Plain-Python twins of the numba kernels, written for clarity, not speed.

Each keeps every event it accepted and answers queries by brute force; the
property tests check that the kernels give the same answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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

    def newest_ts(self) -> int:
        """The last ms of the newest bucket still held (-1: none)."""
        live = self.live()
        return max(b for b, _ in live) * self.resolution + self.resolution - 1 if live else -1

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


def naive_feature(spec: Any, history: list[Any], event: Any, fingerprint_of: dict[str, str] | None = None) -> Any:
    """A feature's value for `event` by brute force over `history` (the events that count before it).

    `fingerprint_of` maps device ids to the fingerprint their reports gave.
    Returns None where the kernels give NaN (an empty min/max, no earlier event).
    """
    from streamguard.features.compiled import ip_network, phone_block

    fingerprint_of = fingerprint_of or {}

    def derived(e: Any, name: str) -> Any:
        if name == "ip_network":
            return ip_network(e.ip) if getattr(e, "ip", None) else None
        if name == "phone_block":
            return phone_block(e.phone, spec.phone_block_digits) if getattr(e, "phone", None) else None
        if name == "fingerprint":
            return fingerprint_of.get(getattr(e, "device_id", None) or "")
        if name == "global":
            return "global"
        return getattr(e, name, None)

    ops = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
           ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "in": lambda a, b: a in b}  # fmt: skip

    def counts(e: Any) -> bool:
        return (
            type(e).__struct_config__.tag in spec.events
            and all(getattr(e, p.field, None) is not None and ops[p.op](getattr(e, p.field), p.value)
                    for p in spec.where)
            and (spec.field is None or derived(e, spec.field) is not None)
            and derived(e, spec.entity) == derived(event, spec.entity)
        )  # fmt: skip

    members = [e for e in history if counts(e)]
    if spec.aggregate == "since_last":
        earlier = [e.ts for e in members]
        return (event.ts - max(earlier)) / 1000 if earlier else None
    newest = event.ts // spec.resolution_ms
    oldest = newest - spec.window_ms // spec.resolution_ms + 1
    in_window = [e for e in members if oldest <= e.ts // spec.resolution_ms <= newest]
    if spec.aggregate == "count":
        return float(len(in_window))
    if spec.aggregate == "distinct":
        return float(len({derived(e, spec.field) for e in in_window}))
    values = [float(derived(e, spec.field)) for e in in_window]
    if spec.aggregate == "sum":
        return sum(values)
    if not values:
        return None
    return max(values) if spec.aggregate == "max" else min(values)


# --- rule checks (streamguard.kernels.checks) ---------------------------------------

NAIVE_OPS = {
    0: lambda x, t: x >= t,
    1: lambda x, t: x > t,
    2: lambda x, t: x <= t,
    3: lambda x, t: x < t,
    4: lambda x, t: x == t,
    5: lambda x, t: x != t and not math.isnan(x),
}


def naive_rules(
    values: list[float], conditions: list[list[tuple[int, int, int, float]]]
) -> tuple[list[list[float]], list[bool]]:
    """Per rule, its conditions (numerator, denominator or -1, op, threshold): observed inputs, and whether it fired."""
    observed, fired = [], []
    for rule in conditions:
        seen = []
        for num, den, _, _ in rule:
            x = values[num]
            if den >= 0:
                x = x / values[den] if values[den] > 0 else math.nan
            seen.append(x)
        observed.append(seen)
        fired.append(all(NAIVE_OPS[c[2]](x, c[3]) for x, c in zip(seen, rule, strict=True)))
    return observed, fired


def naive_combine(scores: list[int]) -> int:
    """Noisy-or of scores out of 1000."""
    clean = 1.0
    for s in scores:
        clean *= 1 - min(max(s, 0), 1000) / 1000
    return round(1000 * (1 - clean))
