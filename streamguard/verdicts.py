"""Turning what the checks found into a verdict: score, decision and reasons.

The `Detector` holds the ruleset in force (a `Program`) and the block/allow
lists. The control reader swaps the program and edits the lists from its own
thread; the engine reads both per event (a reference read, safe under the GIL).
"""

from __future__ import annotations

import numpy as np

from streamguard.codec import event_type
from streamguard.events import AnyEvent, Reason, Verdict
from streamguard.privacy import Pseudonyms
from streamguard.rules.lists import Lists, list_entities
from streamguard.rules.program import Program

BLOCK_SCORE = 1000


class Detector:
    def __init__(self, program: Program, pseudonymizer: Pseudonyms) -> None:
        self.program = program
        self.lists = Lists(pseudonymizer)
        self._pseudo = pseudonymizer

    def decide(
        self,
        event: AnyEvent,
        values: dict[str, float],
        entities: dict[str, bytes],
        now_ms: int,
        program: Program | None = None,
        evaluated: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Verdict:
        """`program`: the ruleset to decide by (default: the one in force; a batch passes the one it read with).

        `evaluated`: what the rules observed and which fired, when a batch has
        run them already (`columnar.rules`); then `values` is not read.
        """
        kind = event_type(event)
        program = program or self.program  # one ruleset per verdict, even if it is replaced meanwhile
        reasons: list[Reason] = []
        allowed: frozenset[str] = frozenset()
        if len(self.lists):
            listed = list_entities(event, entities, self._pseudo)
            blocked, allowed = self.lists.lookup(listed, now_ms)
            reasons += [_block_reason(eid, listed[eid]) for eid in blocked]
        if evaluated is None:
            reasons += program.evaluate(event, kind, values, entities, allowed)
        else:
            reasons += program.reasons(kind, *evaluated, entities, allowed)
        score = program.score(reasons)
        return Verdict(
            event_id=event.event_id,
            type=kind,
            ts=event.ts,
            decision=program.decision(score),  # type: ignore[arg-type]
            score=score,
            reasons=reasons,
            ruleset=program.ruleset.label,
            decided_at=now_ms,
        )


def _block_reason(eid: str, digest: bytes) -> Reason:
    return Reason(code="list.block", score=BLOCK_SCORE, detail={"entity": {"kind": eid, "id": digest[:8].hex()}})
