"""Every Kafka client streamguard makes reaches the cluster through `kafka_config.connection`."""

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest

from streamguard import kafka_config
from streamguard.settings import Settings

SETTINGS = Settings(bootstrap="broker-a:9092,broker-b:9092", app_id="sg")
ARGUMENTS: dict[str, Any] = {
    "settings": SETTINGS,
    "worker_id": "w-1",
    "group": "g",
    "linger_ms": 5,
    "logger": logging.getLogger("test"),
    "on_delivery": lambda *_: None,
}


def _roles() -> list[tuple[str, Callable[..., dict[str, Any]]]]:
    return [
        (name, role)
        for name, role in vars(kafka_config).items()
        if inspect.isfunction(role)
        and role.__module__ == kafka_config.__name__
        and not name.startswith("_")
        and name != "connection"
    ]


def _config(role: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return role(**{name: ARGUMENTS[name] for name in inspect.signature(role).parameters})


@pytest.mark.parametrize(("name", "role"), _roles())
def test_a_setting_of_the_connection_reaches_every_client(name: str, role: Callable[..., dict[str, Any]], monkeypatch):
    """What a later issue adds to `connection` (SASL, TLS) is then in every client's configuration."""
    monkeypatch.setattr(kafka_config, "connection", lambda s: {"bootstrap.servers": s.bootstrap, "x.marker": 1})
    config = _config(role)
    assert config["bootstrap.servers"] == SETTINGS.bootstrap
    assert config["x.marker"] == 1


def test_the_engine_commits_its_offsets_in_its_transactions_and_reads_committed_records_only():
    producer = kafka_config.engine_producer(SETTINGS, "w-1")
    consumer = kafka_config.engine_consumer(SETTINGS)
    assert producer["transactional.id"] == "sg-w-1" and consumer["group.id"] == "sg"
    assert consumer["enable.auto.commit"] is False and consumer["isolation.level"] == "read_committed"
