from pathlib import Path

import pytest
from rocksdict import Cache

from streamguard.state.dedup import MINUTE_MS, RecentIds
from streamguard.state.store import PartitionStore, StoreOptions, decode_changes, encode_changes


@pytest.fixture
def open_store(tmp_path: Path):
    cache = Cache(1 << 20)
    opened = []

    def factory() -> PartitionStore:
        store = PartitionStore(tmp_path / "shard-0", StoreOptions().to_options(cache))
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def test_pending_writes_are_read_back_before_they_are_applied(open_store):
    store = open_store()
    store.put(b"a", b"1")
    store.delete(b"b")
    assert store.get(b"a") == b"1"
    assert store.get(b"b") is None
    assert store.checkpoint is None


def test_applied_writes_survive_a_reopen_with_their_checkpoint(open_store):
    store = open_store()
    store.put(b"a", b"1")
    store.apply(store.take_changes(), 17)
    assert store.pending == {} and store.committing == {}
    store.close()
    again = open_store()
    assert again.get(b"a") == b"1"
    assert again.checkpoint == 17


def test_discarded_writes_are_gone(open_store):
    store = open_store()
    store.put(b"a", b"1")
    store.take_changes()
    store.put(b"b", b"2")
    store.discard_uncommitted()
    assert store.get(b"a") is None and store.get(b"b") is None
    assert store.items_from(b"a", b"z", 10) == ([], None)


def test_the_next_batch_reads_the_committing_transaction_over_rocksdb_and_its_own_writes_over_both(open_store):
    store = open_store()
    store.put(b"a", b"old")
    store.put(b"b", b"old")
    store.apply(store.take_changes(), 1)
    store.put(b"a", b"committing")
    store.delete(b"b")
    committing = store.take_changes()  # its transaction is on its way; the next batch is processed meanwhile
    assert store.get(b"a") == b"committing" and store.get(b"b") is None
    assert store.items_from(b"a", b"z", 10) == ([], None)  # a scan leaves out keys written but not applied
    store.put(b"a", b"next")
    assert store.get(b"a") == b"next"
    store.apply(committing, 2)
    assert store.committing == {} and store.get(b"b") is None and store.get(b"a") == b"next"
    assert store.items_from(b"a", b"z", 10) == ([], None)  # "a" has a pending write again
    store.apply(store.take_changes(), 3)
    assert store.get(b"a") == b"next" and store.checkpoint == 3


def test_changes_round_trip_through_the_changelog_encoding():
    changes = {b"a": b"1", b"b": None, b"\x00\xff": b""}
    (record,) = encode_changes(changes, 1_000_000)
    assert decode_changes(record) == changes


def test_big_changes_make_several_records_under_the_limit():
    changes = {b"k%05d" % i: b"v" * 1000 for i in range(3000)}
    records = encode_changes(changes, 100_000)
    assert len(records) > 1 and all(len(r) <= 100_000 for r in records)
    merged: dict = {}
    for record in records:
        merged.update(decode_changes(record))
    assert merged == changes


def test_a_repeated_id_is_a_duplicate(open_store):
    recent = RecentIds(open_store(), retention_ms=3_600_000)
    assert recent.add(b"id-1", 1_000_000)
    assert not recent.add(b"id-1", 1_000_000)
    assert recent.add(b"id-2", 1_000_000)


def test_ids_are_remembered_across_a_restart(open_store):
    store = open_store()
    RecentIds(store, 3_600_000).add(b"id-1", 5 * MINUTE_MS)
    store.apply(store.take_changes(), 1)
    store.close()
    assert not RecentIds(open_store(), 3_600_000).add(b"id-1", 5 * MINUTE_MS)


def test_ids_older_than_the_retention_are_forgotten_in_bounded_steps(open_store):
    store = open_store()
    recent = RecentIds(store, retention_ms=10 * MINUTE_MS)
    for i in range(30):
        recent.add(f"old-{i}".encode(), 100 * MINUTE_MS + i)
    recent.add(b"new", 200 * MINUTE_MS)
    store.apply(store.take_changes(), 1)
    assert recent.expire(limit=20) == 20
    store.apply(store.take_changes(), 2)
    assert recent.expire(limit=20) == 10
    store.apply(store.take_changes(), 3)
    assert recent.expire(limit=20) == 0
    assert recent.add(b"old-0", 100 * MINUTE_MS)  # forgotten
    assert not recent.add(b"new", 200 * MINUTE_MS)  # within the retention


def test_a_scan_leaves_out_a_key_whose_write_is_applied_while_it_runs(open_store):
    """The committer thread may apply (and clear) the committing writes between a scan's read and its check."""
    store = open_store()
    store.put(b"a", b"old")
    store.put(b"b", b"old")
    store.apply(store.take_changes(), 1)
    store.put(b"a", b"revived")
    committing = store.take_changes()
    db = store._db

    class ApplyingMidway:
        """RocksDB, but the committer thread finishes right after the scan has read "a"."""

        def __getattr__(self, name):
            return getattr(db, name)

        def items(self, **kwargs):
            for n, item in enumerate(db.items(**kwargs)):
                yield item
                if n == 0:
                    store._db = db
                    store.apply(committing, 2)

    store._db = ApplyingMidway()
    found, resume = store.items_from(b"a", b"z", 10)
    assert found == [(b"b", b"old")] and resume is None


def test_a_scan_says_where_to_go_on_from(open_store):
    store = open_store()
    for key in (b"a", b"b", b"c"):
        store.put(key, b"1")
    store.apply(store.take_changes(), 1)
    assert store.items_from(b"a", b"z", 2) == ([(b"a", b"1"), (b"b", b"1")], b"c")
    assert store.items_from(b"c", b"z", 2) == ([(b"c", b"1")], None)
