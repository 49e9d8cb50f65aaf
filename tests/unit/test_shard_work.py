"""Shard work with every shard local: fingerprints are learnt, followed and forgotten; failures are dead-lettered."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamguard.codec import DecideItem, MergeItem
from streamguard.events import AnyEvent, DeviceEvent, LoginEvent
from streamguard.events import DeadLetterHeader as H
from streamguard.pipeline.records import Outgoing
from streamguard.pipeline.shard import FINGERPRINT_MEMORY_MS, Result
from streamguard.state import keys
from tests.item_pipeline import NAMES, PSEUDO, ItemPipeline

T0 = 1_790_000_000_000


@pytest.fixture
def pipeline(tmp_path: Path):
    local = ItemPipeline(tmp_path)
    yield local
    local.close()


def _values(pipeline: ItemPipeline, event) -> dict:
    return pipeline.run(event, T0)["features"]


def _login(i: int, ts: int, device: str) -> LoginEvent:
    return LoginEvent(event_id=f"l{i}", ts=ts, account_id=f"a{i}", ip="10.0.0.1", success=False, device_id=device)


def test_a_fingerprint_is_learnt_followed_through_a_device_id_reset_and_forgotten(pipeline):
    for i, device in enumerate(["d1", "d2"]):  # one phone, its id reset once
        _values(pipeline, DeviceEvent(event_id=f"r{i}", ts=T0, device_id=device, fingerprint="hw-1"))
    _values(pipeline, _login(1, T0 + 60_000, "d1"))
    values = _values(pipeline, _login(2, T0 + 120_000, "d2"))
    assert values["login_accounts_by_fingerprint_1h"] == 2.0  # both device ids lead to one fingerprint
    assert values["login_accounts_by_device_1h"] == 1.0
    _values(pipeline, _login(3, T0 + FINGERPRINT_MEMORY_MS + 3_600_000, "d9"))  # a day later, elsewhere
    later = _values(pipeline, _login(4, T0 + FINGERPRINT_MEMORY_MS + 3_700_000, "d2"))
    assert "login_accounts_by_fingerprint_1h" not in later, "a link not reported for a day is forgotten"
    assert later["login_accounts_by_device_1h"] == 1.0


# --- an event whose processing raises goes to the dead letters; the others go on ---------------------


def _decide(pipeline: ItemPipeline, events: list, offsets: dict[str, int] | None = None) -> Result:
    """Decide `events` as one batch (read on partition 4, at `offsets` by id, else 0); what came of it."""
    offsets = offsets or {}
    result = Result()
    queue: list = [DecideItem(PSEUDO.digest("event_id", e.event_id), e, 4, offsets.get(e.event_id, 0)) for e in events]
    while queue:
        for item in queue:
            pipeline.work.handle(0, item, T0, result)
        queue = list(result.items)
        result.items.clear()
    pipeline.work.flush()
    pipeline.store.apply(pipeline.store.take_changes(), 0)
    return result


def _logins(*ids: str) -> list[LoginEvent]:
    return [
        LoginEvent(event_id=i, ts=T0, account_id=f"acct_{i}", ip="10.0.0.1", success=False, device_id=f"dev_{i}")
        for i in ids
    ]


def _verdict_ids(result: Result) -> list[str]:
    return [json.loads(o.value or b"")["event_id"] for o in result.outs if o.topic.startswith("verdicts.")]


def _dead(result: Result) -> list[Outgoing]:
    return [o for o in result.outs if o.topic == NAMES.deadletter]


def _raise_for(event_id: str, wrapped: Callable[..., Any]) -> Callable[..., Any]:
    """`wrapped`, raising for the event `event_id` (its first argument of an event type)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        event = next(a for a in args if hasattr(a, "event_id"))
        if event.event_id == event_id:
            raise RuntimeError(f"cannot process the account {event.account_id}")
        return wrapped(*args, **kwargs)

    return call


def _assert_processing_error(dead: Outgoing, event: LoginEvent, offset: int) -> None:
    headers = dict(dead.headers or [])
    assert headers[H.ERROR] == b"processing_error"
    assert headers[H.DETAIL].startswith(b"RuntimeError: cannot process the account")
    assert headers[H.SOURCE_TOPIC] == NAMES.inputs["login"].encode()
    assert headers[H.SOURCE_PARTITION] == b"4"
    assert headers[H.SOURCE_OFFSET] == str(offset).encode()
    assert dead.key == event.event_id.encode()
    assert msgspec.json.decode(dead.value or b"", type=AnyEvent) == event  # the event as validated


def test_an_event_whose_decision_raises_is_dead_lettered_and_the_others_get_verdicts(pipeline, monkeypatch, caplog):
    detector = pipeline.detector
    monkeypatch.setattr(detector, "decide", _raise_for("l-boom", detector.decide))
    events = _logins("l-1", "l-boom", "l-2")
    result = _decide(pipeline, events, {"l-boom": 41})
    assert sorted(_verdict_ids(result)) == ["l-1", "l-2"]
    (dead,) = _dead(result)
    _assert_processing_error(dead, events[1], 41)
    assert result.processing_errors == 1
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "RuntimeError" in line.getMessage() and 'File "' in line.getMessage()  # the type and the frames
    assert "acct_l-boom" not in caplog.text, "the exception's message (with a raw id) stays out of the log"
    monkeypatch.undo()
    again = _decide(pipeline, events[1:2])
    assert again.outs == [] and again.duplicates == 1, "a re-sent copy of a dead-lettered event gets nothing"


def test_an_event_whose_fan_out_raises_is_dead_lettered_with_its_source(pipeline, monkeypatch):
    features = pipeline.work.features
    monkeypatch.setattr(features, "entities_of", _raise_for("l-boom", features.entities_of))
    events = _logins("l-1", "l-boom")
    result = _decide(pipeline, events, {"l-boom": 7})
    assert _verdict_ids(result) == ["l-1"]
    (dead,) = _dead(result)
    _assert_processing_error(dead, events[1], 7)


@pytest.mark.parametrize("entity", ["ip", "device_id"])  # a device id's shard was to go on to the fingerprint
def test_an_entity_whose_counting_raises_answers_failed_and_the_event_is_dead_lettered(pipeline, monkeypatch, entity):
    features = pipeline.work.features
    apply = features.apply

    def failing(store, eid, digest, event, *rest):
        if eid == entity:
            return _raise_for("l-boom", apply)(store, eid, digest, event, *rest)
        return apply(store, eid, digest, event, *rest)

    monkeypatch.setattr(features, "apply", failing)
    events = _logins("l-1", "l-boom", "l-2")
    result = _decide(pipeline, events, {"l-boom": 12})
    assert sorted(_verdict_ids(result)) == ["l-1", "l-2"]
    (dead,) = _dead(result)
    _assert_processing_error(dead, events[1], 12)
    assert result.processing_errors == 1
    assert pipeline.store.get(keys.pending(PSEUDO.digest("event_id", "l-boom"))) is None, "nothing left waiting"


def test_a_failed_answer_that_waited_in_the_store_still_dead_letters_the_event(pipeline):
    """An entity owned elsewhere answers in a later batch: the parked event is read back with its source."""
    (event,) = _logins("l-boom")
    digest = PSEUDO.digest("event_id", event.event_id)
    result = Result()
    pipeline.work.handle(0, DecideItem(digest, event, 4, 99), T0, result)
    applies, result.items = list(result.items), []
    pipeline.work.flush()  # parked: the transaction ends before any entity answers
    pipeline.store.apply(pipeline.store.take_changes(), 0)
    for apply in applies:
        failed = "RuntimeError: cannot process the account" if apply.entity == "ip" else ""
        pipeline.work.handle(0, MergeItem(digest, apply.entity, {}, apply.entity_digest, failed), T0, result)
    if any(a.resolve_fingerprint for a in applies):
        pipeline.work.handle(0, MergeItem(digest, "fingerprint", {}), T0, result)
    assert _verdict_ids(result) == []
    (dead,) = _dead(result)
    _assert_processing_error(dead, event, 99)
