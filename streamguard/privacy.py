"""Pseudonymisation: raw identifiers never leave an event's own processing.

Phones, IPs, device ids and account ids are replaced by a keyed BLAKE2b hash
before they reach a state key, a log line or a verdict. The key comes from the
settings, never from the code, so the same identifier hashes alike across
workers and restarts but cannot be reversed by a dictionary attack without it.
"""

from __future__ import annotations

import hashlib
from typing import Final, Protocol

DIGEST_BYTES: Final = 12


class Pseudonyms(Protocol):
    """What lists and verdicts need of a pseudonymiser: the keyed hash of a value of a kind of entity."""

    def digest(self, kind: str, value: str) -> bytes: ...

    def reported_fingerprint(self, fingerprint: str) -> str: ...


class Pseudonymizer:
    """Keyed hashes of identifiers, namespaced by their kind (`ip`, `phone`...)."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.blake2b(key, digest_size=32).digest()

    def digest(self, kind: str, value: str) -> bytes:
        data = f"{kind}\x00{value}".encode()
        return hashlib.blake2b(data, key=self._key, digest_size=DIGEST_BYTES).digest()

    def reported_fingerprint(self, fingerprint: str) -> str:
        """What the features know a device report's fingerprint as: its own pseudonym."""
        return self.digest("fingerprint-reported", fingerprint).hex()

    def token(self, kind: str, value: str) -> str:
        """The printable pseudonym shown in verdict details: `kind:hex`."""
        return f"{kind}:{self.digest(kind, value).hex()}"
