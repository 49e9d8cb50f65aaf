"""The distinct entities in the traffic a worker saw: the denominator of state bytes per entity.

An entity is what a feature is counted per (`features/*.toml`): an IP, its
/24, a device, a fingerprint, an account, a phone, its number block, a card,
an invite or promo code, a merchant. The census reads them from the events
the way the declarations name them; a fingerprint counts once however many
device ids report it. The "global" entity is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamguard.features.spec import FeatureSpec

DEFAULT_BLOCK_DIGITS = 10


class EntityCensus:
    def __init__(self, features: Iterable[FeatureSpec]) -> None:
        features = list(features)
        self.kinds: list[str] = sorted({str(f.entity) for f in features} - {"global"})
        digits = [f.phone_block_digits for f in features if f.phone_block_digits is not None]
        self.block_digits = digits[0] if digits else DEFAULT_BLOCK_DIGITS
        self.seen: set[tuple[str, str]] = set()

    def observe(self, event: dict[str, Any]) -> int:
        """Note the entities of `event`; returns 1 (one verdict owed), to serve as `produce_all`'s `owed`."""
        for kind in self.kinds:
            value = self._value(kind, event)
            if value:
                self.seen.add((kind, value))
        return 1

    def _value(self, kind: str, event: dict[str, Any]) -> str | None:
        if kind == "ip_network":
            ip = event.get("ip")
            return ip.rsplit(".", 1)[0] if isinstance(ip, str) and "." in ip else ip
        if kind == "phone_block":
            phone = event.get("phone")
            return phone[: 1 + self.block_digits] if isinstance(phone, str) else None
        value = event.get(kind)
        return value if isinstance(value, str) else None

    def count(self) -> int:
        return len(self.seen)

    def by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys(self.kinds, 0)
        for kind, _ in self.seen:
            counts[kind] += 1
        return counts
