"""Key-pair authentication: a JWT signed (RS256) by the user's RSA private key.

The claims follow the reference platform so its client libraries' JWTs work unchanged::

    iss = "<ACCOUNT>.<USER>.SHA256:<base64 sha256 of the public key's DER>"
    sub = "<ACCOUNT>.<USER>"
    iat = now, exp = now + at most one hour

The server verifies the signature with the public key stored on the user (CREATE USER ...
RSA_PUBLIC_KEY=...), accepts only RS256 (never ``none`` or an HMAC algorithm keyed with the public
key), and checks the fingerprint in ``iss`` when present.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from neve.errors import AuthenticationError, InvalidArgumentError

MAX_JWT_LIFETIME_SECS = 3600
CLOCK_SKEW_SECS = 60
MIN_RSA_BITS = 2048


def normalize_public_key(text: str, *, user: str) -> str:
    """Accept a PEM or the bare base64 body (as the reference accepts); return a PEM string."""
    raw = (text or "").strip()
    if not raw:
        raise InvalidArgumentError(f"RSA public key for user {user} is empty")
    if "-----BEGIN" not in raw:
        body = "".join(raw.split())
        raw = "-----BEGIN PUBLIC KEY-----\n" + body + "\n-----END PUBLIC KEY-----\n"
    try:
        key = serialization.load_pem_public_key(raw.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(
            f"RSA public key for user {user} is not a valid PEM public key: {exc}"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidArgumentError(f"public key for user {user} is not an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise InvalidArgumentError(
            f"RSA public key for user {user} has {key.key_size} bits; at least {MIN_RSA_BITS} "
            "are required"
        )
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_fingerprint(public_pem: str) -> str:
    """``SHA256:<base64>`` of the key's DER SubjectPublicKeyInfo (the reference's format)."""
    key = serialization.load_pem_public_key(public_pem.encode())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def generate_private_key_pem(bits: int = 2048) -> str:
    """A new unencrypted PKCS#8 RSA private key (for tests, demos and `neve users keygen`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_key_of(private_pem: str, password: bytes | None = None) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=password)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def make_jwt(
    private_pem: str,
    *,
    account: str,
    user: str,
    lifetime_secs: int = MAX_JWT_LIFETIME_SECS,
    password: bytes | None = None,
) -> str:
    """Client side: the JWT a user presents as ``Authorization: Bearer <jwt>``."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=password)
    fingerprint = public_key_fingerprint(public_key_of(private_pem, password))
    qualified = f"{account.upper()}.{user.upper()}"
    now = int(time.time())
    claims = {
        "iss": f"{qualified}.{fingerprint}",
        "sub": qualified,
        "iat": now,
        "exp": now + lifetime_secs,
    }
    return jwt.encode(claims, key, algorithm="RS256")  # type: ignore[arg-type]


@dataclass(frozen=True)
class JwtSubject:
    account: str
    user: str
    fingerprint: str | None


def unverified_subject(token: str) -> JwtSubject:
    """Who a JWT claims to be; used only to find the key to verify it with."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"malformed JWT: {exc}") from None
    if header.get("alg") != "RS256":
        raise AuthenticationError(f"JWT algorithm {header.get('alg')!r} is not accepted (RS256)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or "." not in sub:
        raise AuthenticationError("JWT subject must be '<ACCOUNT>.<USER>'")
    account, user = sub.split(".", 1)
    fingerprint = None
    iss = claims.get("iss")
    if isinstance(iss, str) and ".SHA256:" in iss:
        fingerprint = "SHA256:" + iss.rsplit(".SHA256:", 1)[1]
    return JwtSubject(account=account, user=user, fingerprint=fingerprint)


def verify_jwt(token: str, public_pem: str, subject: JwtSubject) -> dict:
    """The claims of ``token``; ``AuthenticationError`` unless it is valid and current."""
    if subject.fingerprint is not None and subject.fingerprint != public_key_fingerprint(
        public_pem
    ):
        raise AuthenticationError(
            f"JWT for user {subject.user} was signed by a key that is not registered for the user"
        )
    try:
        claims = jwt.decode(
            token,
            public_pem,
            algorithms=["RS256"],
            options={"require": ["exp", "iat", "sub"]},
            leeway=CLOCK_SKEW_SECS,
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError(f"JWT for user {subject.user} has expired") from None
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"invalid JWT for user {subject.user}: {exc}") from None
    now = time.time()
    if claims["iat"] > now + CLOCK_SKEW_SECS:
        raise AuthenticationError("JWT is issued in the future")
    if claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME_SECS + CLOCK_SKEW_SECS:
        raise AuthenticationError(
            f"JWT lifetime exceeds {MAX_JWT_LIFETIME_SECS} seconds; issue a shorter-lived JWT"
        )
    return claims
