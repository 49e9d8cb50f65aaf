"""Pseudonymisation: raw identifiers never leave an event's own processing.

Phones, IPs, device ids and account ids are replaced by a keyed BLAKE2b hash
before they reach a state key, a log line or a verdict. The key comes from the
settings, never from the code, so the same identifier hashes alike across
workers and restarts but cannot be reversed by a dictionary attack without it.
"""

from __future__ import annotations

import hashlib
from typing import Final

DIGEST_BYTES: Final = 12


class Pseudonymizer:
    """Keyed hashes of identifiers, namespaced by their kind (`ip`, `phone`...)."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.blake2b(key, digest_size=32).digest()

    def digest(self, kind: str, value: str) -> bytes:
        data = f"{kind}\x00{value}".encode()
        return hashlib.blake2b(data, key=self._key, digest_size=DIGEST_BYTES).digest()

    def token(self, kind: str, value: str) -> str:
        """The printable pseudonym shown in verdict details: `kind:hex`."""
        return f"{kind}:{self.digest(kind, value).hex()}"
