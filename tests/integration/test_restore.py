"""Restores from a changelog that no longer reaches the stores' checkpoints, against the real broker.

`delete_records` moves a partition's log start forward, exactly what retention
does to the oldest segments while a worker is away.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from rocksdict import Cache

from streamguard.pipeline import restore
from streamguard.pipeline.restore import Restore, restore_shards
from streamguard.settings import Settings
from streamguard.state import keys
from streamguard.state.store import PartitionStore, StoreOptions, encode_changes
from tests.integration.harness import Stack, make_events

pytestmark = pytest.mark.integration

SHARDS = 6
LIFETIMES = {"feature windows": 24 * 3_600_000 + 300_000}


def _changelog(stack: Stack) -> str:
    return stack.topic(f"{stack.app_id}.state-changelog")


def _bounds(stack: Stack, topic: str, partitions: range | list[int]) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": stack.broker.bootstrap, "group.id": "bounds"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
    finally:
        consumer.close()


def _delete_up_to(stack: Stack, topic: str, offsets: dict[int, int]) -> None:
    """Delete every record before `offsets` (partition -> offset), as retention would."""
    admin = AdminClient({"bootstrap.servers": stack.broker.bootstrap})
    wanted = [TopicPartition(topic, p, o) for p, o in offsets.items() if o > 0]
    for future in admin.delete_records(wanted, request_timeout=30).values() if wanted else []:
        future.result()


def _delete_all(stack: Stack, topic: str) -> None:
    _delete_up_to(stack, topic, {p: high for p, (_, high) in _bounds(stack, topic, range(SHARDS)).items()})


# --- the restore itself --------------------------------------------------------------


def _write(stack: Stack, topic: str, transactions: range, partitions: list[int], keys_each: int) -> dict[int, int]:
    """One transaction per number in `transactions`, one changes record per partition; each txn's first offsets."""
    producer = Producer({"bootstrap.servers": stack.broker.bootstrap, "transactional.id": stack.topic("writer")})
    producer.init_transactions(30)
    firsts: dict[int, dict[int, int]] = {}
    for t in transactions:
        producer.begin_transaction()
        for p in partitions:
            changes = {f"p{p}-t{t}-{i:05d}".encode(): b"v" * 40 for i in range(keys_each)}
            (record,) = encode_changes(changes, 1 << 20)

            def delivered(err, msg, t=t):
                firsts.setdefault(t, {})[msg.partition()] = msg.offset()

            producer.produce(topic, record, partition=p, on_delivery=delivered)
        producer.commit_transaction(30)
    producer.flush(30)
    return {p: firsts[transactions[-1]][p] for p in partitions}


def _open(tmp_path: Path, shard: int, cache: Cache) -> PartitionStore:
    return PartitionStore(tmp_path / "stores" / f"shard-{shard}", StoreOptions().to_options(cache))


def _restore(stack: Stack, stores: dict[int, PartitionStore]) -> restore.RestoreReport:
    settings = Settings(bootstrap=stack.broker.bootstrap, app_id=stack.topic("restore"))
    return restore_shards(settings, _changelog(stack), stores, LIFETIMES)


def _keys(store: PartitionStore, prefix: str) -> int:
    return sum(1 for _ in store.keys_below(prefix.encode(), prefix.encode() + b"\xff", 1 << 30))


def test_a_restore_rebuilds_a_store_the_log_no_longer_reaches_and_notices_records_deleted_under_it(
    stack: Stack, tmp_path: Path, caplog, monkeypatch
):
    topic, cache = _changelog(stack), Cache(8 << 20)
    _write(stack, topic, range(10), [0, 1], keys_each=2000)
    stores = {s: _open(tmp_path, s, cache) for s in (0, 1)}
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = _restore(stack, stores)
    assert report.records == {0: 10, 1: 10} and report.keys == {0: 20_000, 1: 20_000} and report.problems == []
    print(f"restore rate: {report.records_per_s:.0f} records/s, {report.keys_per_s:.0f} keys/s")

    # Shard 0's worker is away while two more transactions are written and then deleted by "retention".
    checkpoint = stores[0].checkpoint
    last = _write(stack, topic, range(10, 13), [0, 1], keys_each=100)
    _delete_up_to(stack, topic, {0: last[0]})
    caplog.clear()
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = _restore(stack, stores)
    assert report.wiped == [0] and report.plans[1].reason == "resume"
    assert _keys(stores[0], "p0-t0-") == 0 and _keys(stores[0], "p0-t11-") == 0, "state before the gap is gone"
    assert _keys(stores[0], "p0-t12-") == 100 and stores[0].checkpoint == last[0]
    assert _keys(stores[1], "p1-t0-") == 2000 and _keys(stores[1], "p1-t12-") == 100
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"shard 0: the changelog no longer reaches this store's checkpoint (offset {checkpoint})" in warning
    assert f"starts at offset {last[0]}" in warning

    # Retention deletes shard 1's records after the restore looked at the log's bounds, before it fetched.
    last = _write(stack, topic, range(13, 15), [1], keys_each=100)
    _delete_up_to(stack, topic, {1: last[1]})
    real = Restore._watermarks
    stale = {1: True}

    def watermarks(self: Restore, shard: int) -> tuple[int, int]:
        low, high = real(self, shard)
        return (0, high) if stale.pop(shard, False) else (low, high)

    monkeypatch.setattr(Restore, "_watermarks", watermarks)
    caplog.clear()
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = _restore(stack, stores)
    assert report.wiped == [1] and report.records == {0: 0, 1: 1}
    assert _keys(stores[1], "p1-t0-") == 0 and _keys(stores[1], "p1-t14-") == 100
    assert "no longer holds offset" in caplog.text and "planning it again" in caplog.text
    for store in stores.values():
        store.close()


def _wait_for_config(admin: AdminClient, topic: str, name: str, value: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        if future.result()[name].value == value:
            return
        time.sleep(0.2)
    raise AssertionError(f"{topic}: {name} is not {value} after 30 s")


def test_a_short_changelog_retention_is_an_error_naming_both_figures(stack: Stack, caplog):
    admin = AdminClient({"bootstrap.servers": stack.broker.bootstrap})
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        assert restore.check_retention(admin, _changelog(stack), LIFETIMES) == []
        shorter = ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ResourceType.TOPIC, _changelog(stack), incremental_configs=[shorter])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result()
        _wait_for_config(admin, _changelog(stack), "retention.ms", "3600000")
        (problem,) = restore.check_retention(admin, _changelog(stack), LIFETIMES)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert error == problem and "retention.ms=3600000 (1.0 h)" in error and "86700000 ms (24.1 h" in error


# --- a worker coming back after its changelog moved on --------------------------------


def _send(stack: Stack, events: list[tuple[str, bytes, bytes, str]]) -> None:
    stack.produce((t, k, v) for t, k, v, _ in events)


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


def _dedup_ids(data_dir: Path) -> int:
    """The event ids a stopped worker's stores remember."""
    cache, total = Cache(1 << 20), 0
    for path in sorted((data_dir / "state").glob("shard-*")):
        store = PartitionStore(path, StoreOptions().to_options(cache))
        total += sum(1 for _ in store.keys_below(keys.DEDUP, keys.DEDUP_BY_TIME, 1 << 30))
        store.close()
    return total


def test_an_item_worker_whose_changelog_no_longer_reaches_its_checkpoints_rebuilds_and_says_so(stack: Stack):
    stack.engine = "item"  # its local stores survive the changelog: the columnar engine's state is the changelog
    first, second, third = make_events(300, "rst-a"), make_events(300, "rst-b"), make_events(300, "rst-c")
    resent = first[:10] + second[:10]
    reader = stack.reader()

    # 1. w1 decides `first` and stops.
    w1 = stack.start_worker("w1")
    _send(stack, first)
    reader.read_until(300, settle=0)
    assert w1.terminate() == 0

    # 2. The changelog is deleted to its end while w1 is away: only commit markers after its checkpoints go.
    _delete_all(stack, _changelog(stack))
    w1 = stack.start_worker("w1")
    _send(stack, first[:10])  # still remembered: no second verdict
    _wait_for(lambda: w1.stats()["duplicates"] == 10)
    assert w1.terminate() == 0
    log = w1.log.read_text()
    assert "only the commit marker after it is gone" in log
    assert "no longer reaches this store's checkpoint" not in log and "retention.ms=" not in log

    # 3. Another worker takes the shards over, from a log that no longer starts at 0, and decides `second`.
    w2 = stack.start_worker("w2")
    _send(stack, second)
    reader.read_until(600, settle=0)
    assert w2.terminate() == 0
    assert "a new store, rebuilt from changelog offset" in w2.log.read_text()

    # 4. Retention deletes what w2 wrote; w1 comes back on its old data directory.
    _delete_all(stack, _changelog(stack))
    before = len(w1.log.read_text())
    w1 = stack.start_worker("w1")
    _send(stack, third)
    _send(stack, resent)
    reader.read_until(900 + len(resent))
    assert w1.terminate() == 0

    log = w1.log.read_text()[before:]
    gaps = [line for line in log.splitlines() if "no longer reaches this store's checkpoint" in line]
    assert len(gaps) == SHARDS and all("WARNING" in line and "wiped" in line for line in gaps)
    assert all(f"shard {s}:" in "".join(gaps) for s in range(SHARDS))

    counts = Counter(v["event_id"] for v in reader.verdicts)
    assert all(counts[e[3]] == 1 for e in first[10:] + second[10:] + third), "one verdict per new event"
    # The documented behaviour: state lost with the changelog is gone, remembered ids included, so
    # a re-sent copy of an event decided before the gap is decided again (as one older than the
    # de-duplication retention is).
    assert all(counts[e[3]] == 2 for e in resent)
    assert len(reader.verdicts) == 900 + len(resent)
    # The rebuilt stores hold only what came after the gap: none of the ids of `first` and `second`
    # but the re-sent ones.
    assert _dedup_ids(stack.workdir / "w1") == len(third) + len(resent)
    assert {json.loads(v)["event_id"] for _, _, v, _ in third} <= set(counts)
    reader.close()


def test_a_columnar_worker_whose_changelog_no_longer_reaches_its_snapshots_starts_from_what_is_left(stack: Stack):
    """State lost with the changelog is gone (the worker holds it in memory only); what comes after is decided."""
    stack.engine = "columnar"
    first, second = make_events(300, "rsc-a"), make_events(300, "rsc-b")
    reader = stack.reader()
    w1 = stack.start_worker("w1")
    _send(stack, first)
    reader.read_until(300, settle=0)
    assert w1.terminate() == 0

    _delete_all(stack, _changelog(stack))  # its snapshots included, while no worker runs
    w1 = stack.start_worker("w1")
    _send(stack, first[:10] + second)
    reader.read_until(610)
    assert w1.terminate() == 0
    # A shard whose snapshot's offset was committed says the log no longer reaches it; one whose worker
    # stopped before the commit after its snapshot (the offset goes with the next one) restores from the
    # log's start, which is past 0 now: either way a WARNING says what was lost.
    lost = ("no longer reaches this store's checkpoint", "not from the beginning")
    gaps = [line for line in w1.log.read_text().splitlines() if any(text in line for text in lost)]
    assert sorted(int(line.split("shard ")[1].split(":")[0]) for line in gaps) == list(range(SHARDS))
    assert all("WARNING" in line for line in gaps)
    counts = Counter(v["event_id"] for v in reader.verdicts)
    assert all(counts[e[3]] == 2 for e in first[:10]), "decided again: the ids remembered went with the changelog"
    assert all(counts[e[3]] == 1 for e in first[10:] + second) and len(reader.verdicts) == 610
    reader.close()
