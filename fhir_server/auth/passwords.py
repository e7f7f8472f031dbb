"""Password and client-secret hashing (argon2id)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["hash_password", "verify_password", "DUMMY_HASH"]

_hasher = PasswordHasher()
DUMMY_HASH = _hasher.hash("not-a-password-used-to-equalise-timing")


def hash_password(secret: str) -> str:
    return _hasher.hash(secret)


def verify_password(stored_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(stored_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
