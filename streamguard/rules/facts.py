"""Facts: what an event says about itself, as numbers rules can compare.

Features count what happened around an event; facts need nothing but the
event (and the ruleset's parameters): a failed login, a paid amount far below
the price shown, an emulator. A fact that does not apply is NaN, which fails
every comparison. Booleans are 1.0 or 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from streamguard.events import AnyEvent, TransactionEvent

if TYPE_CHECKING:
    from streamguard.rules.spec import Parameters

NAN: Final = math.nan
MONEY_OUT: Final = ("withdrawal", "transfer")


@dataclass(frozen=True)
class Fact:
    events: tuple[str, ...]
    read: Callable[[Any, Parameters], float]
    doc: str


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


def _paid_share(event: TransactionEvent, _: Parameters) -> float:
    if not event.list_amount:
        return NAN
    return event.amount / event.list_amount


def _phone_starts(event: Any, prefixes: list[str]) -> float:
    phone = getattr(event, "phone", None)
    return NAN if phone is None else _flag(phone.startswith(tuple(prefixes)))


FACTS: Final[dict[str, Fact]] = {
    "login_failed": Fact(("login",), lambda e, _: _flag(not e.success), "the login failed"),
    "unknown_account": Fact(
        ("login",), lambda e, _: _flag(e.failure_reason == "no_such_account"), "failed for want of such an account"
    ),
    "paid_share": Fact(("transaction",), _paid_share, "amount / list_amount (NaN without list_amount)"),
    "amount": Fact(("transaction",), lambda e, _: float(e.amount), "the amount, in minor units"),
    "money_out": Fact(("transaction",), lambda e, _: _flag(e.kind in MONEY_OUT), "a withdrawal or transfer"),
    "promo_redeem": Fact(("transaction",), lambda e, _: _flag(e.kind == "promo_redeem"), "a promo redemption"),
    "virtual_operator_phone": Fact(
        ("registration", "sms"),
        lambda e, p: _phone_starts(e, p.virtual_operator_prefixes),
        "the phone is in a virtual-operator range (parameters.virtual_operator_prefixes)",
    ),
    "foreign_phone": Fact(
        ("registration", "sms"),
        lambda e, p: 1.0 - _phone_starts(e, p.home_country_codes),
        "the phone is outside the home country codes (parameters.home_country_codes)",
    ),
    "emulator": Fact(("device",), lambda e, _: _flag(e.is_emulator), "the device reports an emulator"),
    "hooked": Fact(("device",), lambda e, _: _flag(e.is_hooked), "the device reports hooking (Xposed, Frida)"),
    "gps_mocked": Fact(("device",), lambda e, _: _flag(e.gps_mocked), "the device reports a mocked location"),
    "rooted_with_proxy": Fact(
        ("device",), lambda e, _: _flag(e.is_rooted and e.uses_proxy), "rooted and behind a proxy at once"
    ),
}


def facts_of(event: AnyEvent, kind: str, names: list[str], parameters: Parameters) -> list[float]:
    """The values of the facts `names` for `event` of type `kind` (NaN where a fact does not apply)."""
    out = []
    for name in names:
        fact = FACTS[name]
        out.append(fact.read(event, parameters) if kind in fact.events else NAN)
    return out
