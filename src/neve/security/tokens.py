"""Opaque bearer tokens: random secrets handed out once and stored only as their SHA-256.

A token looks like ``nvs_<43 url-safe chars>`` (session), ``nvp_...`` (programmatic access
token) or ``nvl_...`` (the local admin token the daemon writes to the account directory). The
prefix only helps people and secret scanners recognise a neve token; the lookup is by hash.
"""

from __future__ import annotations

import hashlib
import secrets

SESSION = "SESSION"
PAT = "PAT"
LOCAL = "LOCAL"

_PREFIX = {SESSION: "nvs_", PAT: "nvp_", LOCAL: "nvl_"}
MAX_TOKEN_LENGTH = 4096  # longer Authorization values are rejected before any work is done


def new_token(kind: str) -> str:
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")
