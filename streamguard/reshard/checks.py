"""Whether an app is at rest, so that its state can be re-sharded: pure functions of what the broker reports.

At rest means no worker in the app's consumer group, no transaction open on
the topics workers write (the verifier's V3), and every record of the shards
topic consumed (V4 on that topic): work in flight between shards is in no
changelog, so re-sharding would lose it. Input records not read yet are
fine: the workers read them after, on the new shards.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamguard.verify import offsets
from streamguard.verify.records import TP
from streamguard.verify.report import Check


def busy(
    group: str,
    members: int,
    stable: Mapping[TP, int],
    end: Mapping[TP, int],
    shard_offsets: Mapping[TP, int | None],
    unread: Mapping[TP, int],
) -> list[str]:
    """Why the app is not at rest (empty: it is), one line each with what to do.

    `stable` and `end` are the read_committed and the real ends of the topics
    workers write, `shard_offsets` the group's committed offsets on the shards
    topic, `unread` the committed records at or after them.
    """
    problems = []
    if members:
        problems.append(f"the consumer group {group!r} has {members} members on this app's topics: stop every worker")
    open_transactions = offsets.check_open_transactions(stable, end)
    if not open_transactions.passed:
        problems.append(
            f"transactions are open ({_samples(open_transactions)}): a worker is running, or was killed less than "
            "a minute ago (the broker aborts its transaction within the transaction timeout); try again then"
        )
    shard_ends = {tp: end[tp] for tp in shard_offsets}
    consumed = offsets.check_group_offsets(shard_offsets, shard_ends, unread)
    if not consumed.passed:
        problems.append(
            f"work between shards is not consumed ({_samples(consumed)}): start the workers until they are idle, "
            "then stop them with SIGTERM (a worker killed with SIGKILL leaves its last work unread)"
        )
    return problems


def _samples(check: Check) -> str:
    return "; ".join(f"{name}: {', '.join(ids)}" for name, ids in check.samples.items())
