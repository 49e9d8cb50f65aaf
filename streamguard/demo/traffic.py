"""Labelled demo traffic: benign users, attack campaigns and malformed messages.

A small, self-contained generator so that the demo needs nothing outside the
package. It yields `Message`s in event-time order with `ts` near the wall
clock; `label` says what the message is ("benign", an attack family,
"bad_input" or "duplicate").
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

BENIGN_PREFIXES = ("+86130", "+86135", "+86138", "+86150", "+86186")


@dataclass(frozen=True)
class Message:
    topic: str  # contract name, without prefix
    key: bytes | None
    value: bytes
    label: str
    event_id: str | None  # None for messages that are not valid events


@dataclass
class User:
    account: str
    phone: str
    device: str
    ip: str


@dataclass
class DemoTraffic:
    """An endless, seeded stream of demo messages; `next_message(now_ms)` draws one."""

    seed: int = 1
    run: str = ""  # prefix of the event ids; a new one per run, or every rerun would be all duplicates
    attack_share: float = 0.08
    bad_share: float = 0.01
    duplicate_share: float = 0.005
    rng: random.Random = field(init=False)
    users: list[User] = field(init=False)
    counter: Iterator[int] = field(init=False)
    recent: list[Message] = field(init=False, default_factory=list)
    pending: list[tuple[str, dict[str, Any]]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.users = [self._user() for _ in range(2000)]
        self.counter = itertools.count(1)
        self.run = self.run or f"demo{self.seed}-{time.time_ns() // 1_000_000:x}"

    def next_message(self, now_ms: int) -> Message:
        roll = self.rng.random()
        if roll < self.bad_share:
            return self._bad(now_ms)
        if roll < self.bad_share + self.duplicate_share and self.recent:
            original = self.rng.choice(self.recent)
            return Message(original.topic, original.key, original.value, "duplicate", None)
        if not self.pending:
            family = "benign"
            if self.rng.random() < self.attack_share:
                family = self.rng.choice(list(ATTACKS))
            self.pending = [(family, e) for e in reversed(self._episode(family))]
        family, event = self.pending.pop()
        return self._valid(family, event, now_ms)

    # --- building events -------------------------------------------------------

    def _valid(self, label: str, fields: dict[str, Any], now_ms: int) -> Message:
        event = {"event_id": f"{self.run}-{next(self.counter):08d}", "ts": now_ms, **fields}
        key = event.get("account_id") or event.get("phone") or event.get("device_id")
        message = Message(
            f"events.{event['type']}", key.encode() if key else None, orjson.dumps(event), label, event["event_id"]
        )
        self.recent = [*self.recent[-199:], message]
        return message

    def _episode(self, family: str) -> list[dict[str, Any]]:
        return ATTACKS.get(family, _benign_session)(self)

    def _user(self) -> User:
        rng = self.rng
        return User(f"acct_{rng.randrange(16**10):010x}", _phone(rng), f"dev_{rng.randrange(16**12):012x}", _ip(rng))

    def _bad(self, now_ms: int) -> Message:
        topic = f"events.{self.rng.choice(['device', 'login', 'sms', 'transaction'])}"
        event = {"event_id": f"{self.run}-bad{next(self.counter):08d}", "type": "login", "ts": now_ms}
        makers: list[Callable[[], bytes]] = [
            lambda: b"{oops",
            lambda: orjson.dumps([event]),
            lambda: orjson.dumps({**event, "ts": "yesterday"}),
            lambda: orjson.dumps({**event, "ts": now_ms + 86_400_000}),
            lambda: orjson.dumps({**event, "pad": "x" * 70_000}),
            lambda: b"\xff\xfe garbage",
        ]
        return Message(topic, None, self.rng.choice(makers)(), "bad_input", None)


def _phone(rng: random.Random) -> str:
    return rng.choice(BENIGN_PREFIXES) + f"{rng.randrange(10**8):08d}"


def _ip(rng: random.Random) -> str:
    return (
        f"{rng.choice([36, 58, 110, 113, 117, 120, 183, 221])}.{rng.randrange(256)}.{rng.randrange(256)}."
        f"{rng.randrange(1, 255)}"
    )


def _benign_session(t: DemoTraffic) -> list[dict[str, Any]]:
    u = t.rng.choice(t.users)
    events: list[dict[str, Any]] = [
        {
            "type": "device",
            "device_id": u.device,
            "account_id": u.account,
            "ip": u.ip,
            "platform": "android",
            "fingerprint": f"fp_{u.device[4:]}",
            "is_emulator": False,
            "is_rooted": t.rng.random() < 0.01,
        },
    ]
    if t.rng.random() < 0.05:
        events.append(
            {
                "type": "login",
                "account_id": u.account,
                "ip": u.ip,
                "device_id": u.device,
                "success": False,
                "failure_reason": "bad_password",
                "method": "password",
            }
        )
    events.append(
        {
            "type": "login",
            "account_id": u.account,
            "ip": u.ip,
            "device_id": u.device,
            "success": True,
            "method": "password",
        }
    )
    if t.rng.random() < 0.3:
        amount = t.rng.randrange(500, 50_000)
        events.append(
            {
                "type": "transaction",
                "account_id": u.account,
                "ip": u.ip,
                "device_id": u.device,
                "kind": "payment",
                "amount": amount,
                "list_amount": amount,
                "currency": "CNY",
                "instrument_id": f"card_{u.account[5:]}",
                "merchant_id": f"m_{t.rng.randrange(300)}",
            }
        )
    return events


def _credential_stuffing(t: DemoTraffic) -> list[dict[str, Any]]:
    ip = f"45.9.{t.rng.randrange(4)}.{t.rng.randrange(1, 20)}"
    return [
        {
            "type": "login",
            "account_id": f"acct_{t.rng.randrange(16**10):010x}",
            "ip": ip,
            "device_id": f"dev_{t.rng.randrange(16**12):012x}",
            "success": False,
            "failure_reason": t.rng.choice(["bad_password", "no_such_account"]),
            "method": "password",
        }
        for _ in range(t.rng.randrange(5, 15))
    ]


def _sms_bombing(t: DemoTraffic) -> list[dict[str, Any]]:
    phone = f"+8613900{t.rng.randrange(3):06d}"
    return [
        {"type": "sms", "phone": phone, "ip": _ip(t.rng), "purpose": "register"} for _ in range(t.rng.randrange(3, 8))
    ]


def _card_testing(t: DemoTraffic) -> list[dict[str, Any]]:
    account = f"acct_cardtest{t.rng.randrange(3)}"
    return [
        {
            "type": "transaction",
            "account_id": account,
            "amount": t.rng.randrange(100, 300),
            "currency": "CNY",
            "kind": "payment",
            "instrument_id": f"card_{t.rng.randrange(16**8):08x}",
            "ip": "117.1.2.3",
        }
        for _ in range(t.rng.randrange(3, 8))
    ]


def _amount_tampering(t: DemoTraffic) -> list[dict[str, Any]]:
    u = t.rng.choice(t.users)
    return [
        {
            "type": "transaction",
            "account_id": u.account,
            "amount": 1,
            "list_amount": 999_900,
            "currency": "CNY",
            "kind": "payment",
            "device_id": u.device,
            "ip": u.ip,
        }
    ]


def _bonus_farm(t: DemoTraffic) -> list[dict[str, Any]]:
    device = f"dev_farm{t.rng.randrange(4)}"
    account = f"acct_{t.rng.randrange(16**10):010x}"
    phone = f"+86170{t.rng.randrange(10**8):08d}"
    return [
        {"type": "device", "device_id": device, "ip": "120.0.0.9", "is_emulator": True, "fingerprint": "fp_farm"},
        {"type": "sms", "phone": phone, "ip": "120.0.0.9", "device_id": device, "purpose": "register"},
        {
            "type": "registration",
            "account_id": account,
            "ip": "120.0.0.9",
            "device_id": device,
            "phone": phone,
            "invite_code": "inv_farm",
        },
        {
            "type": "transaction",
            "account_id": account,
            "amount": 1000,
            "list_amount": 1000,
            "currency": "CNY",
            "kind": "promo_redeem",
            "promo_code": "WELCOME10",
            "device_id": device,
        },
    ]


ATTACKS: dict[str, Callable[[DemoTraffic], list[dict[str, Any]]]] = {
    "credential_stuffing": _credential_stuffing,
    "sms_bombing": _sms_bombing,
    "card_testing": _card_testing,
    "amount_tampering": _amount_tampering,
    "bonus_abuse": _bonus_farm,
}
