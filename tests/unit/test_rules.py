"""Rulesets: parsing, the checks that reject a bad one, and block/allow lists."""

from __future__ import annotations

import json

import msgspec
import pytest

from streamguard.events import LoginEvent, TransactionEvent
from streamguard.features.spec import load_features
from streamguard.rules.lists import ListError, Lists
from streamguard.rules.program import Program
from streamguard.rules.spec import Ruleset, RulesetError, default_path, load_ruleset, parse_ruleset
from tests.local import HASHES, LocalPipeline

T0 = 1_790_000_000_000
FEATURES = load_features(300_000)


def _document(**changes) -> dict:
    doc = msgspec.to_builtins(load_ruleset(FEATURES))
    doc.update(changes)
    return doc


def _rule(**fields) -> dict:
    return {"code": "test.rule", "events": ["login"], "score": 500, "when": [], **fields}


def test_the_default_ruleset_is_valid_and_versioned():
    ruleset = load_ruleset(FEATURES)
    assert ruleset.label == f"default@{ruleset.version}"
    families = {rule.family for rule in ruleset.rule}
    assert families >= {
        "credential_stuffing", "account_takeover", "bonus_abuse", "sms_bombing",
        "sms_pumping", "device_risk", "card_testing", "amount_tampering",
    }  # fmt: skip


def test_a_ruleset_may_be_json():
    raw = json.dumps(_document(name="strict", version=2)).encode()
    assert parse_ruleset(raw, FEATURES).label == "strict@2"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rule": [_rule(when=[{"input": "no_such_feature", "op": ">=", "value": 1}])]}, "neither a feature"),
        ({"rule": [_rule(when=[{"input": "login_failed", "op": "~", "value": 1}])]}, "op"),
        ({"rule": [_rule(when=[])]}, "at least one condition"),
        ({"rule": [_rule(code="NoFamily", when=[{"input": "login_failed", "op": "==", "value": 1}])]}, "<family>"),
        ({"rule": [_rule(when=[{"input": "sms_requests_by_phone_10m", "op": ">=", "value": 1}])]}, "no `phone`"),
        ({"rule": [_rule(when=[{"input": "paid_share", "op": "<", "value": 1}])]}, "not known for login"),
        ({"rule": [_rule(score=5000, when=[{"input": "login_failed", "op": "==", "value": 1}])]}, "score"),
        ({"decision": {"challenge": 700, "review": 600, "deny": 800}}, "must rise"),
        ({"version": 0}, "version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_ruleset_is_rejected_with_the_path_of_the_problem(change, message):
    with pytest.raises(RulesetError, match=message):
        parse_ruleset(json.dumps(_document(**change)).encode(), FEATURES)


def test_broken_documents_are_rejected():
    for raw in [b"", b"name = ", b"{not json", b"\xff\xfe"]:
        with pytest.raises(RulesetError):
            parse_ruleset(raw, FEATURES)


def test_the_default_file_lives_beside_the_features():
    assert default_path().parent.parent.name == "features"


# --- lists -------------------------------------------------------------------------


def test_list_keys_and_values_are_checked():
    lists = Lists(HASHES)
    for key in [b"block:ip", b"ban:ip:1.2.3.4", b"block:planet:mars", b"block:ip:", None]:
        with pytest.raises(ListError, match="<list>:<entity>:<value>"):
            lists.apply(key, b"", T0)
    with pytest.raises(ListError, match="/16"):
        lists.apply(b"block:network:10.0.0.0/16", b"", T0)
    with pytest.raises(ListError, match="ttl_s"):
        lists.apply(b"block:ip:1.2.3.4", b'{"ttl_s": -5}', T0)
    with pytest.raises(ListError):
        lists.apply(b"block:ip:1.2.3.4", b"{oops", T0)
    assert len(lists) == 0


@pytest.fixture
def pipe() -> LocalPipeline:
    return LocalPipeline()


def _login(i: int, ip: str = "36.8.8.8", account: str = "alice") -> LoginEvent:
    return LoginEvent(event_id=f"l{i}", ts=T0 + i * 1000, account_id=account, ip=ip, success=True)


def test_a_blocked_entity_is_denied_with_a_list_reason(pipe):
    pipe.detector.lists.apply(b"block:network:36.8.8.0/24", b'{"note": "abuse desk"}', T0)
    verdict = pipe.run(_login(1))
    assert verdict["decision"] == "deny" and verdict["score"] == 1000
    (reason,) = verdict["reasons"]
    assert reason["code"] == "list.block" and reason["detail"]["entity"]["kind"] == "ip_network"
    assert "36.8.8" not in json.dumps(verdict)
    pipe.detector.lists.apply(b"block:network:36.8.8.0/24", None, T0)  # a null value removes the entry
    assert pipe.run(_login(2))["decision"] == "allow"


def test_a_block_expires_after_its_ttl(pipe):
    pipe.detector.lists.apply(b"block:account:alice", b'{"ttl_s": 60}', T0)
    assert pipe.run(_login(1), now_ms=T0 + 59_000)["decision"] == "deny"
    assert pipe.run(_login(2), now_ms=T0 + 61_000)["decision"] == "allow"


def test_an_allowed_entity_skips_velocity_reasons_but_not_tampering(pipe):
    pipe.detector.lists.apply(b"allow:account:vip", b"", T0)
    cards = [
        TransactionEvent(event_id=f"t{i}", ts=T0 + i * 1000, account_id="vip", amount=150, list_amount=150,
                         currency="CNY", kind="payment", instrument_id=f"card{i}")
        for i in range(6)
    ]  # fmt: skip
    assert all(pipe.run(t)["decision"] == "allow" for t in cards), "card-testing velocity is silenced"
    tampered = TransactionEvent(
        event_id="t99", ts=T0 + 10_000, account_id="vip", amount=1, list_amount=99_900, currency="CNY"
    )
    assert pipe.run(tampered)["decision"] == "deny"


def test_a_replaced_ruleset_decides_from_then_on(pipe):
    strict = msgspec.convert(_document(version=2, decision={"challenge": 1, "review": 2, "deny": 3}), Ruleset)
    pipe.detector.program = Program(strict, FEATURES)
    verdict = pipe.run(TransactionEvent(event_id="x", ts=T0, account_id="a", amount=1, list_amount=4, currency="CNY"))
    assert verdict["ruleset"] == "default@2" and verdict["decision"] == "deny"
