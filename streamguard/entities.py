"""Every kind of entity features are counted per: where its value comes from, and what lists call it.

An entity kind is an event field (`ip`, `account_id`...), a value derived from
one (`ip_network` from `ip`, `phone_block/<digits>` from `phone`), the device
`fingerprint` (reported by device events, remembered per device for the
others), or `global` (one entity for all events). Its name is also the
namespace of its keyed hash (`hashing.column_keys`) and the `kind` of the
pseudonym a verdict's reason shows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

# The event field each kind is read from (the fingerprint is learnt from device events' reports).
SOURCE_FIELD: Final[dict[str, str | None]] = {
    "ip": "ip", "ip_network": "ip", "device_id": "device_id", "fingerprint": "device_id",
    "account_id": "account_id", "phone": "phone", "phone_block": "phone", "instrument_id": "instrument_id",
    "invite_code": "invite_code", "promo_code": "promo_code", "merchant_id": "merchant_id", "global": None,
}  # fmt: skip
# Fields computed from an event rather than sent in it.
DERIVED: Final[dict[str, str]] = {"ip_network": "ip", "phone_block": "phone", "fingerprint": "device_id"}
# Block/allow list entity names (`block:network:...`) -> the kind they name.
LIST_KINDS: Final[dict[str, str]] = {
    "ip": "ip", "network": "ip_network", "device": "device_id", "fingerprint": "fingerprint",
    "account": "account_id", "phone": "phone", "instrument": "instrument_id",
}  # fmt: skip
GLOBAL: Final = "global"


def ip_network(ip: str) -> str:
    """The /24 of an IPv4 address or the /64 of an IPv6 one."""
    if ":" in ip:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return ip.rsplit(".", 1)[0] + ".0/24"  # the codec accepted it as IPv4: four decimal octets


def phone_block(phone: str, digits: int) -> str:
    """The first `digits` digits of an E.164 number: consecutive numbers share it."""
    return phone[1 : 1 + digits]


def kind_name(field: str, phone_block_digits: int | None) -> str:
    """The kind an entity or field names; phone blocks of different lengths are different kinds."""
    return f"phone_block/{phone_block_digits}" if field == "phone_block" else field


@dataclass(frozen=True)
class EntityKind:
    """One kind, by its name (`ip`, `phone_block/10`...)."""

    name: str

    @property
    def base(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def block_digits(self) -> int | None:
        return int(self.name.split("/", 1)[1]) if "/" in self.name else None

    @property
    def source(self) -> str | None:
        """The event field its value comes from (None for `global`)."""
        return SOURCE_FIELD.get(self.base, self.base) if self.base != "fingerprint" else "fingerprint"

    def derive(self, raw: str) -> str:
        """Its value from its source field's (as text)."""
        base = self.base
        if base == "ip_network":
            return ip_network(raw)
        if base == "phone_block":
            return phone_block(raw, self.block_digits or 0)
        return raw

    def value(self, event: Any) -> str | None:
        """The event's value of this kind, as text; None if it has none (a fingerprint not reported in it)."""
        if self.base == GLOBAL:
            return GLOBAL
        raw = getattr(event, self.source or "", None)
        return None if raw is None else self.derive(str(raw))

    def values(self, events: list[Any], sources: dict[str, list[Any]]) -> list[str | None]:
        """`value` of each event; `sources` caches each source field's column across kinds."""
        if self.base == GLOBAL:
            return [GLOBAL] * len(events)
        field = self.source or ""
        raw = sources.get(field)
        if raw is None:
            raw = sources[field] = [getattr(e, field, None) for e in events]
            if any(not isinstance(v, str) for v in raw if v is not None):  # a number or a flag, as text
                raw = sources[field] = [v if v is None else str(v) for v in raw]
        if self.base in DERIVED and self.base != "fingerprint":
            derive = self.derive
            return [None if v is None else derive(v) for v in raw]
        return raw
