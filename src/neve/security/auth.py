"""Authentication: who is calling. Session tokens, programmatic access tokens, key-pair JWTs.

``SecurityManager`` mixes this in; everything here works on the catalog tables ``users``,
``role_grants`` and ``tokens``. A token's secret is returned once, when it is issued; the catalog
keeps only its SHA-256, an expiry and a revoked flag.

Accepted ``Authorization`` header forms::

    Authorization: Bearer <token or JWT>
    Authorization: Snowflake Token="<token>"

plus ``X-Neve-Role`` (use this role; the user must hold it), ``X-Neve-Database`` /
``X-Neve-Schema`` (the current database and schema) and ``X-Request-Id``. The client's
``X-Neve-Context: {"role", "database", "schema"}`` is read too (the single headers win). A token
restricted to a role (a PAT created with ``role=``) can only ever act in that role or roles it
inherits, whichever header asks for another.

A PAT created with ``services=`` is *scoped to services*: it authenticates only at the ingress
(``authenticate(headers, ingress=True)``) and its context carries ``service_scope``, the ids of
the only services whose endpoints it may call (the gateway checks it). Everywhere else (the REST
API, SQL, the console) it is refused with 403, so a token handed to another installation for an
external function can do nothing but call those endpoints.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neve.catalog import lookup
from neve.catalog import models as m
from neve.context import ACCOUNTADMIN, ADMIN_USER, PUBLIC, RequestContext
from neve.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NeveError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermissionDeniedError,
)
from neve.identifiers import ident, qualify
from neve.security import keypair, passwords
from neve.security.directory import Directory
from neve.security.throttle import LoginThrottle
from neve.security.tokens import (
    LOCAL,
    MAX_TOKEN_LENGTH,
    PAT,
    SESSION,
    looks_like_jwt,
    new_token,
    token_sha256,
)

if TYPE_CHECKING:
    pass

ROLE_HEADER = "x-neve-role"
DATABASE_HEADER = "x-neve-database"
SCHEMA_HEADER = "x-neve-schema"
REQUEST_ID_HEADER = "x-request-id"
CONTEXT_HEADER = "x-neve-context"  # JSON {"role", "database", "schema"}, as the client sends
MAX_CONTEXT_HEADER = 2048

DEFAULT_PAT_DAYS = 15
MAX_PAT_DAYS = 365

_SNOWFLAKE_TOKEN = re.compile(r'^Token\s*=\s*"([^"]*)"$', re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_id_from(headers: Mapping[str, str]) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    given = _header(headers, REQUEST_ID_HEADER)
    if given and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def context_header(value: str | None) -> dict[str, str]:
    """``X-Neve-Context: {"role": ..., "database": ..., "schema": ...}`` (the client's form)."""
    if not value:
        return {}
    if len(value) > MAX_CONTEXT_HEADER:
        raise InvalidArgumentError("X-Neve-Context header is too long")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise InvalidArgumentError("X-Neve-Context header is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidArgumentError("X-Neve-Context must be an object {role, database, schema}")
    return {
        k: v for k in ("role", "database", "schema") if isinstance(v := parsed.get(k), str) and v
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    if value is None and not hasattr(headers, "getlist"):  # a plain dict with odd casing
        for key, val in headers.items():
            if key.lower() == name:
                return val
    return value


def bearer_token(authorization: str | None) -> str:
    """The token in an Authorization header value, or ``AuthenticationError``."""
    if not authorization:
        raise AuthenticationError(
            "missing Authorization header: send 'Authorization: Bearer <token>'"
        )
    if len(authorization) > MAX_TOKEN_LENGTH:
        raise AuthenticationError("Authorization header is too long")
    scheme, _, rest = authorization.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "snowflake":
        match = _SNOWFLAKE_TOKEN.match(rest)
        if match and match.group(1):
            return match.group(1)
    raise AuthenticationError(
        "unsupported Authorization header: use 'Bearer <token>' or 'Snowflake Token=\"<token>\"'"
    )


class Authentication(Directory):
    """Login, tokens and request authentication (a layer of ``SecurityManager``, over the users
    and roles of ``Directory``)."""

    login_throttle: LoginThrottle

    # -- issuing ----------------------------------------------------------------------------------
    def _issue(
        self,
        s: Session,
        user: m.User,
        kind: str,
        ttl: timedelta,
        *,
        name: str | None = None,
        role: str | None = None,
    ) -> tuple[str, m.Token]:
        token = new_token(kind)
        row = m.Token(
            user_id=user.id,
            name=name,
            kind=kind,
            token_sha256=token_sha256(token),
            role=role,
            expires_on=utcnow() + ttl,
        )
        s.add(row)
        s.flush()
        return token, row

    def local_admin_token(self, ttl_secs: int | None = None) -> str:
        """A token for the local admin (the daemon writes it to a 0600 file in the account dir)."""
        self.bootstrap()
        ttl = ttl_secs or self.settings.security.local_token_ttl_secs
        with self.catalog.transaction() as s:
            admin = self._user(s, ADMIN_USER)
            token, _ = self._issue(s, admin, LOCAL, timedelta(seconds=ttl))
            return token

    def login(self, user: str, password: str, *, role: str | None = None) -> str:
        """Check a password and return a session token (``settings.security.token_ttl_secs`` long)."""
        return self.login_session(user, password, role=role)["token"]

    def login_session(self, user: str, password: str, *, role: str | None = None) -> dict:
        """Like ``login`` but also says who and which role the session is, and until when."""
        self.bootstrap()
        denied = AuthenticationError("incorrect user name or password")
        try:
            name = ident(user, kind="user name")
        except NeveError:
            raise denied from None
        if not isinstance(password, str) or len(password) > passwords.MAX_PASSWORD_LENGTH:
            raise denied
        self.login_throttle.check(name)
        with self.catalog.transaction() as s:
            row = s.scalar(select(m.User).where(m.User.name == name))
            ok = passwords.verify_password(row.password_hash if row else None, password)
            if row is None or not ok:
                self.login_throttle.failed(name)
                raise denied
            self.login_throttle.succeeded(name)
            if row.disabled:
                raise AuthenticationError(f"user {name} is disabled")
            if passwords.needs_rehash(row.password_hash or ""):
                row.password_hash = passwords.hash_password(password)
            session_role = self._pick_role(s, row, role, restriction=None)
            ttl = timedelta(seconds=self.settings.security.token_ttl_secs)
            token, tok = self._issue(s, row, SESSION, ttl, role=session_role)
            return {
                "token": token,
                "user": row.name,
                "role": session_role,
                "expires_on": tok.expires_on,
                "token_type": "Bearer",
            }

    def logout(self, token: str) -> None:
        """Revoke a session token (its own holder may always do this)."""
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            row = s.scalar(select(m.Token).where(m.Token.token_sha256 == token_sha256(token)))
            if row is not None:
                row.revoked = True

    # -- programmatic access tokens -----------------------------------------------------------
    def create_token(
        self,
        ctx: RequestContext,
        name: str,
        *,
        days_to_expiry: int = DEFAULT_PAT_DAYS,
        role: str | None = None,
        user: str | None = None,
        comment: str | None = None,
        services: list[str] | tuple[str, ...] | None = None,
    ) -> dict:
        """A programmatic access token; the secret is in the result and nowhere else.

        ``services`` scopes it to those services' ingress endpoints (names resolved in the
        caller's current database and schema; the caller needs USAGE on each, and so does the
        ``role`` it is restricted to): it can call them and nothing else."""
        token_name = ident(name, kind="token name")
        if not isinstance(days_to_expiry, int) or not 1 <= days_to_expiry <= MAX_PAT_DAYS:
            raise InvalidArgumentError(
                f"days_to_expiry for token {token_name} must be an integer from 1 to {MAX_PAT_DAYS}"
            )
        if comment is not None and not isinstance(comment, str):
            raise InvalidArgumentError(f"comment of token {token_name} must be a string")
        with self.catalog.transaction() as s:
            owner = self._token_user(s, ctx, user)
            if s.scalar(
                select(m.Token.id).where(
                    m.Token.user_id == owner.id,
                    m.Token.kind == PAT,
                    m.Token.name == token_name,
                    m.Token.revoked.is_(False),
                    m.Token.expires_on > utcnow(),
                )
            ):
                raise ObjectExistsError(
                    f"programmatic access token {token_name} already exists for user {owner.name}"
                )
            restriction = None
            if role is not None:
                restriction = ident(role, kind="role name")
                if restriction not in self.usable_roles(s, owner.name):
                    raise PermissionDeniedError(
                        f"role {restriction} is not granted to user {owner.name}; a token can "
                        "only be restricted to a role the user holds"
                    )
            scope = (
                None
                if services is None
                else self._token_services(s, ctx, token_name, services, owner.name, restriction)
            )
            token, row = self._issue(
                s, owner, PAT, timedelta(days=days_to_expiry), name=token_name, role=restriction
            )
            row.services = scope
            row.comment = comment
            return {
                "name": token_name,
                "user": owner.name,
                "token": token,
                "role": restriction,
                "services": self._scope_names(s, scope),
                "expires_on": row.expires_on,
                "comment": comment,
            }

    def _token_services(
        self,
        s: Session,
        ctx: RequestContext,
        token_name: str,
        services: list[str] | tuple[str, ...],
        user: str,
        restriction: str | None,
    ) -> list[int]:
        """The ids of the services a scoped token names: each one exists, has an ingress
        endpoint, and may be used by the caller (and by the role the token is restricted to)."""
        if isinstance(services, str) or not isinstance(services, list | tuple):
            raise InvalidArgumentError(
                f"services of token {token_name} must be a list of service names"
            )
        if not services:
            raise InvalidArgumentError(
                f"token {token_name}: SERVICES = () names no service; name the services whose "
                "endpoints the token may call, or leave SERVICES out for an unscoped token"
            )
        ids: list[int] = []
        for raw in services:
            if not isinstance(raw, str):
                raise InvalidArgumentError(f"token {token_name}: service names must be strings")
            qn = qualify(raw, database=ctx.database, schema=ctx.schema, kind="service")
            svc = lookup.in_schema(s, m.Service, qn, "service")
            self.require(s, ctx, "USAGE", svc)  # type: ignore[attr-defined]
            if restriction is not None:
                acting = RequestContext(user=user, role=restriction)
                if not self.has_privilege(s, acting, "USAGE", svc):  # type: ignore[attr-defined]
                    raise PermissionDeniedError(
                        f"token {token_name}: role {restriction} has no USAGE on service {qn}; "
                        "a token restricted to it could not call the service"
                    )
            if not svc.ingress_enabled:
                raise InvalidArgumentError(
                    f"token {token_name}: service {qn} has no ingress endpoint (it was created "
                    "with ingress_enabled=False), so a token scoped to it could call nothing"
                )
            if svc.id not in ids:
                ids.append(svc.id)
        return sorted(ids)

    @staticmethod
    def _scope_names(s: Session, scope: list[int] | None) -> list[str] | None:
        """A scoped token's services by name (one dropped since shows as ``#id (dropped)``)."""
        if scope is None:
            return None
        names = []
        for sid in scope:
            svc = s.get(m.Service, sid)
            names.append(
                str(lookup.qualified(s, svc.schema_id, svc.name))
                if svc is not None
                else f"#{sid} (dropped)"
            )
        return names

    def list_tokens(self, ctx: RequestContext, *, user: str | None = None) -> list[dict]:
        """The user's programmatic access tokens (never their secrets)."""
        now = utcnow()
        with self.catalog.transaction() as s:
            owner = self._token_user(s, ctx, user)
            rows = s.scalars(
                select(m.Token)
                .where(m.Token.user_id == owner.id, m.Token.kind == PAT)
                .order_by(m.Token.id)
            ).all()
            return [
                {
                    "name": r.name,
                    "user": owner.name,
                    "role": r.role,
                    "services": self._scope_names(s, r.services),
                    "created_on": r.created_on,
                    "expires_on": r.expires_on,
                    "status": "REVOKED"
                    if r.revoked
                    else ("EXPIRED" if r.expires_on <= now else "ACTIVE"),
                    "comment": r.comment,
                }
                for r in rows
            ]

    def revoke_token(self, ctx: RequestContext, name: str, *, user: str | None = None) -> None:
        token_name = ident(name, kind="token name")
        with self.catalog.transaction() as s:
            self._changed_on_commit(s)
            owner = self._token_user(s, ctx, user)
            rows = s.scalars(
                select(m.Token).where(
                    m.Token.user_id == owner.id,
                    m.Token.kind == PAT,
                    m.Token.name == token_name,
                    m.Token.revoked.is_(False),
                )
            ).all()
            if not rows:
                raise ObjectNotFoundError(
                    f"programmatic access token {token_name} of user {owner.name} does not exist"
                )
            for row in rows:
                row.revoked = True

    def _token_user(self, s: Session, ctx: RequestContext, user: str | None) -> m.User:
        if user is None:
            return self._user(s, ctx.user)
        target = self._user(s, ident(user, kind="user name"))
        if target.name != ctx.user and not self._may_manage_user(s, ctx, target):
            raise PermissionDeniedError(
                f"insufficient privileges: role {ctx.role} may not manage tokens of user "
                f"{target.name}"
            )
        return target

    def purge_expired_tokens(self, older_than: timedelta = timedelta(days=1)) -> int:
        with self.catalog.transaction() as s:
            result = s.execute(delete(m.Token).where(m.Token.expires_on < utcnow() - older_than))
            return int(getattr(result, "rowcount", 0) or 0)  # a CursorResult for DELETE

    # -- authenticating a request -----------------------------------------------------------------
    def authenticate_request(self, headers: Mapping[str, str]) -> RequestContext:
        """The caller's context from HTTP headers, or ``AuthenticationError`` (401)."""
        return self.authenticate(headers)[0]

    def authenticate(
        self, headers: Mapping[str, str], *, ingress: bool = False
    ) -> tuple[RequestContext, datetime]:
        """Like ``authenticate_request``, plus when the credential expires (for caches).

        A token scoped to services is accepted only with ``ingress`` (the ingress gateway,
        which then keeps the caller to those services); anywhere else it is refused (403)."""
        token = bearer_token(_header(headers, "authorization"))
        context = context_header(_header(headers, CONTEXT_HEADER))
        role_wanted = _header(headers, ROLE_HEADER) or context.get("role")
        database = _header(headers, DATABASE_HEADER) or context.get("database")
        schema = _header(headers, SCHEMA_HEADER) or context.get("schema")
        scope: tuple[int, ...] | None = None
        with self.catalog.transaction() as s:
            if looks_like_jwt(token):
                user, expires = self._user_from_jwt(s, token)
                restriction = None
            else:
                row = self._token_row(s, token)
                user, restriction, expires = self._user_of(s, row)
                if row.services is not None:
                    if not ingress:
                        raise PermissionDeniedError(
                            f"token {row.name} is scoped to the ingress endpoints of service(s) "
                            f"{', '.join(self._scope_names(s, row.services) or [])}: it cannot "
                            "call the REST API, run SQL or sign in to the console"
                        )
                    scope = tuple(int(i) for i in row.services)
            role = self._pick_role(s, user, role_wanted, restriction=restriction)
        ctx = RequestContext(
            user=user.name,
            role=role,
            database=ident(database, kind="database name") if database else None,
            schema=ident(schema, kind="schema name") if schema else None,
            request_id=request_id_from(headers),
            service_scope=scope,
        )
        return ctx, expires

    def authenticate_token(self, token: str) -> RequestContext:
        """Context for a bare token (no headers): the session's role, no current database."""
        return self.authenticate_request({"authorization": f"Bearer {token}"})

    def _user_from_token(self, s: Session, token: str) -> tuple[m.User, str | None, datetime]:
        return self._user_of(s, self._token_row(s, token))

    @staticmethod
    def _token_row(s: Session, token: str) -> m.Token:
        """The token's row, if it is valid now (not revoked, not expired)."""
        row = s.scalar(select(m.Token).where(m.Token.token_sha256 == token_sha256(token)))
        if row is None:
            raise AuthenticationError("invalid token")
        if row.revoked:
            raise AuthenticationError(f"token {row.name or ''} has been revoked".replace("  ", " "))
        if row.expires_on <= utcnow():
            raise AuthenticationError("token has expired; log in again or issue a new token")
        return row

    @staticmethod
    def _user_of(s: Session, row: m.Token) -> tuple[m.User, str | None, datetime]:
        user = s.get(m.User, row.user_id)
        if user is None or user.disabled:
            raise AuthenticationError("the token's user is disabled or no longer exists")
        return user, row.role, row.expires_on

    def _user_from_jwt(self, s: Session, token: str) -> tuple[m.User, datetime]:
        subject = keypair.unverified_subject(token)
        account_name = self.settings.account_name
        if subject.account.upper() != account_name.upper():
            raise AuthenticationError(
                f"JWT is for account {subject.account}, this is account {account_name.upper()}"
            )
        user = s.scalar(select(m.User).where(m.User.name == subject.user)) or s.scalar(
            select(m.User).where(m.User.name == subject.user.upper())
        )
        if user is None or not user.rsa_public_key:
            # Same message for "no such user" and "no key": do not reveal which users exist.
            raise AuthenticationError(f"key-pair authentication failed for user {subject.user}")
        claims = keypair.verify_jwt(token, user.rsa_public_key, subject)
        if user.disabled:
            raise AuthenticationError(f"user {user.name} is disabled")
        return user, datetime.fromtimestamp(claims["exp"], UTC)

    def _pick_role(
        self, s: Session, user: m.User, wanted: str | None, *, restriction: str | None
    ) -> str:
        """The session's role: the one asked for (if allowed), else the default, else PUBLIC."""
        allowed = (
            self.effective_roles(s, restriction)
            if restriction is not None
            else self.usable_roles(s, user.name)
        )
        if wanted:
            try:
                role = ident(wanted, kind="role name")
            except NeveError as exc:
                raise AuthenticationError(str(exc)) from None
            if role not in allowed:
                raise AuthenticationError(
                    f"role {role} is not granted to user {user.name}"
                    + (f" (token restricted to role {restriction})" if restriction else "")
                )
            return role
        if restriction is not None:
            return restriction
        if user.default_role and user.default_role in allowed:
            return user.default_role
        if user.name == ADMIN_USER and ACCOUNTADMIN in allowed:
            return ACCOUNTADMIN
        return PUBLIC
