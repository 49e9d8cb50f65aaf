import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamguard.codec import DecideItem, MergeItem, decode_shard
from streamguard.pipeline import ingest
from streamguard.pipeline.ingest import MAX_DEADLETTER_BYTES, Ingest
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


def test_a_record_whose_processing_raises_is_dead_lettered_as_it_came_and_the_others_go_on(monkeypatch, caplog):
    decode = ingest.decode_event

    def failing(raw, kind, now_ms):
        if b"boom" in (raw or b""):
            raise KeyError(f"no such thing as {raw!r}")
        return decode(raw, kind, now_ms)

    monkeypatch.setattr(ingest, "decode_event", failing)
    event = valid_events()["login"]
    poison = json.dumps({**event, "event_id": "boom"}).encode()
    batch = [_incoming("login", json.dumps({**event, "event_id": f"ok-{i}"}).encode(), offset=i) for i in range(3)]
    batch.insert(1, _incoming("login", poison, offset=10, key=b"poison-key"))
    (dead,), shards = INGEST.process(batch, NOW_MS)
    assert dead.value == poison and dead.key == b"poison-key"
    headers = dict(dead.headers or [])
    assert headers["sg-error"] == b"processing_error"
    assert headers["sg-error-detail"].startswith(b"KeyError: ")
    assert (headers["sg-source-topic"], headers["sg-source-partition"], headers["sg-source-offset"]) == (
        b"events.login",
        b"3",
        b"10",
    )
    assert sorted(item.event.event_id for items in shards.values() for item in items) == ["ok-0", "ok-1", "ok-2"]
    assert "boom" not in caplog.text and "KeyError" in caplog.text


def test_a_valid_event_carries_where_it_was_read_to_its_shard():
    raw = json.dumps(valid_events()["sms"]).encode()
    _, shards = INGEST.process([_incoming("sms", raw, offset=1234)], NOW_MS)
    ((shard, (item,)),) = shards.items()
    (record,) = INGEST.shard_records(shard, [item])
    (decoded,) = decode_shard(record.value or b"")
    assert isinstance(decoded, DecideItem)
    assert (decoded.partition, decoded.offset) == (3, 1234)


def test_a_failed_answer_travels_between_workers():
    answer = MergeItem(b"d" * 12, "ip", {}, b"e" * 12, "RuntimeError: boom")
    (record,) = INGEST.shard_records(0, [answer])
    assert decode_shard(record.value or b"") == [answer]


def test_an_amount_over_64_bits_is_a_schema_dead_letter_not_a_crash():
    """Such an amount made deciding raise (paid_share overflowed a float) and could not travel between workers."""
    tx = valid_events()["transaction"]
    raw = json.dumps({**tx, "amount": 10**400, "list_amount": 1}).encode()
    (dead,), shards = INGEST.process(
        [_incoming("transaction", raw), _incoming("transaction", json.dumps(tx).encode())], NOW_MS
    )
    assert (
        dict(dead.headers or [])["sg-error"] == b"schema" and b"$.amount" in dict(dead.headers or [])["sg-error-detail"]
    )
    assert sum(map(len, shards.values())) == 1


def test_a_dead_letter_over_the_cap_keeps_its_first_bytes_and_says_how_long_it_was():
    key = b"k" * 100
    huge = b"{" + b"x" * (MAX_DEADLETTER_BYTES + 5_000)
    (dead,), _ = INGEST.process([_incoming("login", huge, key=key)], NOW_MS)
    headers = dict(dead.headers or [])
    assert headers["sg-error"] == b"too_large"
    assert headers["sg-truncated"] == str(len(huge)).encode()
    assert dead.key == key and dead.value == huge[: MAX_DEADLETTER_BYTES - len(key)]
    assert "sg-truncated-key" not in headers


def test_a_dead_letter_under_the_cap_is_whole():
    value = b"x" * (MAX_DEADLETTER_BYTES - 2)
    (dead,), _ = INGEST.process([_incoming("login", value, key=b"k1")], NOW_MS)
    assert dead.value == value and "sg-truncated" not in dict(dead.headers or [])


def test_a_key_over_the_cap_is_cut_too():
    key = b"k" * (MAX_DEADLETTER_BYTES + 1)
    (dead,), _ = INGEST.process([_incoming("login", b"{oops", key=key)], NOW_MS)
    headers = dict(dead.headers or [])
    assert dead.key == key[:MAX_DEADLETTER_BYTES] and dead.value == b""
    assert headers["sg-truncated-key"] == str(len(key)).encode() and headers["sg-truncated"] == b"5"


def _json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    containers = lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)  # noqa: E731
    return st.recursive(scalars, containers, max_leaves=8)


def _mangled(kind: str) -> st.SearchStrategy[bytes]:
    """A valid event of `kind` with a field replaced or removed, or bytes that are no event at all."""
    event = valid_events()[kind]
    fields = sorted(event)
    replaced = st.tuples(st.sampled_from(fields), _json_values()).map(lambda fv: {**event, fv[0]: fv[1]})
    removed = st.sampled_from(fields).map(lambda f: {k: v for k, v in event.items() if k != f})
    documents = (replaced | removed).map(lambda doc: json.dumps(doc).encode())
    raw = st.binary(max_size=100)
    oversized = st.integers(65_000, 70_000).map(lambda n: json.dumps({**event, "pad": " " * n}).encode())
    deep = st.integers(1, 5000).map(lambda depth: b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
    return documents | raw | oversized | deep


MESSAGES = st.sampled_from(sorted(NAMES.inputs)).flatmap(lambda kind: st.tuples(st.just(kind), _mangled(kind)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(MESSAGES, min_size=100, max_size=100))
def test_no_message_makes_ingest_raise_and_each_is_a_dead_letter_or_an_event(batch):
    """2,000 generated messages, 100 a batch: each a valid event routed once, or one dead letter with its bytes.

    The fault matrix sends 10,000 more through a real worker (tests/faults/malformed.py).
    """
    records = [_incoming(kind, value, offset=i, key=b"key-%d" % i) for i, (kind, value) in enumerate(batch)]
    outs, shards = INGEST.process(records, NOW_MS)
    routed = [item for items in shards.values() for item in items]
    assert len(outs) + len(routed) == len(records)
    for out in outs:
        source = records[int(dict(out.headers)["sg-source-offset"])]
        assert out.value == source.value and out.key == source.key
        assert dict(out.headers)["sg-error"] != b"processing_error", dict(out.headers)["sg-error-detail"]
