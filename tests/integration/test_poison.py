"""Poison records against a real worker: bad input never stops the stream (guarantee 4).

A valid event whose processing raises goes to the dead letters
(`processing_error`) and every other event gets its verdict, with the worker
process never restarting. No input makes deciding raise any more (the one
that did, an amount over 64 bits, is now a `schema` dead letter: tested here
too), so the failure is injected by the test: the worker is started through a
launcher that patches the detector and the batch core's columns to raise for given event
ids, and otherwise runs `streamguard worker` unchanged. Production code has
no hook for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from streamguard.pipeline.ingest import MAX_DEADLETTER_BYTES
from streamguard.settings import Settings
from streamguard.topics import admin
from tests.integration.harness import Stack, Worker, free_port, make_events

pytestmark = pytest.mark.integration

# argv: the id whose decision raises, the id whose columns raise (the batch core's Python per event), then the
# CLI's arguments. The first is made to fire a rule, so that it goes through the detector as a fired event does.
LAUNCHER = """
import sys

from streamguard.columnar import core
from streamguard.verdicts import Detector

decide_fails, columns_fail = sys.argv[1], sys.argv[2]
decide, evaluate, columns_of = Detector.decide, core.evaluate_rules, core.columns_of


def failing_decide(self, event, *args):
    if event.event_id == decide_fails:
        raise RuntimeError(f"injected into deciding {event.event_id}")
    return decide(self, event, *args)


def firing_evaluate(program, kind, events, *args):
    evaluated = evaluate(program, kind, events, *args)
    for j, event in enumerate(events):
        evaluated.fired_any[j] |= event.event_id == decide_fails
    return evaluated


def failing_columns(events, *args):
    if any(event.event_id == columns_fail for event in events):
        raise ZeroDivisionError(f"injected into the columns of {columns_fail}")
    return columns_of(events, *args)


Detector.decide, core.evaluate_rules, core.columns_of = failing_decide, firing_evaluate, failing_columns
from streamguard.cli import main

sys.exit(main(sys.argv[3:]))
"""


def _start_failing_worker(stack: Stack, decide_fails: str, columns_fail: str, name: str = "w1") -> Worker:
    """A worker as `Stack.start_worker` starts one, through `LAUNCHER`."""
    port = free_port()
    log = stack.workdir / f"{name}.log"
    env = {
        **os.environ,
        **stack.env(),
        "STREAMGUARD_WEB_PORT": str(port),
        "STREAMGUARD_DATA_DIR": str(stack.workdir / name),
    }
    with log.open("ab") as out:
        command = [sys.executable, "-c", LAUNCHER, decide_fails, columns_fail, "worker"]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    worker = Worker(process, port, log)
    stack.workers.append(worker)
    worker.wait_ready()
    return worker


def _event(event_id: str, i: int, ts: int) -> tuple[str, bytes, bytes]:
    value = {"event_id": event_id, "type": "login", "ts": ts, "account_id": f"acct_{i}", "ip": f"10.9.0.{i}",
             "success": False, "device_id": f"dev_{i}"}  # fmt: skip
    return "events.login", f"acct_{i}".encode(), json.dumps(value).encode()


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def _record_at(stack: Stack, topic: bytes, partition: bytes, offset: bytes) -> bytes | None:
    """The value of the input record that dead-letter headers name."""
    consumer = Consumer({"bootstrap.servers": stack.broker.bootstrap, "group.id": f"peek-{time.time_ns()}"})
    try:
        consumer.assign([TopicPartition(topic.decode(), int(partition), int(offset))])
        msg = consumer.poll(10)
        assert msg is not None and msg.error() is None and msg.offset() == int(offset)
        value: bytes | None = msg.value()
        return value
    finally:
        consumer.close()


@pytest.mark.parametrize("workers", [1, 2])  # with two, items and failed answers travel between workers
def test_an_event_whose_processing_raises_is_dead_lettered_and_the_stream_goes_on(stack: Stack, workers: int):
    before, after = make_events(300, "before"), make_events(300, "after")
    now = int(time.time() * 1000)
    poison = {"poison-decide": _event("poison-decide", 1, now), "poison-columns": _event("poison-columns", 2, now)}
    running = [_start_failing_worker(stack, "poison-decide", "poison-columns", f"w{i + 1}") for i in range(workers)]
    _wait_for(lambda: sorted(s for w in running for s in w.stats()["shards"]) == list(range(6)))
    pids = [w.process.pid for w in running]
    stack.produce((t, k, v) for t, k, v, _ in before[:150])
    stack.produce(poison.values())
    stack.produce((t, k, v) for t, k, v, _ in before[150:])
    reader = stack.reader()
    reader.read_until(len(before), 2)
    # Re-sent: the event whose decision raised was counted and is remembered, so it gets nothing more; the
    # one whose columns raised was neither, so it is tried again (and here fails again).
    stack.produce(poison.values())
    stack.produce((t, k, v) for t, k, v, _ in after)
    reader.read_until(len(before) + len(after), 3, settle=5)

    ids = [v["event_id"] for v in reader.verdicts]
    assert sorted(ids) == sorted(e[3] for e in before + after), "exactly one verdict per other event"
    assert not set(poison) & set(ids)
    by_id = {json.loads(msg.value())["event_id"]: msg for msg in reader.deadletters}
    assert len(reader.deadletters) == 3 and set(by_id) == set(poison)
    for event_id, kind in (("poison-decide", b"RuntimeError: "), ("poison-columns", b"ZeroDivisionError: ")):
        dead, (_, key, value) = by_id[event_id], poison[event_id]
        assert (dead.key(), dead.value()) == (key, value), "the input record's own key and bytes"
        headers = dict(dead.headers())
        assert headers["sg-error"] == b"processing_error"
        assert headers["sg-error-detail"].startswith(kind)
        assert headers["sg-source-topic"] == stack.topic("events.login").encode()
        source = (headers["sg-source-topic"], headers["sg-source-partition"], headers["sg-source-offset"])
        assert _record_at(stack, *source) == value, "the headers name the event's input record"

    assert [w.process.poll() for w in running] == [None] * workers, "no worker stopped"
    assert [w.process.pid for w in running] == pids, "no worker restarted"
    _wait_for(lambda: sum(w.stats()["processing_errors"] for w in running) == 3)
    assert sum(w.stats()["deadletters"].get("processing_error", 0) for w in running) == 3
    log = "".join(w.log.read_text() for w in running)
    assert log.count("raised RuntimeError") == 1 and log.count("raised ZeroDivisionError") == 2, "logged each time"
    assert "injected into" not in log and "acct_1" not in log, "the exception's message stays out of the log"
    assert "Traceback (most recent call last)" not in log and "engine stopped" not in log
    reader.close()


def test_an_amount_that_made_deciding_raise_is_a_schema_dead_letter_and_the_stream_goes_on(stack: Stack):
    """amount / list_amount overflowed a float: before, the worker crashed on this event, restart after restart."""
    events = make_events(100, "around")
    now = int(time.time() * 1000)
    huge = {"event_id": "huge-amount", "type": "transaction", "ts": now, "account_id": "acct_1", "amount": 10**400,
            "list_amount": 1, "currency": "CNY", "kind": "payment"}  # fmt: skip
    stack.produce((t, k, v) for t, k, v, _ in events[:50])
    stack.produce([("events.transaction", b"huge", json.dumps(huge).encode())])
    stack.produce((t, k, v) for t, k, v, _ in events[50:])
    worker = stack.start_worker()
    pid = worker.process.pid
    reader = stack.reader()
    reader.read_until(len(events), 1)
    assert sorted(v["event_id"] for v in reader.verdicts) == sorted(e[3] for e in events)
    (dead,) = reader.deadletters
    headers = dict(dead.headers())
    assert headers["sg-error"] == b"schema" and b"$.amount" in headers["sg-error-detail"]
    assert dead.value() == json.dumps(huge).encode() and dead.key() == b"huge"
    assert worker.process.poll() is None and worker.process.pid == pid
    reader.close()


def test_a_message_over_the_dead_letter_limit_is_dead_lettered_truncated(stack: Stack):
    """An input topic may take more than the deadletter topic (8 MiB): the dead letter keeps the first bytes."""
    topic = stack.topic("events.sms")
    client = admin.admin_client(Settings(bootstrap=stack.broker.bootstrap))
    entry = ConfigEntry("max.message.bytes", str(12 << 20), incremental_operation=AlterConfigOpType.SET)
    for future in client.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])]
    ).values():
        future.result()
    raw = b'{"event_id": "huge", "type": "sms", "pad": "' + b"x" * (9 << 20) + b'"}'
    producer = Producer({"bootstrap.servers": stack.broker.bootstrap, "message.max.bytes": 12 << 20})
    failures: list[object] = []
    for _ in range(30):  # until the broker applies the topic's new limit
        failures.clear()
        producer.produce(topic, raw, b"huge-key", on_delivery=lambda err, _msg: err and failures.append(err))
        assert producer.flush(60) == 0
        if not failures:
            break
        time.sleep(1.0)
    assert not failures, failures
    (after_topic, key, value, event_id) = make_events(4, "after-huge")[3]  # a valid event behind it
    stack.produce([(after_topic, key, value)])
    worker = stack.start_worker()
    reader = stack.reader()
    reader.read_until(1, 1, timeout=90)
    (dead,) = reader.deadletters
    headers = dict(dead.headers())
    assert headers["sg-error"] == b"too_large" and headers["sg-truncated"] == str(len(raw)).encode()
    assert dead.key() == b"huge-key" and dead.value() == raw[: MAX_DEADLETTER_BYTES - len(b"huge-key")]
    assert [v["event_id"] for v in reader.verdicts] == [event_id]
    assert worker.stats()["aborted_transactions"] == 0
    reader.close()
