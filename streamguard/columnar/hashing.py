"""Keyed hashing of identifier columns in numba: SipHash-1-3, one call per column.

Every identifier an entity is counted per (an IP, an account, a phone block...)
becomes a 64-bit keyed hash, namespaced by its column: the same value hashes
alike on every worker and after every restart (the key comes from the
settings), cannot be reversed without the key, and is what the tables, the
shard routing and the pseudonyms in verdicts use. 0 and 1 are never a hash:
the tables use them for an empty slot and a deleted one.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
from numba import uint64

from streamguard.columnar.jit import inline, kernel

ABSENT: Final = 0  # a hash column's value where the event has no such field
DELETED: Final = 1  # a table slot whose entity was expired
LAYOUT_VERSION: Final = b"columnar-v1"  # part of the key: a changed hash gives fresh state, never a mix


def column_keys(hash_key: bytes, column: str) -> tuple[np.uint64, np.uint64]:
    """The two 64-bit SipHash keys of one column, derived from the settings' hash key."""
    digest = hashlib.blake2b(LAYOUT_VERSION + b"\x00" + column.encode(), key=hash_key[:64], digest_size=16).digest()
    return np.uint64(int.from_bytes(digest[:8], "little")), np.uint64(int.from_bytes(digest[8:], "little"))


@inline
def _rotl(x, b):
    return (x << uint64(b)) | (x >> uint64(64 - b))


@inline
def _round(v0, v1, v2, v3):
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@kernel
def siphash13(buf, start, end, k0, k1):
    """SipHash-1-3 of `buf[start:end]`, moved off 0 and 1 (they mark empty and deleted slots)."""
    v0 = k0 ^ uint64(0x736F6D6570736575)
    v1 = k1 ^ uint64(0x646F72616E646F6D)
    v2 = k0 ^ uint64(0x6C7967656E657261)
    v3 = k1 ^ uint64(0x7465646279746573)
    i = start
    while i + 8 <= end:
        m = uint64(0)
        for j in range(8):
            m |= uint64(buf[i + j]) << uint64(8 * j)
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
        i += 8
    b = uint64((end - start) & 0xFF) << uint64(56)
    j = 0
    while i < end:
        b |= uint64(buf[i]) << uint64(8 * j)
        i += 1
        j += 1
    v3 ^= b
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= uint64(0xFF)
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    h = v0 ^ v1 ^ v2 ^ v3
    return h if h > uint64(DELETED) else h + uint64(2)


@kernel
def hash_strings(buf, ends, k0, k1, out):
    """out[i] = the hash of the i-th string of `buf` (strings end at `ends`; a negative end: absent, ABSENT)."""
    start = 0
    for i in range(ends.shape[0]):
        end = ends[i]
        if end < 0:
            out[i] = uint64(ABSENT)
        else:
            out[i] = siphash13(buf, start, end, k0, k1)
            start = end


@kernel
def hash_separated(buf, k0, k1, out):
    """Hash the NUL-terminated values of `buf` into `out`; how many there were.

    A value is marked by a leading 0x01 (not hashed): an empty string is a value, nothing at all is ABSENT.
    """
    start, n = 0, 0
    for i in range(buf.shape[0]):
        if buf[i] == 0:
            if n < out.shape[0]:
                out[n] = siphash13(buf, start + 1, i, k0, k1) if i > start else uint64(ABSENT)
            n += 1
            start = i + 1
    return n


def hash_column(values: list[str | None], keys: tuple[np.uint64, np.uint64]) -> np.ndarray:
    """The keyed hashes of a column of strings (ABSENT where None)."""
    out = np.empty(len(values), np.uint64)
    joined = "\x00".join(["" if v is None else "\x01" + v for v in values]).encode() + b"\x00"
    if hash_separated(np.frombuffer(joined, np.uint8), keys[0], keys[1], out) == len(values):
        return out
    # A value holds a NUL (JSON allows \u0000): one string at a time
    encoded = [b"" if v is None else v.encode() for v in values]
    ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
    ends[np.fromiter((v is None for v in values), np.bool_, len(values))] = -1
    hash_strings(np.frombuffer(b"".join(encoded), np.uint8), ends, keys[0], keys[1], out)
    return out


def hash_one(value: str, keys: tuple[np.uint64, np.uint64]) -> int:
    """One value's hash (lists, tests)."""
    raw = np.frombuffer(value.encode(), np.uint8)
    return int(siphash13(raw, 0, raw.shape[0], keys[0], keys[1]))


class ColumnHashes:
    """The keyed hashes of every column under one hash key; also the pseudonyms lists and reasons use."""

    def __init__(self, hash_key: bytes) -> None:
        self._hash_key = hash_key
        self._keys: dict[str, tuple[np.uint64, np.uint64]] = {}

    def keys(self, column: str) -> tuple[np.uint64, np.uint64]:
        keys = self._keys.get(column)
        if keys is None:
            keys = self._keys[column] = column_keys(self._hash_key, column)
        return keys

    def column(self, column: str, values: list[str | None]) -> np.ndarray:
        return hash_column(values, self.keys(column))

    def digest(self, kind: str, value: str) -> bytes:
        """A value's pseudonym as bytes: its hash in the column of `kind`, big-endian."""
        return hash_one(value, self.keys(kind)).to_bytes(8, "big")

    def reported_fingerprint(self, fingerprint: str) -> str:
        """A fingerprint is hashed as reported (its column's key is the pseudonymisation)."""
        return fingerprint
