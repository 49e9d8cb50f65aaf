"""JSON in and out: events are decoded and validated here, verdicts encoded.

`decode_event` is the single gate between raw Kafka bytes and the rest of
streamguard: it either returns a valid event or raises `InvalidEvent` with the
dead-letter code and a detail that names the JSON path.
"""

from __future__ import annotations

import socket
from typing import Final, NoReturn

import msgspec

from streamguard.errors import InvalidEvent
from streamguard.events import EVENT_TYPES, AnyEvent, ErrorCode, Verdict

MAX_EVENT_BYTES: Final = 64 * 1024
MAX_FUTURE_MS: Final = 5 * 60 * 1000
# Internal records (shards, changelog) stay under the broker's default max.message.bytes (1 MiB).
MAX_RECORD_BYTES: Final = 900_000

_decoder: Final = msgspec.json.Decoder(AnyEvent)


class _TypeOnly(msgspec.Struct):
    type: object = None


_type_decoder: Final = msgspec.json.Decoder(_TypeOnly)
_verdict_encoder: Final = msgspec.json.Encoder()


def decode_event(raw: bytes | None, topic_type: str, now_ms: int) -> AnyEvent:
    """The event in `raw`, which arrived on the topic of `topic_type`, or raise InvalidEvent."""
    if raw is None:
        raise InvalidEvent(ErrorCode.INVALID_JSON, "the message has no value (tombstone)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(ErrorCode.TOO_LARGE, f"{len(raw)} bytes; at most {MAX_EVENT_BYTES} are accepted")
    try:
        event: AnyEvent = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        _check_type(raw, topic_type)  # another type's event is a mismatch, whatever else is wrong
        raise InvalidEvent(ErrorCode.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(ErrorCode.INVALID_JSON, str(exc)) from None
    except RecursionError:  # no event nests at all; msgspec gives up past about a thousand levels
        raise InvalidEvent(ErrorCode.SCHEMA, "the JSON is nested too deeply for an event") from None
    if event_type(event) != topic_type:
        _mismatch(event_type(event), topic_type)
    _check_ts(event.ts, now_ms)
    _check_ip(event)
    return event


def _check_type(raw: bytes, topic_type: str) -> None:
    try:
        kind = _type_decoder.decode(raw).type
    except (msgspec.MsgspecError, RecursionError):
        return
    if kind in EVENT_TYPES and kind != topic_type:
        _mismatch(str(kind), topic_type)


def _mismatch(kind: str, topic_type: str) -> NoReturn:
    raise InvalidEvent(ErrorCode.TYPE_MISMATCH, f"`$.type` is {kind!r} on the {topic_type!r} topic")


def _check_ts(ts: int, now_ms: int) -> None:
    if ts <= 0:
        raise InvalidEvent(ErrorCode.TS_OUT_OF_RANGE, f"`$.ts` is {ts}; it must be positive epoch milliseconds")
    if ts > now_ms + MAX_FUTURE_MS:
        ahead_s = (ts - now_ms) / 1000
        raise InvalidEvent(ErrorCode.TS_OUT_OF_RANGE, f"`$.ts` is {ahead_s:.0f} s ahead of the processor's clock")


def _check_ip(event: AnyEvent) -> None:
    ip = getattr(event, "ip", None)
    if ip is None:
        return
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        socket.inet_pton(family, ip)
    except (OSError, ValueError):
        raise InvalidEvent(ErrorCode.SCHEMA, "`$.ip` is not an IPv4 or IPv6 address") from None


def event_type(event: AnyEvent) -> str:
    """The `type` tag of a decoded event."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def encode_verdict(verdict: Verdict) -> bytes:
    return _verdict_encoder.encode(verdict)


# --- internal records -----------------------------------------------------------
# A shard record carries many items (one Kafka record per item would cost more
# in Kafka than the whole decision). Each item is work for the shard it hashes
# to: deciding an event, counting it in one entity's features, or bringing an
# entity's feature values back to the event's shard.


class DecideItem(msgspec.Struct, frozen=True, tag="d", array_like=True, gc=False):
    """Decide `event` on the shard of its id: de-duplicate, then fan out to its entities."""

    digest: bytes  # keyed hash of the event_id
    event: AnyEvent
    # Where it was read (the topic is its type's input topic): what a dead letter of the event names.
    partition: int = -1
    offset: int = -1


class ApplyItem(msgspec.Struct, frozen=True, tag="a", array_like=True, gc=False):
    """Count `event` in the features of one of its entities, on that entity's shard."""

    digest: bytes
    entity: str
    entity_digest: bytes
    event: AnyEvent
    fingerprint: str | None = None  # pseudonymised; None: not known to the sender
    resolve_fingerprint: bool = False  # on a device_id item: look the device's fingerprint up and go on to it


class MergeItem(msgspec.Struct, frozen=True, tag="m", array_like=True, gc=False):
    """One entity's feature values for an event, back on the event's shard; or that counting it there failed."""

    digest: bytes
    entity: str
    values: dict[str, float]
    entity_digest: bytes = b""  # the entity's keyed hash, for verdict details and list lookups
    failed: str = ""  # the exception (type and message) counting the event raised: it goes to the dead letters


class ProgressItem(msgspec.Struct, frozen=True, tag="p", array_like=True, gc=False):
    """How far in event time `sender` has read its inputs: its peers keep within a span of it."""

    sender: str
    ts: int


ShardItem = DecideItem | ApplyItem | MergeItem
RecordItem = ShardItem | ProgressItem  # what a shards-topic record carries
_shard_encoder: Final = msgspec.msgpack.Encoder()
_shard_decoder: Final = msgspec.msgpack.Decoder(list[RecordItem])


def encode_shard(items: list[RecordItem]) -> bytes:
    return _shard_encoder.encode(items)


def decode_shard(raw: bytes) -> list[RecordItem]:
    return _shard_decoder.decode(raw)


def shard_of(digest: bytes, shards: int) -> int:
    """The shard a keyed hash (of an event id or an entity) belongs to."""
    return int.from_bytes(digest[:4], "big") % shards
