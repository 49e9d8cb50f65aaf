"""Every Kafka client's configuration, built from `Settings` in this one place.

`connection` is how a client reaches the cluster: the bootstrap servers, and
where authentication and TLS will go. Each function below is one role: that
connection, the client.id the role is known by where it has one, and the
settings the role needs, with the reason wherever a value was tuned. They return plain
dictionaries for confluent-kafka's constructors; nothing here talks to Kafka.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from streamguard.settings import Settings

Config = dict[str, Any]

READ_AHEAD: Final = 2000  # records librdkafka fetches ahead per partition, for the event-time merge
TRANSACTION_TIMEOUT_MS: Final = 10_000  # bounds how long a killed worker's open transaction blocks readers


def connection(settings: Settings) -> Config:
    """How every client reaches the cluster."""
    return {"bootstrap.servers": settings.bootstrap}


def _named(settings: Settings, role: str) -> Config:
    return {**connection(settings), "client.id": f"{settings.app_id}-{role}"}


# --- the worker's engine ---------------------------------------------------------


def engine_admin(settings: Settings) -> Config:
    """The engine's admin requests (a changelog's retention, checked at every restore)."""
    return _named(settings, "engine")


def engine_producer(settings: Settings, worker_id: str) -> Config:
    """The worker's one transactional producer; its id is stable per data directory (`app.worker_id`)."""
    return {
        **_named(settings, "engine"),
        "transactional.id": f"{settings.app_id}-{worker_id}",
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "linger.ms": 1,
        # A transaction begun right after a commit meets the coordinator still writing the
        # previous one's markers (CONCURRENT_TRANSACTIONS) and is retried after this backoff;
        # librdkafka's default, 100 ms, was the p99 latency of a paced run.
        "retry.backoff.ms": 2,
        "retry.backoff.max.ms": 100,
        "partitioner": "murmur2_random",  # the same key -> partition mapping as Java clients
        "message.max.bytes": 9_000_000,  # above the deadletter topic's max.message.bytes
    }


def engine_consumer(settings: Settings) -> Config:
    """The engine's consumer of the input and shards topics, in the app's group; offsets go with transactions."""
    return {
        **_named(settings, "engine"),
        "group.id": settings.app_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "range",
        "fetch.wait.max.ms": 10,
        # A small read-ahead per partition, so that every partition's next records are at hand
        # for the event-time merge instead of one partition's backlog filling the queue; and up
        # to 32 MiB ahead in all: the scale-5 flood ran at 3,700 events/s with 4 MiB, 4,370 with
        # 32 MiB and 4,390 with librdkafka's 64 MiB.
        "queued.min.messages": READ_AHEAD,
        "queued.max.messages.kbytes": 32 * 1024,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
    }


def restore_consumer(settings: Settings) -> Config:
    """Replays changelog partitions to their end, committed records only (`assign` only: no group is joined)."""
    return {
        **_named(settings, "engine"),
        "group.id": f"{settings.app_id}-restore",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 10,  # the end of a partition shows in a fetch answer: 500 ms by default
        # Never skip silently: an offset the log no longer has (retention deleted it while
        # the restore was on its way) is an error here, and the shard is planned again.
        "auto.offset.reset": "error",
    }


# --- the worker's other readers and writers -----------------------------------------


def control_consumer(settings: Settings, worker_id: str) -> Config:
    """Reads the control topics whole, committed records only."""
    return {
        **_named(settings, "control"),
        "group.id": f"{settings.app_id}-control-{worker_id}",  # never joined: assign() only
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }


def cluster_reader(settings: Settings) -> Config:
    """Reads the first record of `<app>.cluster`."""
    return {
        **_named(settings, "cluster"),
        "group.id": f"{settings.app_id}-cluster",  # never joined: assign() only
        "enable.auto.commit": False,
    }


def cluster_writer(settings: Settings) -> Config:
    """Records the cluster's identity durably (all in-sync replicas)."""
    return {**connection(settings), "enable.idempotence": True, "acks": "all"}


# --- the command line's tools --------------------------------------------------------


def admin(settings: Settings) -> Config:
    """Creates topics and reads their metadata and configuration."""
    return connection(settings)


def publisher(settings: Settings) -> Config:
    """Publishes one control record (`streamguard rules publish`, `streamguard lists`)."""
    return {**connection(settings), "enable.idempotence": True}


def verifier(settings: Settings, logger: logging.Logger) -> Config:
    """The verifier's clients; librdkafka's own log lines go through `logger`, so an operator sees one per failure."""
    return {**connection(settings), "logger": logger, "client.id": "streamguard-verify"}


def verify_reader(settings: Settings, logger: logging.Logger) -> Config:
    """Reads partitions to their end, committed records only, as a downstream consumer sees them."""
    return {
        **verifier(settings, logger),
        "group.id": f"streamguard-verify-{uuid.uuid4()}",  # never joined: `assign` only, no commits
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 50,
    }


def demo_producer(settings: Settings) -> Config:
    return {**connection(settings), "linger.ms": 5, "partitioner": "murmur2_random"}


def demo_results_reader(settings: Settings) -> Config:
    """Reads the verdicts and dead letters from their current end."""
    return {
        **connection(settings),
        "group.id": f"streamguard-demo-{time.time()}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "latest",
    }


# --- `streamguard bench` ---------------------------------------------------------------


def bench_producer(settings: Settings, linger_ms: int, on_delivery: Callable[..., None]) -> Config:
    """Sends the bench's traffic, idempotent, with room for a whole run in its queue."""
    return {
        **connection(settings),
        "linger.ms": linger_ms,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 1_000_000,
        "on_delivery": on_delivery,
    }


def bench_reader(settings: Settings, group: str) -> Config:
    """Reads a path's output, committed records only, from where it is assigned."""
    return {
        **connection(settings),
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }


def bench_clock(settings: Settings, group: str) -> Config:
    """Reads verdicts as they arrive, committed records only, from where it is assigned."""
    return {**connection(settings), "group.id": group, "isolation.level": "read_committed", "enable.auto.commit": False}


def passthrough_consumer(settings: Settings, group: str) -> Config:
    return {**connection(settings), "group.id": group, "auto.offset.reset": "earliest"}


def passthrough_producer(settings: Settings) -> Config:
    return {**connection(settings), "linger.ms": 5, "enable.idempotence": True}


def floor_consumer(settings: Settings) -> Config:
    """As the engine reads: see `engine_consumer`."""
    return {
        **connection(settings),
        "group.id": settings.app_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 10,
    }


def floor_producer(settings: Settings) -> Config:
    """As the engine writes: see `engine_producer`."""
    return {
        **connection(settings),
        "transactional.id": f"{settings.app_id}-floor",
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "linger.ms": 1,
        "retry.backoff.ms": 2,
        "retry.backoff.max.ms": 100,
        "partitioner": "murmur2_random",
    }


# --- `streamguard reshard` ---------------------------------------------------------------


def reshard_writer(settings: Settings) -> Config:
    """Writes the re-sharded changelog (with no worker running: no transaction needed), durably."""
    return {
        **connection(settings),
        "client.id": f"{settings.app_id}-reshard",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
    }
