import json

from streamguard.codec import decode_shard
from streamguard.pipeline.ingest import Ingest
from streamguard.pipeline.records import Incoming
from streamguard.privacy import Pseudonymizer
from streamguard.topics.names import TopicNames
from streamguard.topics.spec import load_specs
from tests.unit.events_fixtures import NOW_MS, valid_events

NAMES = TopicNames.resolve(load_specs("", "sg"), "", "sg")
INGEST = Ingest(NAMES, Pseudonymizer(b"k" * 32))


def _incoming(kind: str, value: bytes | None, offset: int = 7, key: bytes | None = b"k1") -> Incoming:
    return Incoming(NAMES.inputs[kind], 3, offset, key, value)


def test_an_invalid_message_becomes_a_dead_letter_with_the_evidence():
    (out,), shards = INGEST.process([_incoming("login", b"{oops", offset=42)], NOW_MS)
    assert shards == {}
    assert out.topic == "deadletter"
    assert out.value == b"{oops" and out.key == b"k1"
    headers = dict(out.headers)
    assert headers["sg-error"] == b"invalid_json"
    assert headers["sg-source-topic"] == b"events.login"
    assert headers["sg-source-partition"] == b"3"
    assert headers["sg-source-offset"] == b"42"
    assert headers["sg-error-detail"]


def test_a_tombstone_is_dead_lettered_as_it_came():
    (out,), _ = INGEST.process([_incoming("sms", None, key=None)], NOW_MS)
    assert out.value is None and out.key is None
    assert dict(out.headers)["sg-error"] == b"invalid_json"


def test_valid_events_are_grouped_per_shard_and_travel_in_one_record_each():
    batch = [
        _incoming(kind, json.dumps({**event, "event_id": f"{kind}-{i}"}).encode())
        for i in range(50)
        for kind, event in valid_events().items()
    ]
    dead, shards = INGEST.process(batch, NOW_MS)
    assert dead == []
    assert set(shards) <= set(range(NAMES.shards)) and len(shards) > 1
    records = [r for shard, items in shards.items() for r in INGEST.shard_records(shard, items)]
    assert all(r.topic == NAMES.shard_topic for r in records)
    ids = [item.event.event_id for r in records for item in decode_shard(r.value)]
    assert sorted(ids) == sorted(f"{k}-{i}" for i in range(50) for k in valid_events())


def test_too_many_items_for_one_record_make_several(monkeypatch):
    monkeypatch.setattr("streamguard.pipeline.ingest.MAX_RECORD_BYTES", 2_000)
    event = valid_events()["login"]
    batch = [_incoming("login", json.dumps({**event, "event_id": f"x-{i}"}).encode()) for i in range(200)]
    _, shards = INGEST.process(batch, NOW_MS)
    shard, items = max(shards.items(), key=lambda kv: len(kv[1]))
    records = INGEST.shard_records(shard, items)
    assert len(records) > 1 and all(len(r.value or b"") <= 2_000 for r in records)
    assert [i for r in records for i in decode_shard(r.value or b"")] == items


def test_the_shard_depends_on_the_event_id_only():
    event = valid_events()["login"]
    _, first = INGEST.process([_incoming("login", json.dumps(event).encode(), key=b"a")], NOW_MS)
    moved = {**event, "ip": "10.9.9.9"}
    _, second = INGEST.process([Incoming(NAMES.inputs["login"], 5, 1, None, json.dumps(moved).encode())], NOW_MS)
    assert list(first) == list(second)
