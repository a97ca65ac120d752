"""Encryption at rest for upstream credentials (Fernet, with key rotation).

`TENANTRY_SECRET_KEYS` is a list: the first key encrypts, every key decrypts,
so an operator rotates by putting a new key first, running
`tenantry upstream rotate-secrets` (which re-encrypts every stored credential
under it) and then dropping the old key. Plaintext never leaves this module
except to build the headers of an upstream request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one secret key is required")
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except ValueError as exc:
            raise ValueError("every TENANTRY_SECRET_KEYS entry must be a url-safe base64 32-byte Fernet key") from exc

    def seal(self, headers: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(headers, separators=(",", ":")).encode())

    def open(self, token: bytes) -> dict[str, str]:
        try:
            data = self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise ValueError("a stored credential does not decrypt under any configured key") from exc
        headers: dict[str, str] = json.loads(data)
        return headers

    def rotate(self, token: bytes) -> bytes:
        """The same plaintext, encrypted under the newest key."""
        return self._fernet.rotate(token)
