"""Password hashing with argon2id (argon2-cffi); plain passwords are never stored or logged."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from neve.errors import InvalidArgumentError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256

# argon2-cffi's RFC 9106 "low memory" profile: ~50 ms per hash on one core, 64 MiB.
_hasher = PasswordHasher()

# A real hash of a throwaway password, verified when the user does not exist so that a login for
# an unknown user costs as much as one for a known user (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash("neve-dummy-password-for-timing")


def check_password_policy(password: str, *, user: str) -> None:
    if not isinstance(password, str) or not (
        MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
    ):
        raise InvalidArgumentError(
            f"password for user {user} must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} "
            "characters long"
        )


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; constant work whether or not a hash exists."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
