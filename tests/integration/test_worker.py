"""A worker against the real broker: verdicts, dead letters and the exactly-once guarantee."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.integration.harness import Stack, make_events

pytestmark = pytest.mark.integration

BAD = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"[1, 2]", "schema"),
    (json.dumps({"event_id": "x", "type": "login", "ts": 1}).encode(), "schema"),
    (
        json.dumps({"event_id": "y", "type": "sms", "ts": 1, "phone": "+8613800000000", "ip": "1.2.3.4"}).encode(),
        "type_mismatch",
    ),
    (
        json.dumps(
            {"event_id": "z", "type": "login", "ts": -5, "account_id": "a", "ip": "1.2.3.4", "success": True}
        ).encode(),
        "ts_out_of_range",
    ),
    (b'{"pad": "' + b"x" * 70_000 + b'"}', "too_large"),
]


def _assert_exactly_once(verdicts: list[dict], expected_ids: set[str]) -> None:
    ids = [v["event_id"] for v in verdicts]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} verdicts repeated"
    missing, unexpected = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing and not unexpected, f"missing {len(missing)}, unexpected {len(unexpected)}"


def _stream(stack: Stack, events: list, rate: float) -> threading.Thread:
    def send() -> None:
        chunk = max(1, int(rate / 10))
        for i in range(0, len(events), chunk):
            stack.produce((t, k, v) for t, k, v, _ in events[i : i + chunk])
            time.sleep(0.1)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_one_verdict_per_valid_event_and_one_dead_letter_per_bad_message(stack: Stack):
    events = make_events(500, "basic")
    stack.produce((t, k, v) for t, k, v, _ in events)
    stack.produce(("events.login", b"bad-%d" % i, raw) for i, (raw, _) in enumerate(BAD))
    stack.produce((t, k, v) for t, k, v, _ in events[:20])  # re-sent duplicates
    stack.start_worker()
    reader = stack.reader()
    reader.read_until(len(events), len(BAD))

    _assert_exactly_once(reader.verdicts, {e[3] for e in events})
    by_id = {json.loads(v)["event_id"]: json.loads(v) for _, _, v, _ in events}
    for verdict, key in zip(reader.verdicts, reader.verdict_keys, strict=True):
        assert key == verdict["event_id"].encode()
        assert verdict["type"] == by_id[verdict["event_id"]]["type"]
        assert verdict["ts"] == by_id[verdict["event_id"]]["ts"]
        assert verdict["decision"] in ("allow", "challenge", "review", "deny") and 0 <= verdict["score"] <= 1000
        assert verdict["reasons"] or verdict["decision"] == "allow", "reasons are empty only on allow"
        scores = [r["score"] for r in verdict["reasons"]]
        assert scores == sorted(scores, reverse=True), "most important first"
        assert verdict["ruleset"] == "default@1" and isinstance(verdict["decided_at"], int)

    assert len(reader.deadletters) == len(BAD)
    for msg in reader.deadletters:
        headers = dict(msg.headers())
        index = int(msg.key().decode().removeprefix("bad-"))
        raw, code = BAD[index]
        assert msg.value() == raw or (raw == b"" and msg.value() in (b"", None))
        assert headers["sg-error"].decode() == code
        assert headers["sg-source-topic"].decode() == stack.topic("events.login")
        assert int(headers["sg-source-offset"]) >= 0 and int(headers["sg-source-partition"]) >= 0
        assert headers["sg-error-detail"]
    reader.close()


def test_a_duplicate_on_another_partition_gets_no_verdict(stack: Stack):
    ((topic, _, value, event_id),) = make_events(1, "dup")
    other = json.loads(value) | {"ip": "192.0.2.7"}
    stack.produce([(topic, b"a", value)], partition=0)
    stack.produce([(topic, None, json.dumps(other).encode())], partition=4)
    stack.produce([(topic, b"z", value)], partition=2)
    stack.start_worker()
    reader = stack.reader()
    reader.read_until(1, settle=5)
    _assert_exactly_once(reader.verdicts, {event_id})
    reader.close()


def test_sigkill_mid_stream_loses_nothing_and_repeats_nothing(stack: Stack):
    events = make_events(12_000, "kill")
    worker = stack.start_worker()
    sender = _stream(stack, events, rate=3000)
    time.sleep(2.0)
    worker.kill()
    time.sleep(1.0)
    stack.start_worker("w1")  # same data directory: it fences and aborts its predecessor's transaction
    sender.join()
    reader = stack.reader()
    reader.read_until(len(events), timeout=120)
    _assert_exactly_once(reader.verdicts, {e[3] for e in events})
    reader.close()


def test_sigterm_stops_cleanly_and_a_restart_resumes_where_it_stopped(stack: Stack):
    first, second = make_events(1000, "term-a"), make_events(1000, "term-b")
    worker = stack.start_worker()
    stack.produce((t, k, v) for t, k, v, _ in first)
    reader = stack.reader()
    reader.read_until(len(first), settle=0)
    assert worker.terminate() == 0
    stack.produce((t, k, v) for t, k, v, _ in second)
    stack.start_worker("w1")
    reader.read_until(len(first) + len(second))
    _assert_exactly_once(reader.verdicts, {e[3] for e in first + second})
    reader.close()


def test_workers_joining_and_leaving_mid_stream_change_nothing(stack: Stack):
    events = make_events(15_000, "rebalance")
    one = stack.start_worker("w1")
    sender = _stream(stack, events, rate=3000)
    time.sleep(1.5)
    two = stack.start_worker("w2")
    assert set(one.stats()["shards"]).isdisjoint(two.stats()["shards"])
    time.sleep(1.5)
    assert one.terminate() == 0  # its partitions move to w2
    sender.join()
    reader = stack.reader()
    reader.read_until(len(events), timeout=120)
    _assert_exactly_once(reader.verdicts, {e[3] for e in events})
    assert len(two.stats()["shards"]) == 6
    reader.close()


def test_a_broker_restart_mid_stream_loses_nothing_and_repeats_nothing(stack: Stack, broker):
    events = make_events(6000, "broker")
    stack.start_worker()
    stack.produce((t, k, v) for t, k, v, _ in events[:3000])
    time.sleep(1.0)
    restarted = broker.script("restart")
    assert restarted.returncode == 0, restarted.stderr
    stack.produce((t, k, v) for t, k, v, _ in events[3000:])
    reader = stack.reader()
    reader.read_until(len(events), timeout=180)
    _assert_exactly_once(reader.verdicts, {e[3] for e in events})
    assert stack.workers[0].process.poll() is None, "the worker survived the broker's restart"
    reader.close()


def test_a_message_as_large_as_the_broker_takes_is_dead_lettered_whole(stack: Stack):
    from confluent_kafka import Producer

    raw = b'{"event_id": "big", "type": "sms", "pad": "' + b"x" * 1_900_000 + b'"}'
    producer = Producer({"bootstrap.servers": stack.broker.bootstrap, "message.max.bytes": 3_000_000})
    producer.produce(stack.topic("events.sms"), raw, b"big-key")
    assert producer.flush(30) == 0
    (topic, key, value, event_id) = make_events(5, "after-big")[3]  # a valid event behind it
    stack.produce([(topic, key, value)])
    stack.start_worker()
    reader = stack.reader()
    reader.read_until(1, 1)
    (dead,) = reader.deadletters
    assert dead.value() == raw and dead.key() == b"big-key"
    assert dict(dead.headers())["sg-error"] == b"too_large"
    assert [v["event_id"] for v in reader.verdicts] == [event_id]
    reader.close()
