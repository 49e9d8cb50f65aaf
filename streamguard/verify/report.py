"""The verifier's results: one `Check` per guarantee, and the `Report` an operator reads.

A check is data first (counts and sample identifiers, for tests to assert on)
and text second (`Report.format`), so the same run serves a test and a shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["PASS", "FAIL", "SKIP"]
SAMPLES = 5  # sample identifiers kept per problem: enough to start looking, short enough to read


@dataclass(frozen=True)
class Check:
    """The outcome of one check: `counts` say how much, `samples` which (a few of each problem)."""

    code: str  # "V1" ... "V7"
    title: str
    status: Status
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """A skipped check did not fail: it could not be run (say, the changelog no longer reaches 0)."""
        return self.status != "FAIL"

    @classmethod
    def of(
        cls,
        code: str,
        title: str,
        counts: Mapping[str, int],
        problems: Mapping[str, Iterable[str]],
        notes: Iterable[str] = (),
    ) -> Check:
        """FAIL when any problem has members, else PASS; each problem's size becomes a count too."""
        listed = {name: sorted(members) for name, members in problems.items()}
        all_counts = {**counts, **{name: len(members) for name, members in listed.items()}}
        samples = {name: members[:SAMPLES] for name, members in listed.items() if members}
        status: Status = "FAIL" if samples else "PASS"
        return cls(code, title, status, all_counts, samples, list(notes))

    @classmethod
    def skipped(cls, code: str, title: str, why: str) -> Check:
        return cls(code, title, "SKIP", notes=[why])

    def format(self) -> str:
        counts = ", ".join(f"{name} {value:,}" for name, value in self.counts.items())
        lines = [f"{self.status}  {self.code} {self.title}"] + ([f"      {counts}"] if counts else [])
        lines += [f"      {name}: {', '.join(ids)}" for name, ids in self.samples.items()]
        lines += [f"      note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class Report:
    """Every check of one run, in order; `passed` when none failed."""

    checks: list[Check]
    context: str = ""  # what was verified (prefix, app id, broker), for the first line

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def __getitem__(self, code: str) -> Check:
        for check in self.checks:
            if check.code == code:
                return check
        raise KeyError(code)

    def format(self) -> str:
        failed = [c.code for c in self.checks if not c.passed]
        verdict = "all checks passed" if not failed else f"FAILED: {', '.join(failed)}"
        head = [f"streamguard verify: {self.context}"] if self.context else []
        return "\n".join([*head, *(check.format() for check in self.checks), verdict])
