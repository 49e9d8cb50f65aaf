"""V6 and V7: each shard's state rebuilt from its changelog, against its owner's RocksDB; nothing parked.

A worker writes a shard's changes to RocksDB only after their transaction
commits, the changelog offset last (`state.store`). So the store of the data
directory with the newest checkpoint must hold exactly the committed
changelog replayed up to that checkpoint: a key more is an aborted write
that leaked, a key less a committed one that was lost. A store whose
checkpoint is behind the last record (a worker killed between commit and
write) is noted, not failed: a restore replays the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from streamguard.errors import ConfigError
from streamguard.state import keys
from streamguard.state.store import decode_changes
from streamguard.verify.report import Check

State = dict[bytes, bytes]
PARKED: bytes = keys.pending(b"")  # the prefix of an event waiting for its entities' values
TITLE = "state rebuilt from the changelog equals the owner's RocksDB"


@dataclass
class Replay:
    """One shard's changelog partition applied in order, with the state as of `checkpoint` kept aside."""

    shard: int
    log_start: int  # the partition's first offset: above 0, retention has cut its beginning
    checkpoint: int | None = None  # the owner store's; None: compare with the state before any record
    state: State = field(default_factory=dict)
    last_offset: int | None = None
    records: int = 0
    _at_checkpoint: State | None = None

    def feed(self, offset: int, value: bytes | None) -> None:
        if self._at_checkpoint is None and offset > (-1 if self.checkpoint is None else self.checkpoint):
            self._at_checkpoint = dict(self.state)
        for key, new in decode_changes(value or b"\x90").items():  # an empty record is an empty list
            if new is None:
                self.state.pop(key, None)
            else:
                self.state[key] = new
        self.last_offset, self.records = offset, self.records + 1

    @property
    def at_checkpoint(self) -> State:
        return self.state if self._at_checkpoint is None else self._at_checkpoint


@dataclass(frozen=True)
class Store:
    path: Path
    checkpoint: int | None
    contents: State  # every key but the checkpoint's


def store_paths(data_dirs: Sequence[Path], shard: int) -> list[Path]:
    return [d / "state" / f"shard-{shard}" for d in data_dirs if (d / "state" / f"shard-{shard}").is_dir()]


def read_store(path: Path, contents: bool = True) -> Store:
    """A shard's RocksDB, opened read-only (no lock taken: it works beside a worker, or after it)."""
    try:
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception as exc:  # rocksdict raises plain Exception
        raise ConfigError(f"{path}: cannot open the RocksDB store read-only: {exc}") from None
    try:
        raw = db.get(keys.CHECKPOINT)
        checkpoint = None if raw is None else keys.decode_u64(raw)
        state = _contents(db) if contents else {}
    finally:
        db.close()
    return Store(path, checkpoint, state)


def _contents(db: Rdict) -> State:
    found: State = {}
    for key, value in db.items():
        assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
        if key != keys.CHECKPOINT:
            found[key] = value
    return found


def newest_store(data_dirs: Sequence[Path], shard: int) -> Store | None:
    """The store of `shard` with the newest checkpoint among the data directories: its last owner's."""
    found = [read_store(path, contents=False) for path in store_paths(data_dirs, shard)]
    if not found:
        return None
    newest = max(found, key=lambda s: -1 if s.checkpoint is None else s.checkpoint)
    return read_store(newest.path)


def differing_keys(expected: Mapping[bytes, bytes], actual: Mapping[bytes, bytes]) -> list[bytes]:
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))


def _differences(shard: int, expected: State, actual: State) -> list[str]:
    """Each differing key (its first 16 bytes) and which side has it: a hint at leaked or lost writes."""
    found = []
    for key in differing_keys(expected, actual):
        side = "only in the store" if key not in expected else "not in the store" if key not in actual else "value"
        found.append(f"shard {shard}: {key[:16].hex()} ({side})")
    return found


def check_stores(replays: Sequence[Replay], stores: Mapping[int, Store | None]) -> Check:
    """V6: every shard's newest store equals its changelog replayed to the store's checkpoint."""
    differ, no_store, ahead, notes = [], [], [], []
    compared = 0
    for replay in replays:
        store, shard = stores.get(replay.shard), replay.shard
        if replay.log_start > 0:
            notes.append(f"shard {shard}: skipped, the changelog starts at {replay.log_start} (retention)")
        elif store is None:
            if replay.records:
                no_store.append(f"shard {shard}: {replay.records} changelog records")
        else:
            compared += 1
            differ += _differences(shard, replay.at_checkpoint, store.contents)
            last, checkpoint = replay.last_offset, store.checkpoint
            if checkpoint is not None and (last is None or checkpoint > last):
                ahead.append(f"shard {shard}: checkpoint {checkpoint}, last committed record {last}")
            elif checkpoint != last:
                notes.append(f"shard {shard}: {store.path} is behind its changelog (checkpoint {checkpoint}, {last})")
    counts = {"shards": len(replays), "compared": compared, "keys": sum(len(r.state) for r in replays)}
    problems = {"differing keys": differ, "no store": no_store, "checkpoint ahead": ahead}
    return Check.of("V6", TITLE, counts, problems, notes)


def check_parked(replays: Sequence[Replay]) -> Check:
    """V7: no event is left parked (waiting for feature values) in any shard's rebuilt state."""
    parked, notes = [], []
    for replay in replays:
        if replay.log_start > 0:
            notes.append(f"shard {replay.shard}: skipped, the changelog starts at {replay.log_start} (retention)")
            continue
        parked += [f"shard {replay.shard}: {k[:16].hex()}" for k in replay.state if k.startswith(PARKED)]
    counts = {"shards": len(replays)}
    return Check.of("V7", "nothing left parked", counts, {"parked events": parked}, notes)
