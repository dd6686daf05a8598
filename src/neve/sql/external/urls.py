"""URLs of external functions and API integrations: checked, matched against allowed prefixes, and the remote service they name."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from neve.errors import (
    InvalidArgumentError,
)

if TYPE_CHECKING:
    pass


_SVC_PATH = re.compile(r"^/svc/([^/]+)/")


def check_url(url: Any, what: str) -> str:
    """An http(s) URL with a host and a plain path (no user info, fragment or dot segments)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgumentError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    text = url.strip()
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in text):
        raise InvalidArgumentError(f"{what}: {text!r} contains blanks, control characters or '\\'")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"{what}: {text!r} is not an http:// or https:// URL with a host"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError(
            f"{what}: {text!r} carries a user name or password; put the secret in API_KEY"
        )
    if parts.fragment:
        raise InvalidArgumentError(f"{what}: {text!r} has a fragment (#...)")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise InvalidArgumentError(f"{what}: {text!r} has an invalid port") from None
    lowered = parts.path.lower()
    if "%2e" in lowered or "%2f" in lowered or "%5c" in lowered:
        raise InvalidArgumentError(f"{what}: {text!r} has an encoded '.', '/' or '\\' in its path")
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise InvalidArgumentError(f"{what}: {text!r} has '.' or '..' path segments")
    return text


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def matches(url: str, prefix: str) -> bool:
    """``url`` lies under ``prefix``: the same scheme, host and port, and its path starts with
    the prefix's path (compared parsed, so ``http://h:80`` never admits ``http://h:8000``)."""
    if _origin(url) != _origin(prefix):
        return False
    return urlsplit(url).path.startswith(urlsplit(prefix).path)


def remote_service(url: str) -> str | None:
    """The service a neve ingress URL names (``.../svc/<service>/<method>``), if it does."""
    found = _SVC_PATH.match(urlsplit(url).path)
    return found.group(1) if found else None
