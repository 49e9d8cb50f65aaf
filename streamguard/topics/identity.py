"""The cluster's identity: what every worker of an app must share to route events alike.

A worker sends an event to the shard of its keyed-hash `event_id`, and an
entity to the shard of its keyed hash, modulo the number of shards. Two
workers with another hash key (`STREAMGUARD_HASH_KEY`) or another shard count
send the same event_id to different shards: a duplicate gets a second verdict
and an entity's features split in two. Neither is visible from one worker's
own configuration, so a worker checks both at start, before it consumes:

- the shard count is the app's, never the worker's own: it is chosen when the
  app is created (`STREAMGUARD_SHARDS`, the partitions `streamguard topics
  create` gives the shards and changelog topics), and read back from the
  broker afterwards (`app_topics`); both topics must have that many partitions;
- its key and shard count are the cluster's, as recorded by the first worker
  that ever started on the compacted `<app>.cluster` topic: the first record
  of that topic (lowest offset) is the cluster's identity. Only
  `streamguard reshard` (offline) writes another one, on a recreated topic.

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

from streamguard import kafka_config
from streamguard.errors import BrokerError, ClusterMismatch, ConfigError
from streamguard.settings import Settings
from streamguard.topics import admin
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import TopicSpec, load_specs

log = logging.getLogger(__name__)

FINGERPRINT_LABEL: Final = b"streamguard hash key fingerprint v1"
FINGERPRINT_HEX: Final = 16
TIMEOUT_S: Final = 30.0


class ClusterIdentity(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The record on `<app>.cluster`: what this cluster routes with, and since when."""

    hash_key_fingerprint: str
    shards: int
    created_at: int  # ms since the epoch
    resharded_from: int | None = None  # the shard count before `streamguard reshard` wrote this identity

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
            "start this worker again, it reads the count from the broker (if the topics were recreated with "
            f"{ours.shards} partitions, recreate them with {cluster.shards}: `streamguard reshard` is what moves "
            "an app's state to another shard count)"
        )
    if not problems:
        return None
    return "this worker would send events to other shards than the cluster does: " + "; and ".join(problems)


def topology_mismatch(names: TopicNames, partitions: dict[str, int], cluster: ClusterIdentity | None) -> str | None:
    """Whether the broker's shard and changelog topics (name -> partitions) have the shard count we route with.

    That count (`names.shards`) was read from the broker a moment before
    (`app_topics`); the cluster's identity, when recorded, must say the same.
    """
    for topic in (names.shard_topic, names.changelog, names.cluster):
        if topic not in partitions:
            return f"{topic} is missing on the broker: run `streamguard topics create`"
    shards, changelog = partitions[names.shard_topic], partitions[names.changelog]
    if shards != changelog:
        return (
            f"{names.shard_topic} has {shards} partitions on the broker and {names.changelog} {changelog}: "
            "each shard has one changelog partition, so they must be equal (the partitions of a live topic are "
            "not changed: that would move every event_id and entity to another shard; `streamguard reshard` "
            "re-shards an app offline)"
        )
    if cluster is not None and cluster.shards != shards:
        return (
            f"{names.shard_topic} and {names.changelog} have {shards} partitions on the broker, but the cluster "
            f"routes with {cluster.shards} shards (as {names.cluster} records): the topics were recreated by hand; "
            f"recreate them with {cluster.shards} partitions (`streamguard reshard` is what re-shards an app)"
        )
    if shards != names.shards:
        return f"{names.shard_topic} has {shards} partitions on the broker, {names.shards} a moment ago: start again"
    return None


def app_shards(settings: Settings, names: TopicNames) -> int | None:
    """The shard count of the app on the broker (None: a new app).

    The cluster's identity when recorded, else the partitions of its shards
    topic, else of its changelog: so `topics create` completes an app with
    the count it has, whatever `STREAMGUARD_SHARDS` says now.
    """
    partitions = _partitions(admin.admin_client(settings), [names.cluster, names.shard_topic, names.changelog])
    cluster = first_identity(settings, names.cluster) if names.cluster in partitions else None
    if cluster is not None:
        return cluster.shards
    return partitions.get(names.shard_topic, partitions.get(names.changelog))


def app_topics(settings: Settings) -> tuple[list[TopicSpec], TopicNames]:
    """The app's topic definitions and names, with the app's shard count: the broker's, else `settings.shards`."""
    prefix, app_id = settings.topic_prefix, settings.app_id
    specs = load_specs(prefix, app_id, shards=settings.shards)
    names = TopicNames.resolve(specs, prefix, app_id)
    shards = app_shards(settings, names)
    if shards is None or shards == settings.shards:
        return specs, names
    log.info("this app has %d shards (STREAMGUARD_SHARDS=%d applies to new apps)", shards, settings.shards)
    specs = load_specs(prefix, app_id, shards=shards)
    return specs, TopicNames.resolve(specs, prefix, app_id)


def join_cluster(settings: Settings, names: TopicNames, key: bytes) -> ClusterIdentity:
    """Refuse to start (ClusterMismatch) unless this worker routes as the broker's topics and the cluster do.

    The first worker of a cluster records its identity; the cluster's identity is returned.
    """
    client = admin.admin_client(settings)
    partitions = _partitions(client, [names.shard_topic, names.changelog, names.cluster])
    cluster = first_identity(settings, names.cluster) if names.cluster in partitions else None
    problem = topology_mismatch(names, partitions, cluster)
    if problem:
        raise ClusterMismatch(problem)
    ours = ClusterIdentity(hash_key_fingerprint=fingerprint(key), shards=names.shards, created_at=_now_ms())
    if cluster is None:
        record(settings, names.cluster, ours)
        cluster = first_identity(settings, names.cluster)
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


def first_identity(settings: Settings, topic: str) -> ClusterIdentity | None:
    """The first record of the cluster topic (its single partition), or None while it has none."""
    consumer = Consumer(kafka_config.cluster_reader(settings))
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


def record(settings: Settings, topic: str, identity: ClusterIdentity) -> None:
    """Write `identity` durably (all in-sync replicas); whether it is the first is read afterwards."""
    producer = Producer(kafka_config.cluster_writer(settings))
    errors: list[object] = []
    producer.produce(
        topic, identity.encode(), identity.record_key(), partition=0, on_delivery=lambda err, _: errors.append(err)
    )
    if producer.flush(TIMEOUT_S) or not errors or errors[0] is not None:
        raise BrokerError(f"could not record the cluster identity on {topic}: {errors[0] if errors else 'timed out'}")
