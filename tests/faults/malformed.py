"""Malformed input of every kind the contract names, generated from a seed.

Each message is (topic, key, value) with topic names without the prefix. The
kinds: not JSON, not UTF-8, not an object, deeply nested, wrong field types,
missing required fields, a `type` other than the topic's, over 64 KiB, and
`ts` out of range (zero, negative, an hour ahead, a string). Every one must
become exactly one dead letter with its original bytes and key.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from streamguard.events import EVENT_TYPES

Message = tuple[str, bytes | None, bytes | None]


def messages(n: int, seed: int) -> Iterator[Message]:
    rng = random.Random(seed)
    for i in range(n):
        kind = rng.choice(EVENT_TYPES)
        key = None if rng.random() < 0.2 else f"bad-{seed}-{i}".encode()
        yield f"events.{kind}", key, rng.choice(MAKERS)(rng, kind, f"bad-{seed}-{i:06d}")


def _base(kind: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": kind, "ts": int(time.time() * 1000), "account_id": "acct_bad",
            "ip": "198.51.100.7", "device_id": "dev_bad", "phone": "+8613800000000", "success": False,
            "amount": 100, "currency": "CNY"}  # fmt: skip


def _not_json(rng: random.Random, kind: str, event_id: str) -> bytes:
    return json.dumps(_base(kind, event_id)).encode()[: rng.randrange(1, 40)]


def _not_utf8(rng: random.Random, kind: str, event_id: str) -> bytes:
    return b'{"event_id": "\xff\xfe' + bytes(rng.randrange(128, 256) for _ in range(8)) + b'"}'


def _not_an_object(rng: random.Random, kind: str, event_id: str) -> bytes:
    return json.dumps(rng.choice([[_base(kind, event_id)], "text", 42, None, True])).encode()


def _deeply_nested(rng: random.Random, kind: str, event_id: str) -> bytes:
    depth = rng.randrange(50, 3000)
    return b'{"event_id": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _mistyped(rng: random.Random, kind: str, event_id: str) -> bytes:
    event = _base(kind, event_id)
    field = rng.choice(["event_id", "ts", "ip", "account_id", "success", "amount", "phone", "device_id"])
    event[field] = rng.choice([{"nested": 1}, [1, 2], 3.5, -1, "", "x" * 200, None])
    if field in ("success", "amount", "phone") and kind not in ("login", "transaction", "sms"):
        event["ts"] = "not a number"  # a field the type ignores: break another
    return json.dumps(event).encode()


def _missing_required(rng: random.Random, kind: str, event_id: str) -> bytes:
    event = _base(kind, event_id)
    del event[rng.choice(["event_id", "type", "ts"])]
    return json.dumps(event).encode()


def _other_type(rng: random.Random, kind: str, event_id: str) -> bytes:
    event = _base(kind, event_id)
    event["type"] = rng.choice([t for t in EVENT_TYPES if t != kind] + ["payment", ""])
    return json.dumps(event).encode()


def _too_large(rng: random.Random, kind: str, event_id: str) -> bytes:
    return json.dumps({**_base(kind, event_id), "pad": "x" * rng.randrange(66_000, 200_000)}).encode()


def _ts_out_of_range(rng: random.Random, kind: str, event_id: str) -> bytes:
    ts = rng.choice([0, -5, int(time.time() * 1000) + 3_600_000, 2**70, "yesterday"])
    return json.dumps({**_base(kind, event_id), "ts": ts}).encode()


MAKERS: list[Callable[[random.Random, str, str], bytes]] = [
    _not_json, _not_utf8, _not_an_object, _deeply_nested, _mistyped, _missing_required, _other_type, _too_large,
    _ts_out_of_range,
]  # fmt: skip
