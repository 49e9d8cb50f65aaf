"""Every attack family on small hand-written sequences, and the normal life that must pass.

Each test plays events through the batch core (features, rules, verdict) in
one process, by the in-memory driver, with the default ruleset; see
tests/local.py.
"""

from __future__ import annotations

import itertools

import orjson
import pytest

from streamguard.events import DeviceEvent, LoginEvent, RegistrationEvent, SmsEvent, TransactionEvent
from tests.local import LocalPipeline

T0 = 1_790_000_000_000
S = 1_000
MIN = 60 * S
_ids = itertools.count()


def eid() -> str:
    return f"e{next(_ids)}"


@pytest.fixture
def pipe() -> LocalPipeline:
    return LocalPipeline(features_topic=False)  # as a worker runs by default


def families(verdict: dict) -> set[str]:
    return {r["code"].split(".")[0] for r in verdict["reasons"]}


def report(ts: int, device: str, account: str | None = None, **flags: bool) -> DeviceEvent:
    return DeviceEvent(
        event_id=eid(), ts=ts, device_id=device, account_id=account, ip="36.1.2.3", fingerprint=f"fp-{device}", **flags
    )


def login(ts: int, account: str, ip: str, success: bool, device: str | None = None, reason: str | None = None):
    return LoginEvent(
        event_id=eid(),
        ts=ts,
        account_id=account,
        ip=ip,
        success=success,
        device_id=device,
        failure_reason=reason if reason else (None if success else "bad_password"),  # type: ignore[arg-type]
    )


def sms(ts: int, phone: str, ip: str, device: str | None = None) -> SmsEvent:
    return SmsEvent(event_id=eid(), ts=ts, phone=phone, ip=ip, device_id=device, purpose="register")


def pay(ts: int, account: str, amount: int, **fields) -> TransactionEvent:
    fields.setdefault("list_amount", amount)
    return TransactionEvent(event_id=eid(), ts=ts, account_id=account, amount=amount, currency="CNY", **fields)


# --- credential stuffing --------------------------------------------------------


def test_one_ip_failing_on_many_accounts_is_credential_stuffing(pipe):
    verdicts = [pipe.run(login(T0 + i * 10 * S, f"victim{i}", "45.9.9.9", False)) for i in range(15)]
    assert verdicts[0]["decision"] == "allow"
    last = verdicts[-1]
    assert "credential_stuffing" in families(last) and last["decision"] in ("review", "deny")
    reason = next(r for r in last["reasons"] if r["code"] == "credential_stuffing.ip_failures")
    assert reason["detail"]["feature"] == "login_failures_by_ip_10m"
    assert reason["detail"]["value"] == 15 and reason["detail"]["threshold"] == 8
    assert reason["detail"]["entity"]["kind"] == "ip"
    assert b"45.9.9.9" not in orjson.dumps(last), "identifiers in details are pseudonymised"


def test_a_network_failing_a_little_from_each_address_is_credential_stuffing(pipe):
    verdicts = [
        pipe.run(login(T0 + i * MIN, f"victim{i}", f"101.7.7.{i + 1}", False, f"bot{i % 3}", "no_such_account"))
        for i in range(12)
    ]
    assert "credential_stuffing" in families(verdicts[-1])
    assert verdicts[-1]["decision"] != "allow"


def test_a_carrier_nat_with_hundreds_of_users_and_a_few_typos_passes(pipe):
    for i in range(300):
        ts = T0 + i * 2 * S
        pipe.run(report(ts, f"phone{i}", f"user{i}"))
        if i % 20 == 0:  # a typo now and then
            assert pipe.run(login(ts + S, f"user{i}", "10.64.0.1", False, f"phone{i}"))["decision"] == "allow"
        assert pipe.run(login(ts + 2 * S, f"user{i}", "10.64.0.1", True, f"phone{i}"))["decision"] == "allow"


def test_an_office_after_a_forced_password_change_passes(pipe):
    for i in range(40):
        ts = T0 + i * 15 * S
        pipe.run(report(ts, f"laptop{i}", f"staff{i}"))
        first = pipe.run(login(ts + S, f"staff{i}", "203.0.113.9", False, f"laptop{i}"))
        then = pipe.run(login(ts + 5 * S, f"staff{i}", "203.0.113.9", True, f"laptop{i}"))
        assert first["decision"] == "allow" and then["decision"] == "allow", i


# --- account takeover -------------------------------------------------------------


def test_failures_from_many_places_then_a_success_then_money_out_is_account_takeover(pipe):
    failures = [pipe.run(login(T0 + i * 30 * S, "victim", f"117.8.{i}.1", False, f"rnd{i}")) for i in range(6)]
    assert "account_takeover" in families(failures[-1]) and failures[-1]["decision"] in ("review", "deny")
    success = pipe.run(login(T0 + 4 * MIN, "victim", "117.8.2.1", True, "attacker-phone"))
    assert "account_takeover.success_after_failures" in [r["code"] for r in success["reasons"]]
    withdrawal = pipe.run(pay(T0 + 6 * MIN, "victim", 500_000, kind="withdrawal", list_amount=None))
    assert withdrawal["decision"] == "deny"
    assert withdrawal["reasons"][0]["code"] == "account_takeover.money_out_after_failures"


def test_the_owner_logging_in_on_their_own_phone_after_an_attack_is_not_held(pipe):
    for i in range(4):
        pipe.run(login(T0 + i * 30 * S, "owner", f"117.9.{i}.1", False, f"rnd{i}"))
    pipe.run(report(T0 + 3 * MIN, "own-phone", "owner"))
    verdict = pipe.run(login(T0 + 3 * MIN + 5 * S, "owner", "36.5.5.5", True, "own-phone"))
    assert verdict["decision"] in ("allow", "challenge")


# --- SMS bombing and pumping --------------------------------------------------------


def test_one_phone_flooded_with_codes_from_many_sources_is_sms_bombing(pipe):
    verdicts = [pipe.run(sms(T0 + i * 20 * S, "+8613800138000", f"58.1.{i}.1")) for i in range(8)]
    assert verdicts[0]["decision"] == "allow"
    assert families(verdicts[-1]) == {"sms_bombing"} and verdicts[-1]["decision"] in ("review", "deny")


def test_a_code_that_did_not_arrive_and_one_retry_passes(pipe):
    assert pipe.run(sms(T0, "+8613900139000", "36.2.2.2", "p1"))["decision"] == "allow"
    assert pipe.run(sms(T0 + 90 * S, "+8613900139000", "36.2.2.2", "p1"))["decision"] == "allow"


def test_one_source_requesting_codes_for_consecutive_numbers_abroad_is_sms_pumping(pipe):
    verdicts = [pipe.run(sms(T0 + i * 5 * S, f"+8821612{3400 + i}", "36.3.3.3", "pump")) for i in range(8)]
    assert "sms_pumping" in families(verdicts[-1]) and verdicts[-1]["decision"] in ("review", "deny")


# --- bonus abuse and device risk -------------------------------------------------------


def test_a_registration_farm_on_an_emulator_is_bonus_abuse(pipe):
    assert "device_risk" in families(pipe.run(report(T0, "farm", is_emulator=True)))
    verdicts = []
    for i in range(5):
        ts = T0 + (i + 1) * MIN
        phone = f"+861701234{5600 + 2 * i}"
        verdicts.append(
            pipe.run(
                RegistrationEvent(
                    event_id=eid(), ts=ts, account_id=f"new{i}", ip="36.4.4.4", device_id="farm", phone=phone
                )
            )
        )
        verdicts.append(pipe.run(pay(ts + 30 * S, f"new{i}", 1000, kind="promo_redeem", device_id="farm")))
    assert {"bonus_abuse", "device_risk"} <= families(verdicts[-2])
    assert verdicts[-1]["decision"] in ("review", "deny")
    assert "bonus_abuse.device_promo_redemptions" in [r["code"] for r in verdicts[-1]["reasons"]]


def test_a_device_id_reset_tool_is_seen_through_the_fingerprint(pipe):
    for i in range(4):
        ts = T0 + i * MIN
        pipe.run(DeviceEvent(event_id=eid(), ts=ts, device_id=f"reset{i}", fingerprint="same-hardware"))
        verdict = pipe.run(
            RegistrationEvent(
                event_id=eid(), ts=ts + S, account_id=f"fresh{i}", ip=f"36.6.{i}.1", device_id=f"reset{i}"
            )
        )
    assert "bonus_abuse.fingerprint_registrations" in [r["code"] for r in verdict["reasons"]]


def test_a_flash_promotion_with_hundreds_redeeming_one_code_passes(pipe):
    for i in range(200):
        ts = T0 + i * S
        pipe.run(report(ts, f"ph{i}", f"buyer{i}"))
        verdict = pipe.run(
            pay(ts + 500, f"buyer{i}", 1000, kind="promo_redeem", promo_code="FLASH50", device_id=f"ph{i}")
        )
        assert verdict["decision"] == "allow", i


def test_one_hooked_device_logging_in_to_many_accounts_is_device_risk(pipe):
    assert pipe.run(report(T0, "rig", is_hooked=True, gps_mocked=True))["decision"] != "allow"
    verdicts = [pipe.run(login(T0 + (i + 1) * MIN, f"acct{i}", f"120.1.{i}.1", True, "rig")) for i in range(10)]
    assert all(families(v) == {"device_risk"} for v in verdicts)
    assert verdicts[-1]["decision"] == "deny"


def test_a_family_phone_rooted_phones_and_vpn_users_pass(pipe):
    for i, account in enumerate(["mum", "dad", "kid"]):
        assert pipe.run(report(T0 + i * MIN, "family-phone", account))["decision"] == "allow"
        assert pipe.run(login(T0 + i * MIN + S, account, "36.7.7.7", True, "family-phone"))["decision"] == "allow"
    assert pipe.run(report(T0, "rooted", "geek", is_rooted=True))["decision"] == "allow"
    assert pipe.run(report(T0, "vpn", "private", uses_proxy=True))["decision"] == "allow"


# --- card testing and amount tampering ------------------------------------------------------


def test_many_cards_with_small_amounts_on_one_account_is_card_testing(pipe):
    verdicts = [
        pipe.run(pay(T0 + i * 20 * S, "tester", 150 + i, instrument_id=f"card{i}", kind="payment", device_id="d"))
        for i in range(6)
    ]
    assert families(verdicts[-1]) == {"card_testing"} and verdicts[-1]["decision"] in ("review", "deny")


def test_a_price_paid_far_below_the_price_shown_is_amount_tampering(pipe):
    verdict = pipe.run(pay(T0, "shopper", 1, list_amount=999_900, kind="payment"))
    assert verdict["decision"] == "deny"
    reason = verdict["reasons"][0]
    assert reason["code"] == "amount_tampering.paid_far_below_list"
    assert families(verdict) == {"amount_tampering"}
    assert reason["detail"]["value"] == pytest.approx(1 / 999_900, abs=1e-4)
    assert pipe.run(pay(T0 + S, "shopper", 95_000, list_amount=100_000))["decision"] == "allow"  # a small discount


def test_verdicts_carry_the_ruleset_and_an_empty_reason_list_on_allow(pipe):
    verdict = pipe.run(pay(T0, "someone", 5_000))
    assert verdict["ruleset"] == "default@1" and verdict["reasons"] == [] and verdict["score"] == 0


def test_money_out_from_a_device_that_never_ran_the_app_is_challenged_at_least(pipe):
    verdict = pipe.run(pay(T0, "quiet", 300_000, kind="withdrawal", list_amount=None, device_id="script"))
    assert "account_takeover.money_out_unattested_device" in [r["code"] for r in verdict["reasons"]]
    assert verdict["decision"] != "allow"
    pipe.run(report(T0, "own-phone", "saver"))
    assert (
        pipe.run(pay(T0 + 5 * S, "saver", 300_000, kind="withdrawal", list_amount=None, device_id="own-phone"))[
            "decision"
        ]
        == "allow"
    )
