"""The re-sharded state on local disk: one RocksDB of what each new shard's changelog partition is to hold.

The item engine's changelog is replayed into it key by key, each key under
its new shard (`add`, then `chunks`); the columnar engine's state is staged
as the records each new shard's partition gets (`put_records`, `records`,
made by `reshard.columnar`).

Between the moment `run` deletes the old changelog and the moment the new one
is written, this is the only copy of the app's state: it stays on disk until
the end, and its manifest, written once the replay is complete, lets a rerun
resume from it. Each key is stored behind its new shard's number, so a
shard's keys are one range, read in order.

A shard's own state, of no event or entity (the newest event time its ids
expire behind, `keys.DEDUP_WATERMARK`), goes to every new shard with the
lowest value an old shard had: so no remembered id expires earlier than it
would have.

Nothing here knows Kafka.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec
from rocksdict import Options, Rdict, ReadOptions, WriteBatch

from streamguard.codec import shard_of
from streamguard.state import keys
from streamguard.state.store import Changes

MANIFEST: Final = "manifest.json"
_SHARD = 2  # bytes of the new shard number in front of each key
_OWN = b"\xff\xff"  # in front of an old shard's own state, behind its number
SHARD_STATE: Final = frozenset({keys.DEDUP_WATERMARK})


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a complete staging holds: the app's state at `from_shards`, re-partitioned to `to_shards`."""

    from_shards: int
    to_shards: int
    identity: str | None  # the cluster's identity record before re-sharding (JSON), if it had one
    records: int  # changelog records replayed
    keys: int  # state keys staged (the item engine's), or entities (the columnar engine's)
    engine: str = "item"  # whose state: how the staging is written back


class Staging:
    """One RocksDB of keys by new shard; `add` changes in changelog order, then read each shard's `chunks`."""

    def __init__(self, directory: Path, shards: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.shards = shards
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(directory / "state"), options)

    def add(self, changes: Changes, old_shard: int) -> None:
        """Changes of one changelog record of `old_shard`, in order; ValueError for a key of no shard."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if key in SHARD_STATE:
                staged = _OWN + _prefix(old_shard) + key
            else:
                staged = _prefix(shard_of(keys.owner_digest(key), self.shards)) + key
            if value is None:
                batch.delete(staged)
            else:
                batch.put(staged, value)
        self._db.write(batch)

    def chunks(self, shard: int, max_keys: int) -> Iterator[Changes]:
        """The staged state of new `shard`, at most `max_keys` keys at a time (the shard's own state last)."""
        chunk: Changes = {}
        for staged, value in self._range(_prefix(shard), _prefix(shard + 1)):
            chunk[staged[_SHARD:]] = value
            if len(chunk) >= max_keys:
                yield chunk
                chunk = {}
        chunk.update(self._lowest_shard_state())
        if chunk:
            yield chunk

    def put_records(self, shard: int, records: list[bytes]) -> None:
        """New `shard`'s changelog records as they are to be written, in order (the columnar engine's state)."""
        batch = WriteBatch(raw_mode=True)
        for i, record in enumerate(records):
            batch.put(_prefix(shard) + i.to_bytes(4, "big"), record)
        self._db.write(batch)

    def records(self, shard: int) -> Iterator[bytes]:
        """What `put_records` staged for `shard`, in order."""
        for _, value in self._range(_prefix(shard), _prefix(shard + 1)):
            yield value

    def _lowest_shard_state(self) -> Changes:
        """Each key of the old shards' own state, with its lowest value among them (all are u64 times)."""
        lowest: Changes = {}
        for staged, value in self._range(_OWN, _OWN + b"\xff" * _SHARD):
            key = staged[len(_OWN) + _SHARD :]
            held = lowest.get(key)
            lowest[key] = value if held is None else min(held, value)
        return lowest

    def _range(self, lower: bytes, upper: bytes) -> Iterator[tuple[bytes, bytes]]:
        opts = ReadOptions()
        opts.set_iterate_upper_bound(upper)
        for staged, value in self._db.items(from_key=lower, read_opt=opts):
            assert isinstance(staged, bytes) and isinstance(value, bytes)  # raw mode
            yield staged, value

    def write_manifest(self, manifest: Manifest) -> None:
        written = self.directory / (MANIFEST + ".new")
        written.write_bytes(msgspec.json.encode(manifest))
        written.replace(self.directory / MANIFEST)  # atomic: a staging has a manifest only once complete

    def close(self) -> None:
        self._db.close()


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of a complete staging in `directory`, or None (none, or not complete)."""
    try:
        return msgspec.json.decode((directory / MANIFEST).read_bytes(), type=Manifest)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _prefix(shard: int) -> bytes:
    return shard.to_bytes(_SHARD, "big")
