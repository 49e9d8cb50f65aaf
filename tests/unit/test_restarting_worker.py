"""A worker whose broker went away while it was starting starts again in place instead of exiting."""

from __future__ import annotations

import asyncio

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from streamguard.pipeline import service


def test_a_refused_first_connection_starts_the_worker_again(monkeypatch: pytest.MonkeyPatch):
    restarts = []

    async def refused(self: faust.Worker) -> None:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 19092)]")

    monkeypatch.setattr(faust.Worker, "start", refused)
    monkeypatch.setattr(service, "START_AGAIN_AFTER_S", 0.0)
    monkeypatch.setattr(service, "restart_in_place", lambda: restarts.append(True))
    worker = object.__new__(service.RestartingWorker)  # only `start` runs: no app, no loop of its own
    asyncio.run(service.RestartingWorker.start(worker))
    assert restarts == [True]


def test_any_other_error_while_starting_is_not_hidden(monkeypatch: pytest.MonkeyPatch):
    async def broken(self: faust.Worker) -> None:
        raise ValueError("a defect")

    monkeypatch.setattr(faust.Worker, "start", broken)
    monkeypatch.setattr(service, "restart_in_place", lambda: pytest.fail("restarted on a defect"))
    worker = object.__new__(service.RestartingWorker)
    with pytest.raises(ValueError, match="a defect"):
        asyncio.run(service.RestartingWorker.start(worker))


def test_a_worker_waits_for_a_broker_a_while_then_says_none_answered(monkeypatch: pytest.MonkeyPatch):
    from streamguard.errors import BrokerError
    from streamguard.settings import Settings
    from streamguard.topics import admin

    monkeypatch.setattr(admin, "BROKER_WAIT_S", 1.0)
    with pytest.raises(BrokerError, match=r"no broker answered at 127\.0\.0\.1:1 within 1 s"):
        admin.wait_for_broker(Settings(bootstrap="127.0.0.1:1"))
