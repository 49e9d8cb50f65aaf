"""Restoring a shard from its changelog: what a checkpoint the log no longer reaches leads to (no network)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from rocksdict import Cache

from streamguard.features.spec import load_features
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.restore import Restore, RestoreStalled, plan, retention_problems, state_lifetimes
from streamguard.settings import Settings
from streamguard.state import keys
from streamguard.state.store import PartitionStore, StoreOptions, encode_changes
from streamguard.topics.spec import load_specs

TOPIC = "sg.state-changelog"
HOUR = 3_600_000


@pytest.mark.parametrize(
    ("checkpoint", "low", "high", "start", "wipe", "reason"),
    [
        (None, 0, 0, 0, False, "fresh"),  # a new store, an empty log
        (None, 0, 50, 0, False, "fresh"),  # a new store reads it all
        (None, 40, 50, 40, False, "fresh"),  # ... or all there is left (a WARNING says so)
        (19, 0, 50, 20, False, "resume"),  # the usual restart
        (19, 20, 50, 20, False, "resume"),  # deleted up to the record after the checkpoint: nothing lost
        (49, 51, 51, 51, False, "resume"),  # deleted to the end: only the commit marker at 50 is gone
        (19, 21, 50, 21, True, "gap"),  # record 20 is gone and more follow: it may have been state
        (19, 40, 50, 40, True, "gap"),  # the store cannot be trusted: wiped, rebuilt from what is there
        (19, 45, 45, 45, True, "gap"),  # deleted to the end, but far past the checkpoint
        (49, 0, 30, 0, True, "ahead"),  # the checkpoint is past the end: another log (recreated topic)
        (5, 0, 0, 0, True, "ahead"),
    ],
)
def test_a_checkpoint_against_the_bounds_of_the_log(checkpoint, low, high, start, wipe, reason):
    chosen = plan(3, checkpoint, low, high)
    assert (chosen.start, chosen.wipe, chosen.reason) == (start, wipe, reason)
    assert (chosen.shard, chosen.checkpoint, chosen.log_start, chosen.log_end) == (3, checkpoint, low, high)


def _lifetimes() -> dict[str, int]:
    settings = Settings()
    features = EntityFeatures(load_features(settings.allowed_lateness_ms), settings.allowed_lateness_ms)
    return state_lifetimes(features, settings.dedup_retention_s * 1000)


def test_the_longest_state_lifetime_is_a_day_window_plus_the_lateness():
    lifetimes = _lifetimes()
    assert max(lifetimes.values()) == 24 * HOUR + 300_000
    assert lifetimes["remembered event ids (STREAMGUARD_DEDUP_RETENTION_S)"] == 6 * HOUR
    assert lifetimes["device -> fingerprint links (FINGERPRINT_MEMORY_MS)"] == 24 * HOUR


def test_the_changelog_keeps_records_well_past_the_longest_state_lifetime():
    (changelog,) = [s for s in load_specs("", "sg") if s.name == "sg.state-changelog"]
    assert changelog.cleanup == "delete"
    assert changelog.retention_ms >= 1.5 * max(_lifetimes().values())
    assert retention_problems(TOPIC, changelog.configs(), _lifetimes()) == []


def test_a_retention_shorter_than_the_longest_lifetime_is_a_problem_naming_both():
    lifetimes = {"windows": 25 * HOUR, "ids": 6 * HOUR}
    (problem,) = retention_problems(TOPIC, {"retention.ms": str(HOUR), "cleanup.policy": "delete"}, lifetimes)
    assert "retention.ms=3600000 (1.0 h)" in problem and "90000000 ms (25.0 h: windows)" in problem
    assert retention_problems(TOPIC, {"retention.ms": "-1", "retention.bytes": "-1"}, lifetimes) == []
    assert retention_problems(TOPIC, {"retention.ms": str(26 * HOUR)}, lifetimes) == []
    by_size = retention_problems(TOPIC, {"retention.ms": "-1", "retention.bytes": "1000000"}, lifetimes)
    assert len(by_size) == 1 and "retention.bytes=1000000" in by_size[0]
    compacted = retention_problems(TOPIC, {"retention.ms": "-1", "cleanup.policy": "compact"}, lifetimes)
    assert len(compacted) == 1 and "cleanup.policy=compact" in compacted[0]


# --- the replay, over a fake consumer ------------------------------------------------


@dataclass
class Msg:
    _partition: int
    _offset: int
    _value: bytes | None = None
    _error: KafkaError | None = None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


@dataclass
class Log:
    """A changelog partition: committed records by offset (the missing offsets are markers), and its bounds."""

    records: dict[int, bytes]
    low: int
    high: int


@dataclass
class FakeConsumer:
    """read_committed over `logs`, with auto.offset.reset=error; `stale` bounds are told once, first."""

    logs: dict[int, Log]
    stale: dict[int, tuple[int, int]] = field(default_factory=dict)
    per_call: int = 1000
    positions: dict[int, int] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)  # at their end, or in error
    held: list[Msg] = field(default_factory=list)  # fetched, not handed out yet

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        if partition.partition in self.stale:
            return self.stale.pop(partition.partition)
        log = self.logs[partition.partition]
        return log.low, log.high

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions, self.stopped = {}, set()
        self.incremental_assign(partitions)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.positions[tp.partition] = tp.offset
            self.stopped.discard(tp.partition)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            del self.positions[tp.partition]

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        if self.held:
            out, self.held = self.held, []
            return out
        out = []
        for p, position in self.positions.items():
            log = self.logs[p]
            if p in self.stopped:
                continue
            if position < log.low:
                out.append(Msg(p, position, _error=KafkaError(KafkaError._AUTO_OFFSET_RESET, "Offset out of range")))
                self.stopped.add(p)
                continue
            sent = 0
            while position < log.high and sent < self.per_call:
                if position in log.records:
                    out.append(Msg(p, position, log.records[position]))
                    sent += 1
                position += 1
            self.positions[p] = position
            if position >= log.high:
                out.append(Msg(p, position, _error=KafkaError(KafkaError._PARTITION_EOF)))
                self.stopped.add(p)
        if not out:
            time.sleep(min(timeout, 0.01))
        return out

    def poll(self, timeout: float) -> Msg | None:
        if not self.held:
            self.held = self.consume(self.per_call, timeout)
        return self.held.pop(0) if self.held else None

    def close(self) -> None:
        pass


def _record(**changes: str | None) -> bytes:
    (raw,) = encode_changes({k.encode(): None if v is None else v.encode() for k, v in changes.items()}, 1 << 20)
    return raw


@pytest.fixture
def store(tmp_path: Path):
    opened = PartitionStore(tmp_path / "shard-0", StoreOptions().to_options(Cache(1 << 20)))
    yield opened
    opened.close()


def _committed(store: PartitionStore, checkpoint: int, **values: str) -> None:
    for key, value in values.items():
        store.put(key.encode(), value.encode())
    store.apply(store.take_changes(), checkpoint)


def test_a_restart_replays_from_the_checkpoint(store, caplog):
    _committed(store, 1, a="1", gone="x")
    log = Log({0: _record(a="0"), 1: _record(a="1", gone="x"), 3: _record(b="3", gone=None), 5: _record(a="5")}, 0, 7)
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(FakeConsumer({0: log}), TOPIC, {0: store}).run()
    assert (store.get(b"a"), store.get(b"b"), store.get(b"gone")) == (b"5", b"3", None)
    assert store.checkpoint == 5
    assert report.records == {0: 2} and report.keys == {0: 3} and report.wiped == []
    assert report.records_per_s > 0 and report.keys_per_s > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "restored shards [0] from 2 changelog records (3 keys)" in caplog.text


def test_a_checkpoint_the_log_no_longer_reaches_wipes_the_store_and_says_so(store, caplog):
    # The store remembers an id the log's deleted part later forgot (deleted in the gap).
    _committed(store, 9, **{"dedup-old": "x", "a": "9"})
    log = Log({20: _record(a="20"), 21: _record(b="21")}, 20, 23)  # offsets 10-19 were deleted
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(FakeConsumer({0: log}), TOPIC, {0: store}).run()
    assert store.get(b"dedup-old") is None, "the store was not wiped"
    assert (store.get(b"a"), store.get(b"b")) == (b"20", b"21")
    assert store.checkpoint == 21
    assert report.wiped == [0] and report.plans[0].reason == "gap"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "shard 0" in text and "checkpoint (offset 9)" in text and "starts at offset 20" in text
    assert "offsets 10-19 are gone" in text and "wiped" in text and "decided again" in text


def test_a_new_store_on_a_log_that_no_longer_starts_at_zero_warns_once(store, caplog):
    log = Log({}, 40, 40)  # deleted to its end: nothing to rebuild from
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        Restore(FakeConsumer({0: log}), TOPIC, {0: store}).run()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "shard 0: a new store, rebuilt from changelog offset 40, not from the beginning" in warning.getMessage()
    assert store.checkpoint == 39  # it now stands for the log from 40: the next restore resumes, quietly
    caplog.clear()
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        Restore(FakeConsumer({0: log}), TOPIC, {0: store}).run()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_log_deleted_to_its_end_right_after_the_checkpoint_keeps_the_store(store, caplog):
    _committed(store, 49, a="49")
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(FakeConsumer({0: Log({}, 51, 51)}), TOPIC, {0: store}).run()
    assert store.get(b"a") == b"49" and report.wiped == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "only the commit marker after it is gone" in caplog.text


def test_a_store_ahead_of_its_log_is_wiped(store, caplog):
    _committed(store, 99, a="old")
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(FakeConsumer({0: Log({0: _record(b="0")}, 0, 2)}), TOPIC, {0: store}).run()
    assert (store.get(b"a"), store.get(b"b"), store.checkpoint) == (None, b"0", 0)
    assert report.wiped == [0] and "past the end of its changelog" in caplog.text


def test_records_deleted_while_the_restore_runs_are_noticed_not_skipped(store, caplog):
    """The bounds said the checkpoint was reached; by the time of the fetch retention had moved past it."""
    _committed(store, 9, **{"dedup-old": "x"})
    consumer = FakeConsumer({0: Log({30: _record(a="30")}, 30, 32)}, stale={0: (5, 32)})
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(consumer, TOPIC, {0: store}).run()
    assert store.get(b"dedup-old") is None and store.get(b"a") == b"30"
    assert report.wiped == [0] and report.records == {0: 1}
    assert "no longer holds offset 10" in caplog.text
    assert "checkpoint (offset 9)" in caplog.text and "starts at offset 30" in caplog.text


def test_a_restore_that_makes_no_progress_gives_up_with_a_clear_error(store):
    class Silent(FakeConsumer):
        def poll(self, timeout: float) -> Msg | None:
            time.sleep(0.01)
            return None

    restore = Restore(Silent({0: Log({}, 0, 10), 1: Log({}, 0, 0)}), TOPIC, {0: store}, stall_after_s=0.2)
    with pytest.raises(RestoreStalled, match=r"restoring shards \[0\].*no changelog record and no end of partition"):
        restore.run()


def test_a_long_restore_logs_its_progress_and_has_no_time_limit(store, caplog):
    log = Log({i: _record(**{f"k{i}": str(i)}) for i in range(200)}, 0, 201)
    consumer = FakeConsumer({0: log}, per_call=1)
    with caplog.at_level(logging.INFO, "streamguard.pipeline.restore"):
        report = Restore(consumer, TOPIC, {0: store}, progress_every_s=0.0, stall_after_s=0.5).run()
    assert report.records == {0: 200} and store.checkpoint == 199
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restoring shard 0:")]
    assert progress and "changelog records (" in progress[0] and "of 201" in progress[0]
    assert "records/s" in progress[0]


def test_clearing_a_store_removes_every_key_and_the_checkpoint(store, tmp_path):
    _committed(store, 7, **{f"k{i}": "v" for i in range(1000)})
    store.put(b"pending", b"1")
    store.clear()
    assert store.checkpoint is None and store.get(b"k0") is None and store.get(b"pending") is None
    assert list(store.keys_below(b"", b"\xff", 10)) == []
    assert store.get(keys.CHECKPOINT) is None
    _committed(store, 8, after="1")  # usable afterwards, and durable
    store.close()
    again = PartitionStore(tmp_path / "shard-0", StoreOptions().to_options(Cache(1 << 20)))
    assert (again.get(b"after"), again.get(b"k5"), again.checkpoint) == (b"1", None, 8)
    again.close()
