"""A RocksDB store for one internal partition, written once per transaction.

Writes are buffered in `pending` while a batch is processed, then taken
(`take_changes`) and sent to the changelog topic inside the batch's
transaction. Only after the transaction commits are they applied to RocksDB
(`apply`), together with the changelog offset they came from, written last.
So local state never holds an aborted write, and after a crash the store
catches up by replaying the changelog from its checkpoint (`restore`).

While a transaction commits (on another thread), the next batch is already
processed: reads see its own writes (`pending`), then the committing
transaction's (`committing`), then RocksDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict, ReadOptions, WriteBatch

from streamguard.state import keys

Changes = dict[bytes, bytes | None]
APPLY_BATCH = 5000  # keys per RocksDB write: a few ms each, so other threads get the GIL between them
EMPTY_CHANGES: Final = b"\x90"  # a msgpack empty list: what a changelog record without a value stands for

_changes_encoder: Final = msgspec.msgpack.Encoder()
_changes_decoder: Final = msgspec.msgpack.Decoder(list[tuple[bytes, bytes | None]])


@dataclass(frozen=True)
class StoreOptions:
    """RocksDB sizing, capped for a small machine; shared by all partitions of a worker."""

    block_cache_bytes: int = 32 << 20
    write_buffer_bytes: int = 8 << 20
    max_write_buffers: int = 2
    max_open_files: int = 256

    def to_options(self, cache: Cache) -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_bytes)
        opts.set_max_write_buffer_number(self.max_write_buffers)
        opts.set_max_open_files(self.max_open_files)
        # Most reads are for entities never seen (84% in the scenario at scale 5): a bloom
        # filter on the memtables answers those without searching them (3.1 -> 2.4 µs a read).
        opts.set_memtable_prefix_bloom_ratio(0.1)
        opts.set_memtable_whole_key_filtering(True)
        table = BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        return opts


def encode_changes(changes: Changes, max_bytes: int) -> list[bytes]:
    """`changes` as changelog records of at most about `max_bytes` each (a big batch makes several)."""
    records: list[bytes] = []
    chunk: list[tuple[bytes, bytes | None]] = []
    size = 0
    for key, value in changes.items():
        entry = len(key) + (len(value) if value is not None else 0) + 8
        if chunk and size + entry > max_bytes:
            records.append(_changes_encoder.encode(chunk))
            chunk, size = [], 0
        chunk.append((key, value))
        size += entry
    records.append(_changes_encoder.encode(chunk))
    return records


def decode_changes(raw: bytes) -> Changes:
    return dict(_changes_decoder.decode(raw))


class PartitionStore:
    """State of one internal partition: reads see pending and committing writes; RocksDB sees committed ones."""

    def __init__(self, path: Path, options: Options) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), options, access_type=AccessType.read_write())
        self.pending: Changes = {}
        self.committing: Changes = {}  # taken by the transaction being committed, until applied
        self._closed = False

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        committing = self.committing  # swapped for {} by `apply` on the committing thread
        if key in committing:
            return committing[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value

    def delete(self, key: bytes) -> None:
        self.pending[key] = None

    def keys_below(self, lower: bytes, upper: bytes, limit: int) -> Iterator[bytes]:
        """Committed keys in [lower, upper), at most `limit`; pending writes are not seen."""
        opts = ReadOptions()
        opts.set_iterate_upper_bound(upper)
        for n, key in enumerate(self._db.keys(from_key=lower, read_opt=opts)):
            if n >= limit:
                return
            assert isinstance(key, bytes)  # raw mode
            yield key

    def items_from(self, lower: bytes, upper: bytes, limit: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Committed (key, value) pairs from `lower` up to `upper` (exclusive), scanning at most `limit` keys.

        Also where to scan on from (None: `upper` was reached). Keys with a
        write RocksDB may not hold yet are left out: their scanned value may be
        stale, and a sweep must not judge an entity by it. The committing
        writes are taken before the scan: the committer thread replaces them
        with `{}` once applied, so a check made after the scan would miss a
        write applied while it ran.
        """
        committing, pending = self.committing, self.pending
        opts = ReadOptions()
        opts.set_iterate_upper_bound(upper)
        found: list[tuple[bytes, bytes]] = []
        for scanned, (key, value) in enumerate(self._db.items(from_key=lower, read_opt=opts)):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if scanned == limit:
                return found, key
            if key not in committing and key not in pending:
                found.append((key, value))
        return found, None

    def take_changes(self) -> Changes:
        """The pending writes, for a transaction; they stay readable (as `committing`) until `apply` or `discard`.

        The previous transaction's changes must have been applied (or discarded).
        """
        assert not self.committing, "the previous transaction's changes are not applied yet"
        self.committing, self.pending = self.pending, {}
        return self.committing

    def apply(self, changes: Changes, changelog_offset: int) -> None:
        """Make `changes` durable locally, with the changelog offset that holds them (written last).

        RocksDB writes hold the GIL (150,000 keys: 270 ms without a thread
        switch), so a big transaction is written in batches of `APPLY_BATCH`
        keys. A crash between them leaves the checkpoint at the previous
        offset: the restore replays these changes, which hold values, not
        increments, so applying them twice is the same as once.
        """
        items = list(changes.items())
        for start in range(0, len(items), APPLY_BATCH):
            self._write(items[start : start + APPLY_BATCH])
        self._write([(keys.CHECKPOINT, keys.encode_u64(changelog_offset))])
        if changes is self.committing:
            self.committing = {}

    def replay(self, record: bytes | None, changelog_offset: int) -> int:
        """Apply a changelog record (`encode_changes`; None: no changes) read at `changelog_offset`; its keys."""
        changes = decode_changes(record or EMPTY_CHANGES)
        self.apply(changes, changelog_offset)
        return len(changes)

    def _write(self, items: list[tuple[bytes, bytes | None]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch)

    def discard_uncommitted(self) -> None:
        """Forget the pending and committing writes (their transaction aborted)."""
        self.pending, self.committing = {}, {}

    @property
    def checkpoint(self) -> int | None:
        """The last changelog offset applied here, or None for a new store."""
        raw = self._db.get(keys.CHECKPOINT)
        return None if raw is None else keys.decode_u64(raw)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()

    def clear(self) -> None:
        """Delete everything, the checkpoint included, as if new (when its changelog no longer reaches it)."""
        self.pending, self.committing = {}, {}
        last = next(iter(self._db.keys(backwards=True)), None)
        if last is not None:
            assert isinstance(last, bytes)  # raw mode
            self._db.delete_range(b"", last)
            self._db.delete(last)
            self._db.compact_range(None, None)  # give the space back now: a wipe is rare, and may be of a lot
