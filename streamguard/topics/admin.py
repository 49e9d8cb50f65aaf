"""Apply topic definitions to a broker and report drift from them.

Creation is idempotent. Drift (partition count, cleanup policy, retention) is
reported, never "fixed": changing partitions remaps keys, and a retention
change on a live topic is an operator's decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streamguard import kafka_config
from streamguard.errors import BrokerError
from streamguard.settings import Settings
from streamguard.topics.spec import TopicSpec

TIMEOUT_S = 30.0
BROKER_WAIT_S = 60.0  # how long a starting worker waits for a broker that does not answer (it may be restarting)

log = logging.getLogger(__name__)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(kafka_config.admin(settings))


def wait_for_broker(settings: Settings) -> None:
    """Until the cluster answers a metadata request; `BrokerError` after `BROKER_WAIT_S`.

    librdkafka answers at once with a transport failure while no broker
    listens: a worker restarted in place while its broker restarts waits.
    """
    client = admin_client(settings)
    deadline = time.monotonic() + BROKER_WAIT_S
    while True:
        try:
            client.list_topics(timeout=5)
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no broker answered at {settings.bootstrap} within {BROKER_WAIT_S:.0f} s: {exc.args[0]}"
                ) from exc
            log.warning("waiting for a broker at %s: %s", settings.bootstrap, exc.args[0])
            time.sleep(1.0)


def create_missing(admin: AdminClient, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics the broker lacks; the names created."""
    existing = set(admin.list_topics(timeout=TIMEOUT_S).topics)
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    new = [NewTopic(s.name, s.partitions, s.replication, config=s.configs()) for s in wanted]
    created = []
    for name, future in admin.create_topics(new, request_timeout=TIMEOUT_S).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # else another process won the race
                raise BrokerError(f"creating {name}: {exc}") from exc
    _wait_visible(admin, [s.name for s in wanted])
    return sorted(created)


def _wait_visible(admin: AdminClient, names: list[str]) -> None:
    """Wait until the broker's metadata lists `names`, so clients started next can use them."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=TIMEOUT_S).topics
        if all(n in topics and not topics[n].error for n in names):
            return
        time.sleep(0.2)
    raise BrokerError(f"topics not visible in the broker's metadata after {TIMEOUT_S} s: {names}")


def drift(admin: AdminClient, specs: Iterable[TopicSpec]) -> list[str]:
    """Human-readable differences between the definitions and the broker."""
    specs = list(specs)
    meta = admin.list_topics(timeout=TIMEOUT_S).topics
    problems = []
    present = [s for s in specs if s.name in meta]
    problems += [f"{s.name}: missing on the broker" for s in specs if s.name not in meta]
    for s in present:
        have = len(meta[s.name].partitions)
        if have != s.partitions:
            problems.append(f"{s.name}: {have} partitions, defined with {s.partitions}")
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in present]
    if not resources:
        return problems
    futures = admin.describe_configs(resources, request_timeout=TIMEOUT_S)
    by_name = {s.name: s for s in present}
    for resource, future in futures.items():
        entries = future.result()
        for key, want in by_name[resource.name].configs().items():
            have_value = entries[key].value if key in entries else None
            if have_value != want:
                problems.append(f"{resource.name}: {key}={have_value}, defined as {want}")
    return problems
