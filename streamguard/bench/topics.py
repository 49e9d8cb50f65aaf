"""Topics of one bench run: every name carries the run's id, so runs never see each other.

Each path gets its own prefix: the worker the full set of `topics/*.toml`
(as `streamguard topics create` would make them), the raw pass-through and
the Quix peer the five input topics of the contract and one output topic.
At the end of a run every topic whose name contains the run id is deleted,
the Quix peer's repartition and changelog topics included.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from streamguard.errors import BrokerError
from streamguard.events import EVENT_TYPES
from streamguard.topics import admin
from streamguard.topics.spec import TopicSpec, load_specs

DELETE_TIMEOUT_S = 60.0


def input_topics(prefix: str) -> list[str]:
    return [f"{prefix}events.{kind}" for kind in EVENT_TYPES]


def verdict_topics(prefix: str) -> list[str]:
    return [f"{prefix}verdicts.{kind}" for kind in EVENT_TYPES]


def create_worker_topics(client: AdminClient, prefix: str, app_id: str) -> None:
    admin.create_missing(client, load_specs(prefix, app_id))


def create_peer_topics(client: AdminClient, prefix: str, output: str) -> None:
    """The contract's input topics (same partitions as the worker's) and one output topic."""
    inputs = [s for s in load_specs(prefix, "unused") if s.name in input_topics(prefix)]
    partitions = inputs[0].partitions
    admin.create_missing(client, [*inputs, TopicSpec(name=output, partitions=partitions)])


def delete_run_topics(client: AdminClient, run_id: str) -> list[str]:
    """Delete every topic whose name contains `run_id`; the names deleted."""
    names = sorted(t for t in client.list_topics(timeout=admin.TIMEOUT_S).topics if run_id in t)
    if not names:
        return []
    for name, future in client.delete_topics(names, request_timeout=DELETE_TIMEOUT_S).items():
        try:
            future.result()
        except Exception as exc:  # a topic already gone is fine; anything else is reported
            if "UNKNOWN_TOPIC" not in str(exc):
                raise BrokerError(f"deleting {name}: {exc}") from exc
    return names
