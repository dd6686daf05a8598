"""Authentication: bootstrap, passwords, session tokens, PATs, key-pair JWTs, header forms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import jwt
import orjson
import pytest
from sqlalchemy import func, select

from neve.catalog import models as m
from neve.context import RequestContext
from neve.errors import (
    AuthenticationError,
    InvalidArgumentError,
    InvalidStateError,
    ObjectExistsError,
    PermissionDeniedError,
)
from neve.security import keypair
from neve.security.manager import ACCOUNT
from neve.security.tokens import token_sha256


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def test_bootstrap_is_idempotent_and_builds_the_role_hierarchy(account, sec):
    sec.bootstrap()
    sec.bootstrap()
    with account.catalog.transaction() as s:
        assert s.scalar(select(func.count()).select_from(m.User)) == 1
        assert sorted(s.scalars(select(m.Role.name))) == ["ACCOUNTADMIN", "PUBLIC", "SYSADMIN"]
        assert sec.effective_roles(s, "ACCOUNTADMIN") == {"ACCOUNTADMIN", "SYSADMIN", "PUBLIC"}
        assert sec.effective_roles(s, "SYSADMIN") == {"SYSADMIN", "PUBLIC"}
        assert sec.usable_roles(s, "ADMIN") == {"ACCOUNTADMIN", "SYSADMIN", "PUBLIC"}
        sysadmin = RequestContext(user="ADMIN", role="SYSADMIN")
        assert sec.has_privilege(s, sysadmin, "CREATE DATABASE", ACCOUNT)
        assert sec.has_privilege(s, sysadmin, "CREATE COMPUTE POOL", ACCOUNT)
        assert not sec.has_privilege(s, sysadmin, "CREATE USER", ACCOUNT)


def test_local_admin_token_authenticates_as_admin_and_is_stored_hashed(account, sec):
    token = sec.local_admin_token()
    ctx = sec.authenticate_request(bearer(token))
    assert (ctx.user, ctx.role) == ("ADMIN", "ACCOUNTADMIN")
    assert ctx.request_id  # generated when the caller sends none
    with account.catalog.transaction() as s:
        hashes = list(s.scalars(select(m.Token.token_sha256)))
    assert token_sha256(token) in hashes
    assert all(token not in h for h in hashes)


def test_both_authorization_header_forms_and_context_headers(sec):
    token = sec.local_admin_token()
    ctx = sec.authenticate_request(
        {
            "authorization": f'Snowflake Token="{token}"',
            "x-neve-role": "sysadmin",
            "x-neve-database": "ml",
            "x-neve-schema": '"Mixed"',
            "x-request-id": "req-123",
        }
    )
    assert (ctx.role, ctx.database, ctx.schema, ctx.request_id) == (
        "SYSADMIN",
        "ML",
        "Mixed",
        "req-123",
    )


@pytest.mark.parametrize(
    "value",
    [None, "", "Bearer", "Basic YWRtaW46eA==", 'Snowflake Token=""', "Bearer nvs_not-a-token"],
)
def test_missing_or_bad_authorization_is_401(sec, value):
    headers = {} if value is None else {"Authorization": value}
    with pytest.raises(AuthenticationError) as exc:
        sec.authenticate_request(headers)
    assert exc.value.http_status == 401


def test_password_login_roles_and_wrong_password(account, sec, admin):
    sec.create_user(admin, "bob", password="correct horse", default_role="SYSADMIN")
    sec.grant_role(admin, "SYSADMIN", to_user="bob")
    with account.catalog.transaction() as s:
        stored = s.scalar(select(m.User.password_hash).where(m.User.name == "BOB"))
    assert stored.startswith("$argon2id$") and "correct horse" not in stored

    ctx = sec.authenticate_request(bearer(sec.login("bob", "correct horse")))
    assert (ctx.user, ctx.role) == ("BOB", "SYSADMIN")
    # a role the user does not hold cannot be picked, at login or per request
    with pytest.raises(AuthenticationError, match="ACCOUNTADMIN is not granted to user BOB"):
        sec.login("bob", "correct horse", role="ACCOUNTADMIN")
    with pytest.raises(AuthenticationError, match="not granted"):
        sec.authenticate_request(
            bearer(sec.login("bob", "correct horse"), **{"X-Neve-Role": "ACCOUNTADMIN"})
        )
    for user, password in [("bob", "wrong password"), ("nobody", "correct horse"), ("b-b", "x")]:
        with pytest.raises(AuthenticationError, match="incorrect user name or password"):
            sec.login(user, password)


def test_password_policy_and_disabled_users(sec, admin):
    with pytest.raises(InvalidArgumentError, match="password for user SHORTY"):
        sec.create_user(admin, "shorty", password="short")
    sec.create_user(admin, "carol", password="long enough pw")
    token = sec.login("carol", "long enough pw")
    sec.alter_user(admin, "carol", disabled=True)
    with pytest.raises(AuthenticationError, match="disabled"):
        sec.authenticate_request(bearer(token))
    with pytest.raises(AuthenticationError, match="disabled"):
        sec.login("carol", "long enough pw")


def test_expired_and_revoked_session_tokens_are_rejected(account, sec, admin):
    sec.create_user(admin, "dave", password="dave's password")
    token = sec.login("dave", "dave's password")
    assert sec.authenticate_request(bearer(token)).user == "DAVE"
    with account.catalog.transaction() as s:
        row = s.scalar(select(m.Token).where(m.Token.token_sha256 == token_sha256(token)))
        row.expires_on = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(AuthenticationError, match="expired"):
        sec.authenticate_request(bearer(token))

    token = sec.login("dave", "dave's password")
    sec.logout(token)
    with pytest.raises(AuthenticationError, match="revoked"):
        sec.authenticate_request(bearer(token))


def test_session_token_lifetime_follows_settings(account, sec, admin):
    account.settings.security.token_ttl_secs = 120
    sec.create_user(admin, "erin", password="erin's password")
    before = datetime.now(UTC)
    info = sec.login_session("erin", "erin's password")
    assert timedelta(seconds=119) < info["expires_on"] - before < timedelta(seconds=122)


def test_programmatic_access_tokens_listed_restricted_and_revoked(sec, admin):
    sec.create_user(admin, "frank", password="frank's password")
    sec.create_role(admin, "reader")
    sec.grant_role(admin, "reader", to_user="frank")
    frank = sec.authenticate_request(bearer(sec.login("frank", "frank's password")))

    pat = sec.create_token(frank, "ci", days_to_expiry=7, role="reader")
    assert pat["token"].startswith("nvp_")
    ctx = sec.authenticate_request(bearer(pat["token"]))
    assert (ctx.user, ctx.role) == ("FRANK", "READER")
    with pytest.raises(ObjectExistsError, match="CI already exists"):
        sec.create_token(frank, "ci")
    with pytest.raises(PermissionDeniedError, match="SYSADMIN is not granted to user FRANK"):
        sec.create_token(frank, "other", role="sysadmin")
    with pytest.raises(InvalidArgumentError, match="days_to_expiry"):
        sec.create_token(frank, "forever", days_to_expiry=10_000)

    listed = sec.list_tokens(frank)
    assert [(t["name"], t["status"], t["role"]) for t in listed] == [("CI", "ACTIVE", "READER")]
    assert "token" not in listed[0]
    # another user cannot see or revoke frank's tokens; the admin can
    sec.create_user(admin, "mallory", password="mallory's password")
    mallory = sec.authenticate_request(bearer(sec.login("mallory", "mallory's password")))
    with pytest.raises(PermissionDeniedError):
        sec.list_tokens(mallory, user="frank")
    with pytest.raises(PermissionDeniedError):
        sec.revoke_token(mallory, "ci", user="frank")
    assert sec.list_tokens(admin, user="frank")[0]["name"] == "CI"

    sec.revoke_token(frank, "ci")
    assert sec.list_tokens(frank)[0]["status"] == "REVOKED"
    with pytest.raises(AuthenticationError, match="revoked"):
        sec.authenticate_request(bearer(pat["token"]))


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    private = keypair.generate_private_key_pem()
    return private, keypair.public_key_of(private)


def test_keypair_jwt_authenticates_the_user(sec, admin, rsa_keys):
    private, public = rsa_keys
    # the reference accepts the bare base64 body of the key too
    bare = "".join(public.strip().splitlines()[1:-1])
    sec.create_user(admin, "svc_user", rsa_public_key=bare)
    described = sec.describe_user(admin, "svc_user")
    assert described["rsa_public_key_fp"] == keypair.public_key_fingerprint(public)
    token = keypair.make_jwt(private, account="local", user="svc_user")
    ctx = sec.authenticate_request(bearer(token))
    assert (ctx.user, ctx.role) == ("SVC_USER", "PUBLIC")


def test_forged_expired_and_misissued_jwts_are_rejected(sec, admin, rsa_keys):
    private, public = rsa_keys
    sec.create_user(admin, "svc_user", rsa_public_key=public)
    now = int(time.time())
    key = keypair.serialization.load_pem_private_key(private.encode(), password=None)
    fp = keypair.public_key_fingerprint(public)

    def signed(claims: dict, signing_key=key, alg="RS256") -> str:
        return jwt.encode(claims, signing_key, algorithm=alg)

    good = {"iss": f"LOCAL.SVC_USER.{fp}", "sub": "LOCAL.SVC_USER", "iat": now, "exp": now + 60}
    other_private = keypair.generate_private_key_pem()
    other_key = keypair.serialization.load_pem_private_key(other_private.encode(), password=None)
    header, payload, _sig = signed(good).split(".")
    forged_claims = base64.urlsafe_b64encode(
        b'{"iss":"LOCAL.ADMIN","sub":"LOCAL.ADMIN","iat":%d,"exp":%d}' % (now, now + 60)
    ).rstrip(b"=")
    cases = {
        "signed by another key": signed(good, other_key),
        "signed by another key, no fingerprint": signed(
            {k: v for k, v in good.items() if k != "iss"}, other_key
        ),
        "expired": signed(good | {"iat": now - 7200, "exp": now - 3600}),
        "lifetime over one hour": signed(good | {"exp": now + 86400}),
        "issued in the future": signed(good | {"iat": now + 3600, "exp": now + 3700}),
        "other account": signed(good | {"sub": "OTHER.SVC_USER"}),
        "unknown user": signed(good | {"sub": "LOCAL.NOBODY"}),
        "no exp": signed({k: v for k, v in good.items() if k != "exp"}),
        "HS256 keyed with the public key": _hs256_with(public, payload),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "payload swapped": f"{header}.{forged_claims.decode()}.{_sig}",
    }
    for label, token in cases.items():
        with pytest.raises(AuthenticationError) as exc:
            sec.authenticate_request(bearer(token))
        assert exc.value.http_status == 401, label
    # a user without a registered key cannot use key-pair auth at all
    sec.create_user(admin, "no_key", password="no key password")
    token = keypair.make_jwt(private, account="local", user="no_key")
    with pytest.raises(AuthenticationError, match="key-pair authentication failed"):
        sec.authenticate_request(bearer(token))


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def _hs256_with(public_pem: str, payload: str) -> str:
    """The algorithm-confusion attack: an HMAC 'signature' keyed with the (public) RSA key."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{payload}"
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_invalid_public_keys_are_refused(sec, admin):
    with pytest.raises(InvalidArgumentError, match="not a valid PEM"):
        sec.create_user(admin, "k1", rsa_public_key="not a key")
    small = keypair.public_key_of(keypair.generate_private_key_pem(bits=1024))
    with pytest.raises(InvalidArgumentError, match="at least 2048"):
        sec.create_user(admin, "k2", rsa_public_key=small)


def test_the_last_accountadmin_user_cannot_be_dropped_or_disabled(sec, admin):
    with pytest.raises(InvalidStateError, match="last user holding ACCOUNTADMIN"):
        sec.drop_user(admin, "admin")
    with pytest.raises(InvalidStateError, match="last user holding ACCOUNTADMIN"):
        sec.alter_user(admin, "admin", disabled=True)
    with pytest.raises(InvalidStateError, match="no other user"):
        sec.revoke_role(admin, "accountadmin", from_user="admin")
    sec.create_user(admin, "second_admin", password="second admin pw")
    sec.grant_role(admin, "accountadmin", to_user="second_admin")
    sec.revoke_role(admin, "accountadmin", from_user="admin")  # now allowed


def test_client_context_header_and_role_restricted_tokens(sec, admin):
    """X-Neve-Context (the client's JSON form) is honoured, within a PAT's role restriction."""
    sec.create_user(admin, "gina")
    for role in ("reader", "writer"):
        sec.create_role(admin, role)
        sec.grant_role(admin, role, to_user="gina")
    gina = sec.use_role(admin.with_(user="GINA"), "writer")
    pat = sec.create_token(gina, "scoped", role="reader")["token"]
    ctx = sec.authenticate_request(
        bearer(pat, **{"X-Neve-Context": '{"role": "reader", "database": "ml", "schema": "s"}'})
    )
    assert (ctx.role, ctx.database, ctx.schema) == ("READER", "ML", "S")
    for header in ({"X-Neve-Context": '{"role": "writer"}'}, {"X-Neve-Role": "writer"}):
        with pytest.raises(AuthenticationError, match="restricted to role READER"):
            sec.authenticate_request(bearer(pat, **header))
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        sec.authenticate_request(bearer(pat, **{"X-Neve-Context": "{nope"}))


def test_repeated_wrong_passwords_lock_the_user_name(account, sec, admin):
    sec.create_user(admin, "henry", password="henry's password")
    throttle = sec.login_throttle
    throttle.max_failures = 2  # (default 5: settings)
    now = [1000.0]
    throttle.clock = lambda: now[0]  # lockout time passes without sleeping
    with pytest.raises(AuthenticationError, match="incorrect"):
        sec.login("henry", "guess")
    sec.login("henry", "henry's password")  # a success resets the count
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="incorrect"):
            sec.login("henry", "guess")
    # locked: even the right password is refused, without being checked
    with pytest.raises(AuthenticationError, match="too many failed logins for user HENRY"):
        sec.login("henry", "henry's password")
    now[0] += throttle.lockout_s - 1  # still locked a second before the lockout ends
    with pytest.raises(AuthenticationError, match="try again in 1 s"):
        sec.login("henry", "henry's password")
    now[0] += 1  # the lock lapses
    assert sec.login("henry", "henry's password").startswith("nvs_")
