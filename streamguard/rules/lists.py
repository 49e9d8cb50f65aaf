"""Block and allow lists, fed by `control.lists`.

A record's key is `<list>:<entity>:<value>` (`block:ip:203.0.113.7`,
`allow:account:acct_42`, `block:network:203.0.113.0/24`); its value is empty
or a JSON object with an optional `ttl_s` (and any notes); a null value
removes the entry. Only keyed hashes of the values are kept, the same ones the
features use, so a list never holds a raw identifier.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Final

import msgspec

from streamguard.entities import LIST_KINDS, ip_network
from streamguard.errors import ConfigError
from streamguard.events import AnyEvent
from streamguard.features.compiled import field_value
from streamguard.privacy import Pseudonyms

# List entity -> the entity kind features and verdict details use.
LIST_ENTITIES: Final = LIST_KINDS
LISTS: Final = ("block", "allow")


class ListError(ConfigError):
    """A control.lists record that cannot be applied."""


class _Value(msgspec.Struct, frozen=True):
    ttl_s: int | None = None


@dataclass(frozen=True)
class Entry:
    list: str
    expires_at: float  # epoch ms; inf when it has no TTL


class Lists:
    def __init__(self, pseudonymizer: Pseudonyms) -> None:
        self._pseudo = pseudonymizer
        self._entries: dict[tuple[str, bytes], Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, key: bytes | None, value: bytes | None, record_ms: int) -> None:
        """Add, replace or (null value) remove the entry of one control.lists record."""
        name, eid, digest = self._parse_key(key)
        if value is None:
            self._entries.pop((eid, digest), None)
            return
        try:
            ttl = msgspec.json.decode(value, type=_Value).ttl_s if value.strip() else None
        except msgspec.MsgspecError as exc:
            raise ListError(f"value of {name}:{eid}: {exc}") from None
        if ttl is not None and ttl <= 0:
            raise ListError(f"value of {name}:{eid}: `$.ttl_s` must be positive")
        self._entries[(eid, digest)] = Entry(name, math.inf if ttl is None else record_ms + ttl * 1000)

    def lookup(self, entities: dict[str, bytes], now_ms: int) -> tuple[list[str], frozenset[str]]:
        """The blocked and the allowed entity ids among `entities` (unexpired entries only)."""
        blocked, allowed = [], set()
        for eid, digest in entities.items():
            entry = self._entries.get((eid, digest))
            if entry is None or entry.expires_at <= now_ms:
                continue
            if entry.list == "block":
                blocked.append(eid)
            else:
                allowed.add(eid)
        return blocked, frozenset(allowed)

    def expire(self, now_ms: int) -> None:
        for slot in [slot for slot, entry in self._entries.items() if entry.expires_at <= now_ms]:
            del self._entries[slot]

    def _parse_key(self, key: bytes | None) -> tuple[str, str, bytes]:
        parts = (key or b"").decode(errors="replace").split(":", 2)
        if len(parts) != 3 or parts[0] not in LISTS or parts[1] not in LIST_ENTITIES or not parts[2]:
            raise ListError(
                f"key must be <list>:<entity>:<value> with list one of {list(LISTS)} "
                f"and entity one of {list(LIST_ENTITIES)}"
            )
        name, entity, value = parts
        eid = LIST_ENTITIES[entity]
        return name, eid, self._pseudo.digest(eid, self._normalise(eid, value))

    def _normalise(self, eid: str, value: str) -> str:
        if eid == "ip_network":
            return _network(value)
        if eid == "fingerprint":  # as the features know it: the pseudonym a device report gets
            return self._pseudo.reported_fingerprint(value)
        return value


def _network(value: str) -> str:
    """The network entity of `value`: an IPv4 /24 or an IPv6 /64, given as an address or that network."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ListError(f"{value!r} is not an IP network") from None
    size = 24 if network.version == 4 else 64
    if "/" in value and network.prefixlen != size:
        raise ListError(f"networks are /24 (IPv4) or /64 (IPv6), not /{network.prefixlen}")
    return ip_network(str(network.network_address))


def list_entities(event: AnyEvent, known: dict[str, bytes], pseudo: Pseudonyms) -> dict[str, bytes]:
    """The keyed hashes of `event`'s list entities: those features already hashed, and the rest."""
    found = {}
    for eid in LIST_ENTITIES.values():
        if eid in known:
            found[eid] = known[eid]
        elif eid != "fingerprint":
            value = field_value(event, eid, None, None)
            if value is not None:
                found[eid] = pseudo.digest(eid, str(value))
    return found
