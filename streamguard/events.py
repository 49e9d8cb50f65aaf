"""Wire schemas: the five event types, the verdict and the dead-letter headers.

These Structs are the contract (../shared/CONTRACT.md) in code. Constraints
live in the annotations so that msgspec enforces them while decoding; checks
that a type cannot express (IP syntax, the clock) live in `codec`. New fields
must always have a default, so that old producers stay valid.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

Id = Annotated[str, Meta(min_length=1, max_length=128)]
Phone = Annotated[str, Meta(pattern=r"^\+[1-9][0-9]{4,14}$")]
# Minor units up to 2**63 - 1: what a 64-bit integer holds, in every consumer and in the internal records
# (msgpack); larger ones made ratios overflow a float and could not travel between workers.
Minor = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Text = Annotated[str, Meta(max_length=256)]

EVENT_TYPES: Final = ("device", "login", "registration", "sms", "transaction")


class Event(Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Fields common to every event type.

    `gc=False` (here, on verdicts and on the engine's items): they hold no
    reference cycles, and untracked, the thousands a batch keeps alive cost
    the cyclic collector nothing; tracked, one young collection in the middle
    of a big batch walked them all (up to 200 ms, holding the GIL).
    """

    event_id: Id
    ts: int  # epoch ms; its range is checked against the clock in `codec`


class DeviceEvent(Event, tag="device", frozen=True):
    device_id: Id
    account_id: Id | None = None
    ip: str | None = None
    platform: Literal["android", "ios", "web", "other"] | None = None
    os_version: Text | None = None
    model: Text | None = None
    app_version: Text | None = None
    fingerprint: Id | None = None
    tz_offset_min: Annotated[int, Meta(ge=-1440, le=1440)] | None = None
    lang: Text | None = None
    is_emulator: bool = False
    is_rooted: bool = False
    is_hooked: bool = False
    uses_proxy: bool = False
    gps_mocked: bool = False


class LoginEvent(Event, tag="login", frozen=True):
    account_id: Id
    ip: str
    success: bool
    device_id: Id | None = None
    failure_reason: Literal["bad_password", "no_such_account", "locked", "other"] | None = None
    method: Literal["password", "sms_code", "oauth", "token"] | None = None


class RegistrationEvent(Event, tag="registration", frozen=True):
    account_id: Id
    ip: str
    device_id: Id | None = None
    phone: Phone | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None
    invite_code: Id | None = None
    channel: Text | None = None


class SmsEvent(Event, tag="sms", frozen=True):
    phone: Phone
    ip: str
    purpose: Literal["register", "login", "reset_password", "payment", "other"] | None = None
    device_id: Id | None = None
    account_id: Id | None = None


class TransactionEvent(Event, tag="transaction", frozen=True):
    account_id: Id
    amount: Minor
    currency: Currency
    kind: Literal["payment", "withdrawal", "transfer", "top_up", "promo_redeem", "refund"] | None = None
    list_amount: Minor | None = None
    merchant_id: Id | None = None
    instrument_id: Id | None = None
    promo_code: Id | None = None
    device_id: Id | None = None
    ip: str | None = None


AnyEvent = DeviceEvent | LoginEvent | RegistrationEvent | SmsEvent | TransactionEvent

EVENT_CLASSES: Final[dict[str, type[Event]]] = {
    "device": DeviceEvent,
    "login": LoginEvent,
    "registration": RegistrationEvent,
    "sms": SmsEvent,
    "transaction": TransactionEvent,
}

Decision = Literal["allow", "challenge", "review", "deny"]


class Reason(Struct, frozen=True, kw_only=True, gc=False):
    """One rule that fired: `<family>.<detail>`, its score and the evidence."""

    code: str
    score: Annotated[int, Meta(ge=0, le=1000)]
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class Verdict(Struct, frozen=True, kw_only=True, gc=False):
    """The value published on `verdicts.<type>`, keyed by `event_id`."""

    event_id: str
    type: str
    ts: int
    decision: Decision
    score: Annotated[int, Meta(ge=0, le=1000)]
    reasons: list[Reason]
    ruleset: str
    decided_at: int


class DeadLetterHeader:
    """Names of the headers every dead-letter record carries (the `TRUNCATED` ones only when they apply)."""

    ERROR: Final = "sg-error"
    DETAIL: Final = "sg-error-detail"
    SOURCE_TOPIC: Final = "sg-source-topic"
    SOURCE_PARTITION: Final = "sg-source-partition"
    SOURCE_OFFSET: Final = "sg-source-offset"
    TRUNCATED: Final = "sg-truncated"  # the original value's length, when only its first bytes are kept
    TRUNCATED_KEY: Final = "sg-truncated-key"  # the original key's length, likewise


class ErrorCode:
    """Values of the `sg-error` header."""

    INVALID_JSON: Final = "invalid_json"
    SCHEMA: Final = "schema"
    TYPE_MISMATCH: Final = "type_mismatch"
    TOO_LARGE: Final = "too_large"
    TS_OUT_OF_RANGE: Final = "ts_out_of_range"
    # Processing a message raised (a defect here, not the sender's fault). From the ingest, the dead letter holds
    # the original record; from a valid event's shard, the event as validated (JSON), standing in for its verdict.
    PROCESSING_ERROR: Final = "processing_error"
