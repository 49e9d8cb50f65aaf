"""The cluster's identity: what every worker of an app must share to route events alike.

A worker sends an event to the shard of its keyed-hash `event_id`, and an
entity to the shard of its keyed hash, modulo the number of shards. Two
workers with another hash key (`STREAMGUARD_HASH_KEY`) or another shard count
(the partitions of `<app>.shards` in `topics/internal.toml`) send the same
event_id to different shards: a duplicate gets a second verdict and an
entity's features split in two. Neither is visible from one worker's own
configuration, so a worker checks both at start, before it consumes:

- the shard count it would use is the partition count the broker has for the
  shards topic and for the changelog (one changelog partition per shard);
- its key and shard count are the cluster's, as recorded by the first worker
  that ever started on the compacted `<app>.cluster` topic: the first record
  of that topic (lowest offset) is the cluster's identity.

The key itself never leaves the worker: the topic holds a fingerprint of it,
an HMAC over a fixed label, which tells keys apart without revealing them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from typing import Final

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamguard.errors import BrokerError, ClusterMismatch, ConfigError
from streamguard.settings import Settings
from streamguard.topics import admin
from streamguard.topics.names import TopicNames

log = logging.getLogger(__name__)

FINGERPRINT_LABEL: Final = b"streamguard hash key fingerprint v1"
FINGERPRINT_HEX: Final = 16
TIMEOUT_S: Final = 30.0


class ClusterIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """The record on `<app>.cluster`: what this cluster routes with, and since when."""

    hash_key_fingerprint: str
    shards: int
    created_at: int  # ms since the epoch

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    def record_key(self) -> bytes:
        """A key of its own for every record: compaction keeps the last record per key, so it removes none.

        (A key per identity would not do: if two workers of one identity and one of
        another raced to write the first record, compaction would drop the first and
        the cluster's identity would become the other one.)
        """
        return f"{self.hash_key_fingerprint}.{self.shards}.{uuid.uuid4().hex}".encode()


def fingerprint(key: bytes) -> str:
    """Tells hash keys apart without revealing them: an HMAC of a fixed label, by the key, truncated.

    Not the keyed hash of any identifier (the label is no identifier), so it
    gives nothing an attacker could match against pseudonymised data.
    """
    return hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


def decode(raw: bytes | None, topic: str) -> ClusterIdentity:
    try:
        return msgspec.json.decode(raw or b"", type=ClusterIdentity)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"the first record of {topic} is not a cluster identity ({exc}): fix or delete it") from None


def mismatch(ours: ClusterIdentity, cluster: ClusterIdentity, topic: str) -> str | None:
    """What in `ours` differs from the cluster's identity and how to fix it, on one line; None if nothing."""
    problems = []
    if ours.hash_key_fingerprint != cluster.hash_key_fingerprint:
        problems.append(
            f"STREAMGUARD_HASH_KEY is not the cluster's key (fingerprint {ours.hash_key_fingerprint} here, "
            f"{cluster.hash_key_fingerprint} in {topic}): start this worker with the cluster's key "
            "(another key is another cluster: another STREAMGUARD_APP_ID and empty data directories)"
        )
    if ours.shards != cluster.shards:
        problems.append(
            f"the shard count differs ({ours.shards} here, {cluster.shards} in the cluster, as {topic} records): "
            f"declare {cluster.shards} partitions for shards and state-changelog in topics/internal.toml "
            "(another shard count is another cluster: another STREAMGUARD_APP_ID and empty data directories)"
        )
    if not problems:
        return None
    return "this worker would send events to other shards than the cluster does: " + "; and ".join(problems)


def topology_mismatch(names: TopicNames, partitions: dict[str, int]) -> str | None:
    """Whether the broker's shard and changelog topics (name -> partitions) have the shard count we would use."""
    for topic in (names.shard_topic, names.changelog):
        if topic not in partitions:
            return f"{topic} is missing on the broker: run `streamguard topics create`"
        have = partitions[topic]
        if have != names.shards:
            return (
                f"{topic} has {have} partitions on the broker, topics/internal.toml declares {names.shards}: "
                f"declare {have} for shards and state-changelog there (the partitions of a live topic are "
                "not changed: that would move every event_id and entity to another shard)"
            )
    return None


def join_cluster(settings: Settings, names: TopicNames, key: bytes) -> ClusterIdentity:
    """Refuse to start (ClusterMismatch) unless this worker routes as the broker's topics and the cluster do.

    The first worker of a cluster records its identity; the cluster's identity is returned.
    """
    client = admin.admin_client(settings.bootstrap)
    problem = topology_mismatch(names, _partitions(client, [names.shard_topic, names.changelog]))
    if problem:
        raise ClusterMismatch(problem)
    ours = ClusterIdentity(hash_key_fingerprint=fingerprint(key), shards=names.shards, created_at=_now_ms())
    cluster = _first_identity(settings, names.cluster)
    if cluster is None:
        _record(settings.bootstrap, names.cluster, ours)
        cluster = _first_identity(settings, names.cluster)
        if cluster is None:
            raise BrokerError(f"{names.cluster}: the identity just written cannot be read back")
    problem = mismatch(ours, cluster, names.cluster)
    if problem:
        raise ClusterMismatch(problem)
    log.info("cluster identity: key fingerprint %s, %d shards", cluster.hash_key_fingerprint, cluster.shards)
    return cluster


def _now_ms() -> int:
    return int(time.time() * 1000)


def _partitions(client: AdminClient, topics: list[str]) -> dict[str, int]:
    """Partition counts, per the broker's metadata, of those of `topics` that exist."""
    try:
        meta = client.list_topics(timeout=TIMEOUT_S).topics
    except KafkaException as exc:
        raise BrokerError(f"reading the topics' metadata: {exc}") from exc
    return {t: len(meta[t].partitions) for t in topics if t in meta and not meta[t].error}


def _first_identity(settings: Settings, topic: str) -> ClusterIdentity | None:
    """The first record of the cluster topic (its single partition), or None while it has none."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "client.id": f"{settings.app_id}-cluster",
            "group.id": f"{settings.app_id}-cluster",  # never joined: assign() only
            "enable.auto.commit": False,
        }
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        low, high = _offsets(consumer, topic, deadline)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        error = None
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():  # e.g. no leader yet: librdkafka retries on its own
                error = message.error()
                continue
            return decode(message.value(), topic)
        raise BrokerError(
            f"reading {topic}: no record within {TIMEOUT_S} s, though it has offsets {low}-{high}: {error}"
        )
    finally:
        consumer.close()


def _offsets(consumer: Consumer, topic: str, deadline: float) -> tuple[int, int]:
    """The low and high offsets of the topic's partition, retried while it has no leader (just created)."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic}: {exc} (is it created? `streamguard topics create`)") from exc
            time.sleep(0.2)


def _record(bootstrap: str, topic: str, identity: ClusterIdentity) -> None:
    """Write `identity` durably (all in-sync replicas); whether it is the first is read afterwards."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    errors: list[object] = []
    producer.produce(
        topic, identity.encode(), identity.record_key(), partition=0, on_delivery=lambda err, _: errors.append(err)
    )
    if producer.flush(TIMEOUT_S) or not errors or errors[0] is not None:
        raise BrokerError(f"could not record the cluster identity on {topic}: {errors[0] if errors else 'timed out'}")
