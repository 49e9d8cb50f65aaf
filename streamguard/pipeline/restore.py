"""Restoring shards' state from the changelog, and saying so when the changelog no longer reaches it.

A shard's store holds the changelog offset it has applied up to (its
checkpoint). A restore replays the shard's changelog partition from the
record after it (from the start for a new store) to the end, committed records
only. The changelog is a log of batches' changes, unkeyed, with
`cleanup.policy=delete`: retention removes its oldest records whatever they
hold. Two things keep restores correct anyway:

- The changelog's retention is longer than any state lives
  (`state_lifetimes`: the longest window plus the allowed lateness, the
  de-duplication retention, the device -> fingerprint memory). An entry still
  in use was then last written within what the log keeps; what the log no
  longer has is state past its lifetime, which the sweeps delete anyway.
  `check_retention` compares the topic's `retention.ms` with them at every
  restore and logs an ERROR when it is shorter.
- A store whose checkpoint the log no longer reaches (the changes after it
  were deleted: its worker was away for longer than the retention) cannot be
  trusted, since it may hold entries deleted in the gap: it is wiped and
  rebuilt from the oldest record the log has, with a WARNING (`plan`). A
  new store rebuilt from a log that no longer starts at 0 says so too.

A restore takes as long as it takes (a big shard may need many minutes): it
logs its progress, and gives up only when it makes none at all for
`STALL_AFTER_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streamguard import kafka_config
from streamguard.errors import BrokerError
from streamguard.features.table import EntityFeatures
from streamguard.pipeline.shard import FINGERPRINT_MEMORY_MS
from streamguard.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_EVERY_S: Final = 5.0  # how often a restore logs how far it is
STALL_AFTER_S: Final = 120.0  # a restore that reads nothing and reaches no end for this long gives up
BROKER_TIMEOUT_S: Final = 10.0  # one watermark or config request
POLL_S: Final = 1.0
POLL_RECORDS: Final = 1000

Reason = Literal["resume", "fresh", "gap", "ahead"]


class RestoreStalled(BrokerError):
    """A restore read no record and reached no end of partition for `STALL_AFTER_S`."""


@dataclass(frozen=True)
class Plan:
    """Where a shard's restore starts, and whether its store must be wiped first."""

    shard: int
    start: int  # the first changelog offset to read
    wipe: bool  # the store cannot be trusted: clear it, then rebuild from `start`
    reason: Reason
    checkpoint: int | None
    log_start: int
    log_end: int


def plan(shard: int, checkpoint: int | None, log_start: int, log_end: int) -> Plan:
    """How to restore a store with `checkpoint` from a changelog partition holding [log_start, log_end).

    - fresh: a new store reads everything there is, from `log_start`.
    - resume: the log still holds the record after the checkpoint (or nothing
      was lost: see below); the store reads on from there.
    - gap: records after the checkpoint were deleted; changes were lost, so
      the store is wiped and rebuilt from `log_start`.
    - ahead: the checkpoint is past the end of the log (the topic was
      recreated): the store belongs to another log; wiped, rebuilt.

    The record right after a checkpoint is never state when it is the log's
    last: a checkpoint is the offset of a committed record, whose transaction's
    commit marker follows it. So a log deleted up to its end while the store
    was at that end (an idle shard past the retention, or `delete_records`)
    lost nothing the store lacks: it resumes.
    """
    span = (checkpoint, log_start, log_end)
    if checkpoint is None:
        return Plan(shard, log_start, False, "fresh", *span)
    if checkpoint >= log_end:
        return Plan(shard, log_start, True, "ahead", *span)
    if log_start <= checkpoint + 1 or log_start == log_end == checkpoint + 2:
        return Plan(shard, max(checkpoint + 1, log_start), False, "resume", *span)
    return Plan(shard, log_start, True, "gap", *span)


def state_lifetimes(features: EntityFeatures, dedup_retention_ms: int) -> dict[str, int]:
    """How long each kind of state can matter after it was last written (ms), by what it is."""
    windows = [(c.lifetime_ms, c.spec.name) for compiled in features.by_entity.values() for c in compiled]
    longest, name = max(windows, default=(0, "none"))
    return {
        f"feature windows (the longest, {name}, plus the allowed lateness)": longest,
        "remembered event ids (STREAMGUARD_DEDUP_RETENTION_S)": dedup_retention_ms,
        "device -> fingerprint links (FINGERPRINT_MEMORY_MS)": FINGERPRINT_MEMORY_MS,
    }


def retention_problems(topic: str, configs: Mapping[str, str | None], lifetimes: Mapping[str, int]) -> list[str]:
    """Why `topic`, configured with `configs`, may delete state that is still in use (empty: it cannot)."""
    if not lifetimes:
        return []
    what, longest = max(lifetimes.items(), key=lambda item: item[1])
    problems = []
    policy = configs.get("cleanup.policy") or "delete"
    if policy != "delete":
        problems.append(f"{topic}: cleanup.policy={policy}; its records are unkeyed changes, it must be delete")
    retention = int(configs.get("retention.ms") or -1)
    if 0 <= retention < longest:
        problems.append(
            f"{topic}: retention.ms={retention} ({_hours(retention)}) is shorter than the longest state lifetime, "
            f"{longest} ms ({_hours(longest)}: {what}); a restore after a longer absence, or a new worker, "
            f"silently rebuilds without state that is still in use. Give it a retention.ms above {longest} "
            "(topics/internal.toml)"
        )
    size = int(configs.get("retention.bytes") or -1)
    if size >= 0:
        problems.append(
            f"{topic}: retention.bytes={size}: the log may be cut by size before the longest state lifetime "
            f"({_hours(longest)}: {what}) is over; it must be -1"
        )
    return problems


def check_retention(admin: AdminClient, topic: str, lifetimes: Mapping[str, int]) -> list[str]:
    """Log an ERROR for each way the changelog's retention may delete live state; the problems found.

    It does not stop the worker: with a short retention, steady-state verdicts
    stay right and only a restore across a long absence misses state, while a
    worker refusing to start (or crashing in a rebalance, where this runs)
    would stop every verdict. Retention can also change at run time, so the
    check runs at every restore, not once.
    """
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=BROKER_TIMEOUT_S)
        entries = next(iter(futures.values())).result()
    except KafkaException as exc:
        log.warning("could not read the configuration of %s, its retention is not checked: %s", topic, exc)
        return []
    configs = {name: entry.value for name, entry in entries.items()}
    problems = retention_problems(topic, configs, lifetimes)
    for problem in problems:
        log.error("%s", problem)
    return problems


@dataclass
class ShardRestore:
    """One shard's restore as it goes."""

    plan: Plan
    next: int  # the next offset expected
    records: int = 0
    keys: int = 0
    done: bool = False


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: records and keys applied, how fast, and which stores were wiped."""

    plans: dict[int, Plan] = field(default_factory=dict)
    records: dict[int, int] = field(default_factory=dict)
    keys: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the retention check's

    @property
    def wiped(self) -> list[int]:
        return sorted(shard for shard, p in self.plans.items() if p.wipe)

    @property
    def records_per_s(self) -> float:
        return sum(self.records.values()) / self.seconds if self.seconds > 0 else 0.0

    @property
    def keys_per_s(self) -> float:
        return sum(self.keys.values()) / self.seconds if self.seconds > 0 else 0.0


class RestoreTarget(Protocol):
    """What a shard's changelog is replayed into: a store (`PartitionStore`), or the batch core's state."""

    @property
    def checkpoint(self) -> int | None:
        """The last changelog offset it holds, or None for a new one."""

    def clear(self) -> None:
        """Forget everything, the checkpoint included."""

    def replay(self, record: bytes | None, changelog_offset: int) -> int:
        """Apply the record read at `changelog_offset` (None: it stands for the log up to there); its keys."""


class ChangelogConsumer(Protocol):
    """The part of a confluent-kafka Consumer a restore uses (a fake one in the unit tests)."""

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]: ...
    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def incremental_assign(self, partitions: list[TopicPartition]) -> None: ...
    def incremental_unassign(self, partitions: list[TopicPartition]) -> None: ...
    def poll(self, timeout: float) -> Message | None: ...
    def consume(self, num_messages: int, timeout: float) -> list[Message]: ...
    def close(self) -> None: ...


def restore_shards(
    settings: Settings, changelog: str, stores: Mapping[int, RestoreTarget], lifetimes: Mapping[str, int]
) -> RestoreReport:
    """Bring each store (by shard) up to the end of its changelog partition."""
    if not stores:
        return RestoreReport()
    problems = check_retention(AdminClient(kafka_config.engine_admin(settings)), changelog, lifetimes)
    consumer = Consumer(kafka_config.restore_consumer(settings))
    try:
        report = Restore(consumer, changelog, stores).run()
    finally:
        consumer.close()
    return RestoreReport(report.plans, report.records, report.keys, report.seconds, problems)


class Restore:
    """The replay itself, over any `ChangelogConsumer`; `run` once."""

    def __init__(
        self,
        consumer: ChangelogConsumer,
        changelog: str,
        stores: Mapping[int, RestoreTarget],
        progress_every_s: float = PROGRESS_EVERY_S,
        stall_after_s: float = STALL_AFTER_S,
    ) -> None:
        self._consumer = consumer
        self._topic = changelog
        self._stores = stores
        self._progress_every_s = progress_every_s
        self._stall_after_s = stall_after_s
        self._shards: dict[int, ShardRestore] = {}
        self._last_progress = time.monotonic()  # when a record or an end of partition was last seen

    def run(self) -> RestoreReport:
        started = time.monotonic()
        self._last_progress = started
        for shard in self._stores:
            self._shards[shard] = self._prepare(shard)
        self._consumer.assign([TopicPartition(self._topic, s, r.next) for s, r in self._shards.items()])
        self._last_progress = time.monotonic()
        logged = started
        while not all(r.done for r in self._shards.values()):
            for msg in self._poll():
                self._handle(msg)
            now = time.monotonic()
            if now - self._last_progress > self._stall_after_s:
                pending = sorted(s for s, r in self._shards.items() if not r.done)
                raise RestoreStalled(
                    f"restoring shards {pending} of {self._topic}: no changelog record and no end of partition "
                    f"for {self._stall_after_s:.0f} s (is the broker reachable?)"
                )
            if now - logged >= self._progress_every_s:
                logged = now
                self._log_progress(now - started)
        seconds = time.monotonic() - started
        report = RestoreReport(
            {s: r.plan for s, r in self._shards.items()},
            {s: r.records for s, r in self._shards.items()},
            {s: r.keys for s, r in self._shards.items()},
            seconds,
        )
        log.info(
            "restored shards %s from %d changelog records (%d keys) in %.1f s: %.0f records/s, %.0f keys/s%s",
            sorted(self._shards), sum(report.records.values()), sum(report.keys.values()), seconds,
            report.records_per_s, report.keys_per_s,
            f"; wiped and rebuilt: {report.wiped}" if report.wiped else "",
        )  # fmt: skip
        return report

    def _poll(self) -> list[Message]:
        """What the consumer holds: waits for the first (`consume` alone would wait out its timeout)."""
        first = self._consumer.poll(POLL_S)
        return [] if first is None else [first, *self._consumer.consume(POLL_RECORDS - 1, 0)]

    def _prepare(self, shard: int) -> ShardRestore:
        """Plan the shard's restore from its checkpoint and the log's bounds; wipe its store if it must be."""
        store = self._stores[shard]
        log_start, log_end = self._watermarks(shard)
        chosen = plan(shard, store.checkpoint, log_start, log_end)
        _tell(chosen)
        if chosen.wipe:
            store.clear()
        if chosen.reason != "resume" and chosen.start > 0:
            # The store now stands for the log from `start`: a restart resumes there, quietly.
            store.replay(None, chosen.start - 1)
        previous = self._shards.get(shard)
        restore = ShardRestore(chosen, chosen.start)
        if previous is not None and not chosen.wipe:
            restore.records, restore.keys = previous.records, previous.keys
        return restore

    def _watermarks(self, shard: int) -> tuple[int, int]:
        """The partition's log start and end offsets, asked again while the broker does not answer."""
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, shard), timeout=BROKER_TIMEOUT_S
                )
                return low, high
            except KafkaException as exc:
                if time.monotonic() - self._last_progress > self._stall_after_s:
                    raise RestoreStalled(f"the bounds of {self._topic} [{shard}] are unknown: {exc}") from exc
                log.warning("restore: the bounds of %s [%d] are unknown yet: %s", self._topic, shard, exc)
                time.sleep(1.0)

    def _handle(self, msg: Message) -> None:
        shard, offset, err = msg.partition(), msg.offset(), msg.error()
        restore = None if shard is None else self._shards.get(shard)
        if shard is None or restore is None or offset is None:
            if err is not None:
                log.warning("restore: %s", err)
            return
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                restore.done = True
                restore.next = max(restore.next, offset)
                self._last_progress = time.monotonic()
            elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                self._replan(shard, err)
            else:
                log.warning("restore: %s", err)
            return
        if offset < restore.next:
            return  # fetched before the shard was planned again
        keys = self._stores[shard].replay(msg.value(), offset)
        restore.next = offset + 1
        restore.records += 1
        restore.keys += keys
        self._last_progress = time.monotonic()

    def _replan(self, shard: int, err: KafkaError) -> None:
        """The log lost the offset the restore was about to read (retention, mid-restore): plan the shard again."""
        log.warning("restore: %s [%d] no longer holds offset %d (%s): planning it again",
                    self._topic, shard, self._shards[shard].next, err.str())  # fmt: skip
        self._consumer.incremental_unassign([TopicPartition(self._topic, shard)])
        self._shards[shard] = self._prepare(shard)
        self._consumer.incremental_assign([TopicPartition(self._topic, shard, self._shards[shard].next)])

    def _log_progress(self, elapsed_s: float) -> None:
        for shard, r in sorted(self._shards.items()):
            if not r.done:
                log.info(
                    "restoring shard %d: %d changelog records (%d keys) applied, at offset %d of %d, "
                    "%.0f records/s", shard, r.records, r.keys, r.next, r.plan.log_end, r.records / elapsed_s,
                )  # fmt: skip


def _tell(chosen: Plan) -> None:
    """Log what the plan means for the shard's state: a WARNING whenever state may be missing."""
    shard, checkpoint, start, end = chosen.shard, chosen.checkpoint, chosen.log_start, chosen.log_end
    lost = (
        "State last written before that is gone: windows, remembered event ids (a re-sent copy of such "
        "an event is decided again) and device -> fingerprint links that lived only in the deleted part "
        "start from empty."
    )
    if chosen.reason == "gap":
        assert checkpoint is not None
        log.warning(
            "shard %d: the changelog no longer reaches this store's checkpoint (offset %d): it now starts at "
            "offset %d, so the changes at offsets %d-%d are gone (deleted by retention while the shard was "
            "elsewhere or its worker away). What was held of the shard cannot be trusted (it may hold state deleted "
            "in the gap): it was wiped and is rebuilt from offset %d. %s",
            shard, checkpoint, start, checkpoint + 1, start - 1, start, lost,
        )  # fmt: skip
    elif chosen.reason == "ahead":
        log.warning(
            "shard %d: this store's checkpoint (offset %d) is past the end of its changelog (offset %d): the topic "
            "was recreated or truncated, and the store belongs to another log. It was wiped and is rebuilt from "
            "offset %d.", shard, checkpoint, end, start,
        )  # fmt: skip
    elif chosen.reason == "fresh" and start > 0:
        log.warning(
            "shard %d: a new store, rebuilt from changelog offset %d, not from the beginning (the records before "
            "were deleted by retention). %s", shard, start, lost,
        )  # fmt: skip
    elif chosen.reason == "resume" and checkpoint is not None and start > checkpoint + 1:
        log.info(
            "shard %d: its changelog was deleted up to its end (offset %d) right after this store's checkpoint "
            "(offset %d): only the commit marker after it is gone, nothing the store lacks",
            shard, start, checkpoint,
        )  # fmt: skip
    else:
        log.info("shard %d: restoring from changelog offset %d (checkpoint %s, log %d-%d)",
                 shard, chosen.start, checkpoint, start, end)  # fmt: skip


def _hours(ms: int) -> str:
    return f"{ms / 3_600_000:.1f} h"
