"""A feature declaration made executable: its filter, what it reads, and its window state."""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from streamguard.entities import ip_network, phone_block
from streamguard.events import AnyEvent
from streamguard.features.spec import FeatureSpec
from streamguard.features.windows import DistinctWindow, ExtremeWindow, SinceLastWindow, SumWindow, Window

# Each window type's `newest_ts_in`: the newest time a window's bytes hold, read in place.
_NEWEST_TS_IN: Final[dict[str, Callable[[bytes, int, int], int]]] = {
    "count": SumWindow.newest_ts_in, "sum": SumWindow.newest_ts_in,
    "min": ExtremeWindow.newest_ts_in, "max": ExtremeWindow.newest_ts_in,
    "distinct": DistinctWindow.newest_ts_in, "since_last": SinceLastWindow.newest_ts_in,
}  # fmt: skip
PREDICATE_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b,
}  # fmt: skip


def field_value(event: AnyEvent, name: str, fingerprint: str | None, block_digits: int | None) -> Any:
    """An event's field, or a derived one (ip_network, phone_block, fingerprint); None if absent."""
    if name == "fingerprint":
        return fingerprint
    if name == "ip_network":
        ip = getattr(event, "ip", None)
        return None if ip is None else ip_network(ip)
    if name == "phone_block":
        phone = getattr(event, "phone", None)
        return None if phone is None or block_digits is None else phone_block(phone, block_digits)
    return getattr(event, name, None)


@functools.lru_cache(maxsize=1 << 16, typed=True)  # an event's account or phone is counted by several entities
def value_hash(value: Any) -> int:
    """A signed 64-bit hash of a distinct value (never stored raw)."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class CompiledFeature:
    spec: FeatureSpec
    slots: int
    resolution_ms: int
    window_buckets: int
    lifetime_ms: int  # how long after its newest data a window can still matter: span plus lateness
    state_key: bytes  # the feature's namespace in state: its state_id

    @classmethod
    def of(cls, spec: FeatureSpec, lateness_ms: int) -> CompiledFeature:
        resolution = spec.resolution_ms
        return cls(spec, spec.slots(lateness_ms), resolution, spec.window_ms // resolution,
                   spec.window_ms + lateness_ms, bytes.fromhex(spec.state_id))  # fmt: skip

    def updates_on(self, event: AnyEvent, kind: str, fingerprint: str | None) -> bool:
        """Whether `event` counts in this feature (its type, its filter, the field it reads)."""
        if kind not in self.spec.events:
            return False
        for predicate in self.spec.where:
            actual = getattr(event, predicate.field, None)
            if actual is None or not PREDICATE_OPS[predicate.op](actual, predicate.value):
                return False
        return self.spec.field is None or self.reads(event, fingerprint) is not None

    def reads(self, event: AnyEvent, fingerprint: str | None) -> Any:
        if self.spec.field is None:
            return 1
        value = field_value(event, self.spec.field, fingerprint, self.spec.phone_block_digits)
        if value is None:
            return None
        return value_hash(value) if self.spec.aggregate == "distinct" else value

    def newest_ts(self, raw: bytes) -> int:
        """`window(raw).newest_ts()` without decoding the window: what a sweep needs of each one."""
        return _NEWEST_TS_IN[self.spec.aggregate](raw, self.slots, self.resolution_ms)

    def window(self, raw: bytes | None) -> Window:
        spec = self.spec
        resolution, buckets = self.resolution_ms, self.window_buckets
        if spec.aggregate in ("count", "sum"):
            return SumWindow.of(self.slots, resolution, buckets, raw)
        if spec.aggregate in ("min", "max"):
            return ExtremeWindow.of(self.slots, resolution, buckets, spec.aggregate == "max", raw)
        if spec.aggregate == "distinct":
            return DistinctWindow.of(self.slots, resolution, buckets, spec.distinct_cap, raw)
        return SinceLastWindow.of(raw)
