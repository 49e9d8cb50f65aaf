from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Broker, Cluster, Stack, free_port_block


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A real Kafka broker on its own port, started by deploy/kafka/kafka.sh; stopped if we started it."""
    port = int(os.environ.get("STREAMGUARD_TEST_KAFKA_PORT", "19092"))
    broker = Broker(port, ROOT / ".run" / "kafka-test")
    was_running = broker.script("status").returncode == 0
    started = broker.script("start")
    assert started.returncode == 0, started.stderr
    yield broker
    if not was_running:
        broker.script("stop")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A fresh three-node KRaft cluster on free ports, started by deploy/kafka/kafka.sh; stopped at the end.

    Its home is .run/kafka-cluster-test (the script's own default, .run/kafka-cluster, is left alone).
    """
    home = ROOT / ".run" / "kafka-cluster-test"
    Cluster(home, port=0).script("stop")  # a crashed session's nodes: stop goes by recorded PIDs, not ports
    shutil.rmtree(home, ignore_errors=True)
    cluster = Cluster(home, port=free_port_block(6))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.script("stop")


@pytest.fixture
def stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(broker, tmp_path)
    stack.create_topics()
    yield stack
    stack.stop()


@pytest.fixture
def feature_stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    """A stack whose workers publish every decided event's feature values on "<prefix>features"."""
    stack = Stack(broker, tmp_path, features=True)
    stack.create_topics()
    yield stack
    stack.stop()
