"""Secrets neve must send on (an API integration's key): sealed in the catalog, never shown.

A token or password neve only checks is stored as a hash. A key neve sends to another system
cannot be: it is sealed (Fernet: AES-128-CBC plus HMAC-SHA256) with the account's sealing key,
a random key in ``<home>/sealing.key`` made on first use, readable by the account's owner only
(0600), like the proxy secret and the local admin token beside it. The catalog, which may be a
shared PostgreSQL database, holds only the sealed text; SHOW and DESCRIBE never print it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from neve.errors import InvalidStateError

KEY_FILE = "sealing.key"


def _key(home: Path) -> bytes:
    path = Path(home) / KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


def seal(home: Path, secret: str) -> str:
    """``secret`` sealed with the account's key (text for a catalog column)."""
    return Fernet(_key(home)).encrypt(secret.encode("utf-8")).decode("ascii")


def unseal(home: Path, sealed: str, *, what: str) -> str:
    """The secret ``seal`` sealed; a clear error naming ``what`` when the key does not open it
    (the account's sealing.key was replaced, or the catalog came from another account)."""
    try:
        return Fernet(_key(home)).decrypt(sealed.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise InvalidStateError(
            f"the secret of {what} cannot be opened with this account's {KEY_FILE} (it was "
            "sealed with another key); set it again (ALTER ... SET API_KEY = '...')"
        ) from None
