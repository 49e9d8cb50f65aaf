"""V3 and V4: no transaction left open, and every input read and committed by the group.

Both compare offsets the broker reports, so they are pure functions of those
numbers; `verify.kafka` fetches them.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamguard.verify.records import TP
from streamguard.verify.report import Check


def _name(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


def check_open_transactions(committed_end: Mapping[TP, int], end: Mapping[TP, int]) -> Check:
    """V3: on every partition the read_committed end (the last stable offset) is the end.

    An open transaction holds the last stable offset back at its first record:
    read_committed consumers of that partition see nothing past it until it
    commits or aborts (or the broker's transaction timeout aborts it).
    """
    stuck = [f"{_name(tp)} stable {committed_end[tp]} < end {end[tp]}" for tp in end if committed_end[tp] < end[tp]]
    counts = {"partitions": len(end)}
    return Check.of("V3", "no transaction left open", counts, {"open transactions": stuck})


def check_group_offsets(committed: Mapping[TP, int | None], end: Mapping[TP, int], unread: Mapping[TP, int]) -> Check:
    """V4: the group's committed offset reaches the end of every partition it consumes.

    A committed offset is one past the last record read, so on a
    transactionally written topic (the shards topic) it stops before the
    commit marker that ends the partition: a gap is fine when `unread`, the
    committed data records at or after the committed offset, is 0.
    `unread` needs entries only for partitions with a gap.
    """
    behind: list[str] = []
    ahead: list[str] = []
    uncommitted: list[str] = []
    for tp, last in end.items():
        offset = committed.get(tp)
        if offset is not None and offset > last:
            ahead.append(f"{_name(tp)} committed {offset} > end {last}")
        elif offset != last and unread.get(tp, 0) > 0:
            where = "nothing committed" if offset is None else f"committed {offset}"
            (uncommitted if offset is None else behind).append(f"{_name(tp)} {where}, {unread[tp]} records unread")
    counts = {"partitions": len(end), "records unread": sum(unread.values())}
    problems = {"behind": behind, "ahead of the end": ahead, "never committed": uncommitted}
    return Check.of("V4", "the group committed every input", counts, problems)
