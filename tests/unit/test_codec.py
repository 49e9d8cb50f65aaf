import json

import pytest

from streamguard.codec import MAX_EVENT_BYTES, decode_event, event_type
from streamguard.errors import InvalidEvent
from tests.unit.events_fixtures import NOW_MS, valid_events


@pytest.mark.parametrize("kind", list(valid_events()))
def test_every_type_decodes(kind):
    event = decode_event(json.dumps(valid_events()[kind]).encode(), kind, NOW_MS)
    assert event_type(event) == kind


def test_unknown_fields_are_ignored():
    raw = {**valid_events()["login"], "new_field": {"nested": [1, 2]}}
    assert decode_event(json.dumps(raw).encode(), "login", NOW_MS).event_id == "e-login"


def test_old_timestamps_are_valid():
    raw = valid_events(ts=1_000)["sms"]
    assert decode_event(json.dumps(raw).encode(), "sms", NOW_MS).ts == 1_000


def _code(raw: bytes | None, topic_type: str = "login") -> tuple[str, str]:
    with pytest.raises(InvalidEvent) as info:
        decode_event(raw, topic_type, NOW_MS)
    return info.value.code, info.value.detail


def _login(**changes) -> bytes:
    event = {**valid_events()["login"], **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "code", "path"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"\xff\xfe\x00garbage\xc3\x28", "invalid_json", None),
        (_login().replace(str(NOW_MS).encode(), b"NaN"), "invalid_json", None),
        (json.dumps([valid_events()["login"]]).encode(), "schema", None),
        (b"[" * 5000 + b"]" * 5000, "schema", None),
        (_login(event_id=...), "schema", "event_id"),
        (_login(type=...), "schema", "type"),
        (_login(type="teleport"), "schema", "$.type"),
        (_login(ts="yesterday"), "schema", "$.ts"),
        (_login(ts=1.5), "schema", "$.ts"),
        (_login(event_id="e" * 5000), "schema", "$.event_id"),
        (_login(event_id=""), "schema", "$.event_id"),
        (_login(success="yes"), "schema", "$.success"),
        (_login(ip="999.1.1.1"), "schema", "$.ip"),
        (_login(ip="not-an-ip"), "schema", "$.ip"),
        (_login(method="telepathy"), "schema", "$.method"),
        (_login(type="sms"), "type_mismatch", "$.type"),
        (_login(ts=0), "ts_out_of_range", "$.ts"),
        (_login(ts=-5), "ts_out_of_range", "$.ts"),
        (_login(ts=NOW_MS + 3 * 86_400_000), "ts_out_of_range", "$.ts"),
        (_login(pad="x" * MAX_EVENT_BYTES), "too_large", None),
        (None, "invalid_json", None),
    ],
)
def test_invalid_messages(raw, code, path):
    got_code, detail = _code(raw)
    assert got_code == code
    if path:
        assert path in detail


def test_a_type_of_another_topic_is_a_mismatch():
    raw = json.dumps(valid_events()["device"]).encode()
    assert _code(raw, "login")[0] == "type_mismatch"


@pytest.mark.parametrize(
    ("kind", "changes", "path"),
    [
        ("transaction", {"amount": -100}, "$.amount"),
        # Over 64 bits: the ratio to list_amount overflowed a float, and msgpack cannot carry them between workers.
        ("transaction", {"amount": 10**400, "list_amount": 1}, "$.amount"),
        ("transaction", {"amount": 2**63}, "$.amount"),
        ("transaction", {"list_amount": 2**64}, "$.list_amount"),
        ("transaction", {"currency": "yuan"}, "$.currency"),
        ("transaction", {"amount": ...}, "amount"),
        ("sms", {"phone": "13800138000"}, "$.phone"),
        ("sms", {"phone": ...}, "phone"),
        ("device", {"platform": "symbian"}, "$.platform"),
        ("device", {"is_rooted": "no"}, "$.is_rooted"),
        ("registration", {"ip": ...}, "ip"),
    ],
)
def test_per_type_constraints(kind, changes, path):
    event = {**valid_events()[kind], **changes}
    raw = json.dumps({k: v for k, v in event.items() if v is not ...}).encode()
    code, detail = _code(raw, kind)
    assert code == "schema"
    assert path in detail


def test_a_future_within_five_minutes_is_fine():
    raw = _login(ts=NOW_MS + 4 * 60_000)
    assert decode_event(raw, "login", NOW_MS).ts == NOW_MS + 4 * 60_000


def test_amounts_up_to_64_bits_are_valid():
    raw = json.dumps({**valid_events()["transaction"], "amount": 2**63 - 1, "list_amount": 2**63 - 1}).encode()
    assert decode_event(raw, "transaction", NOW_MS).amount == 2**63 - 1


def test_json_nested_too_deeply_is_a_schema_error_not_a_crash():
    raw = b'{"event_id": "x", "pad": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw, "login", NOW_MS)
    assert caught.value.code == "schema"
