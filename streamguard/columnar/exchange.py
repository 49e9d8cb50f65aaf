"""Work between the workers that hold different shards, as columns: a record per shard a batch sends to.

An event is decided on its own shard (the shard of its id's hash), and its
entities are counted on theirs. Three kinds of work travel, each as columns:

- `forward`: input records whose event belongs to another worker's shard, as
  they were read (that worker validates them again, cheaply, and decides them);
- `apply`: events to count on the receiving shard, one row each: the event's
  ts, type, flags, numbers and hashes (its id's last), and a bit per hash
  column to count there (`want`; the device's bit also asks for the device ->
  fingerprint memory, which lives with the device);
- `values`: the answer to an `apply` row, to the event's shard: the feature
  values read (a bit per feature, and the values of those read), which bits
  were answered, which were passed on to a further shard (a fingerprint the
  device's shard resolved), and that fingerprint.

A record is at most `MAX_RECORD_BYTES` (a Kafka message): a bigger batch's
work for one shard is split in halves until it fits. It carries the layout's
fingerprint: a record from a worker of another layout (features, hash key,
packing) is refused, never mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from streamguard.codec import MAX_RECORD_BYTES
from streamguard.columnar.changes import LayoutMismatch
from streamguard.pipeline.records import Incoming


@dataclass
class Rows:
    """Apply rows: events to count on a shard."""

    ts: np.ndarray  # int64
    etype: np.ndarray  # int64
    flags: np.ndarray  # int64
    want: np.ndarray  # int64: bit per hash column
    numbers: np.ndarray  # float64[rows, number columns]
    hashes: np.ndarray  # uint64[rows, hash columns + event id]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(*(getattr(self, name)[rows] for name in _ROW_FIELDS))

    @staticmethod
    def concat(parts: list[Rows], numbers: int, hashes: int) -> Rows:
        parts = [part for part in parts if len(part)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            empty = np.empty(0, np.int64)
            return Rows(empty, empty, empty, empty, np.empty((0, numbers)), np.empty((0, hashes), np.uint64))
        return Rows(*(np.concatenate([getattr(p, name) for p in parts]) for name in _ROW_FIELDS))


@dataclass
class Answers:
    """Values rows: what an entity's shard read for events decided on another shard."""

    event: np.ndarray  # uint64: the event id's hash
    answered: np.ndarray  # int64: bits of `want` done there
    passed_on: np.ndarray  # int64: bits sent on to a further shard (they answer for them)
    fingerprint: np.ndarray  # uint64: the fingerprint the device's memory gave (ABSENT: none)
    values: np.ndarray  # float64[rows, features]: NaN where not read there

    def __len__(self) -> int:
        return int(self.event.shape[0])

    def take(self, rows: np.ndarray) -> Answers:
        return Answers(*(getattr(self, name)[rows] for name in _ANSWER_FIELDS))

    @staticmethod
    def concat(parts: list[Answers], features: int) -> Answers:
        parts = [part for part in parts if len(part)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Answers(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64),
                           np.empty(0, np.uint64), np.empty((0, features)))  # fmt: skip
        return Answers(*(np.concatenate([getattr(p, name) for p in parts]) for name in _ANSWER_FIELDS))


MASK = (1 << 64) - 1  # a layout fingerprint, shown unsigned
_ROW_FIELDS = ("ts", "etype", "flags", "want", "numbers", "hashes")
_ANSWER_FIELDS = ("event", "answered", "passed_on", "fingerprint", "values")


@dataclass
class Outbox:
    """What a batch sends to one shard."""

    forward: list[Incoming] = field(default_factory=list)
    apply: list[Rows] = field(default_factory=list)
    answers: list[Answers] = field(default_factory=list)


@dataclass
class Inbox:
    """What reached a shard, decoded."""

    forward: list[Incoming]
    apply: Rows
    answers: Answers


class _Wire(msgspec.Struct, array_like=True):
    layout: int
    forward: list[tuple[str, int, int, bytes | None, bytes | None]]
    rows: int
    apply: list[bytes]
    answers: int
    values: list[bytes]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def encode(outbox: Outbox, layout: int, numbers: int, hashes: int, features: int) -> list[bytes]:
    """The records of `outbox`: one, or halves of it until each is at most `MAX_RECORD_BYTES` (or holds one row)."""
    data = _encode_one(outbox, layout, numbers, hashes, features)
    if len(data) <= MAX_RECORD_BYTES:
        return [data]
    rows = Rows.concat(outbox.apply, numbers, hashes)
    answers = Answers.concat(outbox.answers, features)
    size = len(outbox.forward) + len(rows) + len(answers)
    if size <= 1:
        return [data]
    half = [np.arange(len(rows)) < len(rows) // 2, np.arange(len(answers)) < len(answers) // 2]
    first = Outbox(outbox.forward[: len(outbox.forward) // 2], [rows.take(half[0])], [answers.take(half[1])])
    second = Outbox(outbox.forward[len(outbox.forward) // 2 :], [rows.take(~half[0])], [answers.take(~half[1])])
    return [*encode(first, layout, numbers, hashes, features), *encode(second, layout, numbers, hashes, features)]


def _encode_one(outbox: Outbox, layout: int, numbers: int, hashes: int, features: int) -> bytes:
    rows = Rows.concat(outbox.apply, numbers, hashes)
    answers = Answers.concat(outbox.answers, features)
    wire = _Wire(
        layout,
        [(r.topic, r.partition, r.offset, r.key, r.value) for r in outbox.forward],
        len(rows),
        [np.ascontiguousarray(getattr(rows, name)).tobytes() for name in _ROW_FIELDS],
        len(answers),
        [np.ascontiguousarray(getattr(answers, name)).tobytes() for name in _ANSWER_FIELDS[:-1]]
        + _sparse(answers.values),
    )
    return _encoder.encode(wire)


def decode(data: bytes, layout: int, numbers: int, hashes: int, features: int) -> Inbox:
    """The work in a record; `LayoutMismatch` if it was written under another layout."""
    wire = _decoder.decode(data)
    if wire.layout != layout:
        raise LayoutMismatch(
            f"a shards record of layout {wire.layout & MASK:016x} reached a worker of layout {layout & MASK:016x}: "
            "every worker must run the same features, hash key and version"
        )
    n, m = wire.rows, wire.answers
    ts, etype, flags, want, num, hsh = wire.apply
    rows = Rows(
        np.frombuffer(ts, np.int64).copy(), np.frombuffer(etype, np.int64).copy(),
        np.frombuffer(flags, np.int64).copy(), np.frombuffer(want, np.int64).copy(),
        np.frombuffer(num, np.float64).reshape(n, numbers).copy(),
        np.frombuffer(hsh, np.uint64).reshape(n, hashes).copy(),
    )  # fmt: skip
    event, answered, passed_on, fingerprint, read, values = wire.values
    answers = Answers(
        np.frombuffer(event, np.uint64).copy(), np.frombuffer(answered, np.int64).copy(),
        np.frombuffer(passed_on, np.int64).copy(), np.frombuffer(fingerprint, np.uint64).copy(),
        _dense(read, values, m, features),
    )  # fmt: skip
    return Inbox([Incoming(*record) for record in wire.forward], rows, answers)


def _sparse(values: np.ndarray) -> list[bytes]:
    """An answer's values as a bit per feature read (packed) and the values read: a shard reads few of them."""
    read = ~np.isnan(values)
    return [np.packbits(read, axis=1).tobytes(), values[read].tobytes()]


def _dense(read: bytes, values: bytes, rows: int, features: int) -> np.ndarray:
    bits = np.frombuffer(read, np.uint8).reshape(rows, -1) if rows else np.zeros((0, 1), np.uint8)
    mask = np.unpackbits(bits, axis=1, count=features).astype(np.bool_)
    out = np.full((rows, features), np.nan)
    out[mask] = np.frombuffer(values, np.float64)
    return out
