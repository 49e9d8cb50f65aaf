"""Turning what the checks found into a verdict: score, decision and reasons.

Until the detection rules exist, every event is allowed with no reasons under
the empty ruleset; the shape, the ids and the timing are already the contract's.
"""

from __future__ import annotations

from typing import Final

from streamguard.codec import event_type
from streamguard.events import AnyEvent, Verdict

EMPTY_RULESET: Final = "none@0"


def decide(event: AnyEvent, now_ms: int) -> Verdict:
    return Verdict(
        event_id=event.event_id,
        type=event_type(event),
        ts=event.ts,
        decision="allow",
        score=0,
        reasons=[],
        ruleset=EMPTY_RULESET,
        decided_at=now_ms,
    )
