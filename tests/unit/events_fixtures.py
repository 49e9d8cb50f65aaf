"""Valid events of every type, as an upstream app would send them."""

from __future__ import annotations

import time
from typing import Any

NOW_MS = int(time.time() * 1000)


def valid_events(ts: int = NOW_MS) -> dict[str, dict[str, Any]]:
    return {
        "device": {
            "event_id": "e-dev",
            "type": "device",
            "ts": ts,
            "device_id": "dev_1",
            "ip": "10.0.0.1",
            "platform": "android",
            "fingerprint": "fp1",
            "is_emulator": False,
        },
        "login": {
            "event_id": "e-login",
            "type": "login",
            "ts": ts,
            "account_id": "acct_1",
            "ip": "2001:db8::1",
            "success": False,
            "failure_reason": "bad_password",
            "method": "password",
        },
        "registration": {
            "event_id": "e-reg",
            "type": "registration",
            "ts": ts,
            "account_id": "acct_2",
            "ip": "10.0.0.2",
            "phone": "+8613800138000",
            "invite_code": "inv_1",
        },
        "sms": {
            "event_id": "e-sms",
            "type": "sms",
            "ts": ts,
            "phone": "+8613800138000",
            "ip": "10.0.0.3",
            "purpose": "login",
        },
        "transaction": {
            "event_id": "e-tx",
            "type": "transaction",
            "ts": ts,
            "account_id": "acct_1",
            "amount": 1999,
            "currency": "CNY",
            "kind": "payment",
            "list_amount": 1999,
        },
    }
