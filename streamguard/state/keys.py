"""The one place that encodes state keys.

Every key starts with a one-byte namespace so that kinds of state never
collide and each kind can be scanned as a range. Identifiers only ever enter a
key as their keyed hash (see `privacy`), never raw.
"""

from __future__ import annotations

import struct
from typing import Final

CHECKPOINT: Final = b"\x00changelog-offset"
DEDUP: Final = b"\x01"
DEDUP_BY_TIME: Final = b"\x02"

_U64: Final = struct.Struct(">Q")


def dedup(digest: bytes) -> bytes:
    return DEDUP + digest


# The newest event time a shard has seen (its ids expire behind it): state of the shard, of no event or entity.
DEDUP_WATERMARK: Final = DEDUP_BY_TIME + b"\xff" * 9  # sorts after every time-index key


def dedup_by_time(minute: int, digest: bytes) -> bytes:
    """Ordered by event-time minute, so expiry is a range scan from the start."""
    return DEDUP_BY_TIME + _U64.pack(minute) + digest


def dedup_by_time_upper(minute: int) -> bytes:
    """The first time-index key at `minute` (exclusive bound for older entries)."""
    return DEDUP_BY_TIME + _U64.pack(minute)


def digest_of_dedup_by_time(key: bytes) -> bytes:
    return key[1 + _U64.size :]


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(raw: bytes) -> int:
    value: int = _U64.unpack(raw)[0]
    return value


FEATURE: Final = b"\x03"
FEATURE_END: Final = b"\x04"  # the first key after every entity's windows


def entity_windows(entity_digest: bytes) -> bytes:
    """One entity's windows, all its features in one record (the keyed hash is namespaced by entity kind)."""
    return FEATURE + entity_digest


PENDING: Final = b"\x04"
DEVICE_FINGERPRINT: Final = b"\x05"
DEVICE_FINGERPRINT_END: Final = b"\x06"


def pending(event_digest: bytes) -> bytes:
    """An event waiting on its shard for its entities' feature values."""
    return PENDING + event_digest


def device_fingerprint(device_digest: bytes) -> bytes:
    """The fingerprint last reported for a device, kept on the device's shard."""
    return DEVICE_FINGERPRINT + device_digest


def owner_digest(key: bytes) -> bytes:
    """The keyed hash a state key belongs to: the shard of this hash holds the key (`codec.shard_of`).

    An event's ids, its time-index entry and its parked copy are on the shard
    of its event_id's hash; an entity's windows and a device's fingerprint link
    on the shard of the entity's hash. A key of another namespace raises
    ValueError: it is not state of one event or entity (`DEDUP_WATERMARK` is the shard's own).
    """
    namespace = key[:1]
    if key == DEDUP_WATERMARK:
        raise ValueError("the dedup watermark is the shard's own state, of no event or entity")
    if namespace == DEDUP_BY_TIME and len(key) > 1 + _U64.size:
        return digest_of_dedup_by_time(key)
    if namespace in (DEDUP, FEATURE, PENDING, DEVICE_FINGERPRINT) and len(key) > 1:
        return key[1:]
    raise ValueError(f"a state key of no shard: {key[:16].hex()}")
