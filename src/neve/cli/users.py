"""``neve users``: users, roles, grants, access tokens and key pairs.

    neve users create alice --password                 (prompts; or --password-stdin)
    neve users create robot --rsa-public-key-file robot.pub --default-role analyst
    neve users list | describe alice | drop alice
    neve users alter alice --default-role analyst --disable
    neve users login alice                             (prints a session token)
    neve users whoami
    neve users keygen robot.pem [--register robot]     (RSA key pair; registers the public key)
    neve users jwt --key robot.pem --user robot        (a key-pair JWT for Authorization: Bearer)
    neve users roles create analyst | drop analyst | list
    neve users roles grant analyst --to-user alice     (or --to-role; revoke: --from-...)
    neve users grant USAGE service ml.apps.forecast_svc --to-role analyst [--with-grant-option]
    neve users revoke USAGE service ml.apps.forecast_svc --from-role analyst
    neve users grants [--to-role R | --of-role R | --to-user U | --on TYPE NAME]
    neve users tokens create ci [--days 30] [--restrict-role analyst] | list | revoke ci
    neve users tokens create share --service ml.apps.forecast_svc   (only that service's
                                                       ingress endpoints, nothing else)

The control plane is the local account's (``neve.connect()``), or the one at ``--url`` /
``NEVE_URL`` with ``--token`` / ``NEVE_TOKEN``; ``--role`` / ``NEVE_ROLE`` picks the role.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from neve.cli._common import field_help, kind_body, print_record, print_table
from neve.kinds import USER

app = typer.Typer(help="Users, roles, grants, access tokens and key pairs.", add_completion=False)
roles_app = typer.Typer(help="Create, drop, list, grant and revoke roles.", add_completion=False)
tokens_app = typer.Typer(help="Programmatic access tokens.", add_completion=False)
app.add_typer(roles_app, name="roles")
app.add_typer(tokens_app, name="tokens")
console = Console()
err_console = Console(stderr=True)

_state: dict[str, Any] = {}


@app.callback()
def _options(
    url: Annotated[
        str | None, typer.Option(envvar="NEVE_URL", help="Control plane URL (default: local)")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="NEVE_TOKEN", help="Token for --url")] = None,
    role: Annotated[str | None, typer.Option(envvar="NEVE_ROLE", help="Role to act in")] = None,
) -> None:
    _state.update(url=url, token=token, role=role)


def _transport(*, public: bool = False) -> Any:
    from neve.client.transport import Transport

    if _state.get("url"):
        token = _state.get("token")
        if not token and not public:
            err_console.print("[red]error:[/red] --url needs --token (or NEVE_TOKEN)")
            raise typer.Exit(code=2)
        return Transport(_state["url"], token or "none")  # login is public: any token will do
    import neve
    from neve.client.warehouse import _transport as session_transport

    return session_transport(neve.connect())


def _call(method: str, path: str, *, public: bool = False, **kwargs: Any) -> Any:
    headers = {"X-Neve-Role": _state["role"]} if _state.get("role") else None
    return _transport(public=public).call(method, path, headers=headers, **kwargs)


def _run(func: Any, *args: Any, **kwargs: Any) -> Any:
    from neve.errors import NeveError

    try:
        return func(*args, **kwargs)
    except NeveError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=1) from None


def _password(prompt: bool, from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if prompt:
        return typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return None


# -- users ----------------------------------------------------------------------------------------


def _credentials(prompt: bool, from_stdin: bool, key_file: Path | None) -> dict[str, str | None]:
    """The password (asked for or read from stdin) and public key a command was given."""
    return {
        "password": _password(prompt, from_stdin),
        "rsa_public_key": key_file.read_text() if key_file else None,
    }


@app.command("create")
def create_user(
    name: str,
    password: Annotated[bool, typer.Option("--password", help="Prompt for a password")] = False,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin")] = False,
    rsa_public_key_file: Annotated[
        Path | None, typer.Option(exists=True, help=field_help(USER, "rsa_public_key"))
    ] = None,
    default_role: Annotated[str | None, typer.Option(help=field_help(USER, "default_role"))] = None,
    comment: Annotated[str | None, typer.Option(help=field_help(USER, "comment"))] = None,
) -> None:
    """CREATE USER."""
    body = kind_body(
        USER,
        "create",
        f"user {name}",
        **_credentials(password, password_stdin, rsa_public_key_file),
        default_role=default_role or None,
        comment=comment or None,
    )
    body["name"] = name
    row = _run(_call, "POST", "/api/v1/users", json=body)
    console.print(f"User {row['name']} created.")


@app.command("list")
def list_users() -> None:
    """SHOW USERS."""
    print_table(
        _run(_call, "GET", "/api/v1/users"),
        ["name", "default_role", "disabled", "has_password", "rsa_public_key_fp", "owner"],
    )


@app.command("describe")
def describe_user(name: str) -> None:
    """DESCRIBE USER."""
    row = _run(_call, "GET", f"/api/v1/users/{name}")
    print_record(row)


@app.command("alter")
def alter_user(
    name: str,
    password: Annotated[bool, typer.Option("--password", help="Prompt for a new password")] = False,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin")] = False,
    rsa_public_key_file: Annotated[
        Path | None, typer.Option(exists=True, help=field_help(USER, "rsa_public_key"))
    ] = None,
    default_role: Annotated[str | None, typer.Option(help=field_help(USER, "default_role"))] = None,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help=field_help(USER, "disabled"))
    ] = None,
    comment: Annotated[str | None, typer.Option(help=field_help(USER, "comment"))] = None,
) -> None:
    """ALTER USER ... SET."""
    body = kind_body(
        USER,
        "alter",
        f"user {name}",
        **_credentials(password, password_stdin, rsa_public_key_file),
        default_role=default_role,
        disabled=disable,
        comment=comment,
    )
    if not body:
        err_console.print("[red]error:[/red] nothing to change")
        raise typer.Exit(code=2)
    _run(_call, "PATCH", f"/api/v1/users/{name}", json=body)
    console.print(f"User {name.upper()} altered.")


@app.command("drop")
def drop_user(name: str, if_exists: Annotated[bool, typer.Option()] = False) -> None:
    """DROP USER."""
    params = {"if_exists": "true"} if if_exists else None
    _run(_call, "DELETE", f"/api/v1/users/{name}", params=params)
    console.print(f"User {name.upper()} dropped.")


@app.command("login")
def login(
    user: str,
    role: Annotated[str | None, typer.Option("--as-role", help="Role of the session")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin")] = False,
) -> None:
    """Log in with a password and print a session token (for NEVE_TOKEN or curl)."""
    secret = sys.stdin.readline().rstrip("\n") if password_stdin else None
    if secret is None:
        secret = typer.prompt("Password", hide_input=True)
    body = {"user": user, "password": secret} | ({"role": role} if role else {})
    result = _run(_call, "POST", "/api/v1/login", json=body, public=True)
    err_console.print(
        f"user {result['user']}, role {result['role']}, expires {result['expires_on']}"
    )
    typer.echo(result["token"])


@app.command("whoami")
def whoami() -> None:
    """The user, role and roles of the current credentials."""
    row = _run(_call, "GET", "/api/v1/session")
    console.print(json.dumps(row, indent=2))


@app.command("keygen")
def keygen(
    private_key_file: Path,
    bits: Annotated[int, typer.Option()] = 2048,
    register: Annotated[
        str | None, typer.Option(help="Set the public key on this user (ALTER USER)")
    ] = None,
) -> None:
    """Write a new RSA private key (mode 0600) and print its public key."""
    from neve.security import keypair

    if private_key_file.exists():
        err_console.print(f"[red]error:[/red] {private_key_file} exists; not overwriting it")
        raise typer.Exit(code=1)
    private = keypair.generate_private_key_pem(bits)
    fd = os.open(
        private_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(private)
    public = keypair.public_key_of(private)
    if register:
        _run(_call, "PATCH", f"/api/v1/users/{register}", json={"rsa_public_key": public})
        err_console.print(f"public key set on user {register.upper()}")
    typer.echo(public, nl=False)


@app.command("jwt")
def make_jwt(
    key: Annotated[Path, typer.Option(exists=True, help="PEM private key file")],
    user: Annotated[str, typer.Option()],
    account: Annotated[str, typer.Option(envvar="NEVE_ACCOUNT")] = "local",
    lifetime: Annotated[int, typer.Option(help="Seconds (at most 3600)")] = 3600,
) -> None:
    """Print a key-pair JWT for ``Authorization: Bearer <jwt>``."""
    from neve.security import keypair

    typer.echo(
        keypair.make_jwt(key.read_text(), account=account, user=user, lifetime_secs=lifetime)
    )


# -- roles and grants -----------------------------------------------------------------------------


@roles_app.command("create")
def create_role(name: str, comment: Annotated[str | None, typer.Option()] = None) -> None:
    """CREATE ROLE."""
    row = _run(_call, "POST", "/api/v1/roles", json={"name": name, "comment": comment})
    console.print(f"Role {row['name']} created.")


@roles_app.command("drop")
def drop_role(name: str, if_exists: Annotated[bool, typer.Option()] = False) -> None:
    """DROP ROLE."""
    params = {"if_exists": "true"} if if_exists else None
    _run(_call, "DELETE", f"/api/v1/roles/{name}", params=params)
    console.print(f"Role {name.upper()} dropped.")


@roles_app.command("list")
def list_roles() -> None:
    """SHOW ROLES."""
    print_table(_run(_call, "GET", "/api/v1/roles"), ["name", "owner", "comment", "created_on"])


def _grantee(user: str | None, role: str | None, *, prefix: str) -> dict[str, str]:
    if (user is None) == (role is None):
        err_console.print(f"[red]error:[/red] give exactly one of --{prefix}-user, --{prefix}-role")
        raise typer.Exit(code=2)
    return {f"{prefix}_user": user} if user else {f"{prefix}_role": role}  # type: ignore[dict-item]


@roles_app.command("grant")
def grant_role(
    role: str,
    to_user: Annotated[str | None, typer.Option()] = None,
    to_role: Annotated[str | None, typer.Option()] = None,
) -> None:
    """GRANT ROLE r TO USER u | TO ROLE p."""
    _run(
        _call, "POST", f"/api/v1/roles/{role}/grants", json=_grantee(to_user, to_role, prefix="to")
    )
    console.print("Granted.")


@roles_app.command("revoke")
def revoke_role(
    role: str,
    from_user: Annotated[str | None, typer.Option()] = None,
    from_role: Annotated[str | None, typer.Option()] = None,
) -> None:
    """REVOKE ROLE r FROM USER u | FROM ROLE p."""
    body = _grantee(from_user, from_role, prefix="from")
    _run(_call, "DELETE", f"/api/v1/roles/{role}/grants", json=body)
    console.print("Revoked.")


@app.command("grant")
def grant(
    privilege: str,
    object_type: str,
    object_name: Annotated[str, typer.Argument(help="Name; 'account' for ACCOUNT")],
    to_role: Annotated[str, typer.Option()],
    with_grant_option: Annotated[bool, typer.Option()] = False,
    revoke_current_grants: Annotated[
        bool, typer.Option(help="With OWNERSHIP: drop the object's grants")
    ] = False,
) -> None:
    """GRANT privilege ON type name TO ROLE r (privilege OWNERSHIP transfers ownership)."""
    body = {
        "privilege": privilege.replace("_", " "),
        "object_type": object_type.replace("_", " "),
        "object_name": None if object_type.upper() == "ACCOUNT" else object_name,
        "to_role": to_role,
        "with_grant_option": with_grant_option,
        "copy_current_grants": not revoke_current_grants,
    }
    result = _run(_call, "POST", "/api/v1/grants", json=body)
    console.print(f"Granted {', '.join(result['granted'])}.")


@app.command("revoke")
def revoke(
    privilege: str,
    object_type: str,
    object_name: str,
    from_role: Annotated[str, typer.Option()],
    grant_option_only: Annotated[bool, typer.Option()] = False,
) -> None:
    """REVOKE [GRANT OPTION FOR] privilege ON type name FROM ROLE r."""
    body = {
        "privilege": privilege.replace("_", " "),
        "object_type": object_type.replace("_", " "),
        "object_name": None if object_type.upper() == "ACCOUNT" else object_name,
        "from_role": from_role,
        "grant_option_only": grant_option_only,
    }
    result = _run(_call, "DELETE", "/api/v1/grants", json=body)
    console.print(f"Revoked {', '.join(result['revoked']) or 'nothing'}.")


@app.command("grants")
def show_grants(
    to_role: Annotated[str | None, typer.Option()] = None,
    of_role: Annotated[str | None, typer.Option()] = None,
    to_user: Annotated[str | None, typer.Option()] = None,
    on: Annotated[
        tuple[str, str] | None, typer.Option(help="TYPE NAME, e.g. --on service ml.apps.svc")
    ] = None,
) -> None:
    """SHOW GRANTS TO ROLE | OF ROLE | TO USER | ON object (default: roles of the current user)."""
    params: dict[str, str] = {}
    if to_role:
        params["to_role"] = to_role
    if of_role:
        params["of_role"] = of_role
    if to_user:
        params["to_user"] = to_user
    if on:
        params["on_type"], params["on_name"] = on[0].replace("_", " "), on[1]
    rows = _run(_call, "GET", "/api/v1/grants", params=params)
    if rows and "privilege" in rows[0]:
        columns = ["privilege", "granted_on", "name", "grantee_name", "grant_option", "granted_by"]
    else:
        columns = ["role", "granted_to", "grantee_name", "granted_by"]
    print_table(rows, columns)


# -- tokens ---------------------------------------------------------------------------------------


@tokens_app.command("create")
def create_token(
    name: str,
    days: Annotated[int, typer.Option(help="Days until it expires (1-365)")] = 15,
    restrict_role: Annotated[
        str | None, typer.Option("--restrict-role", help="The token acts only in this role")
    ] = None,
    user: Annotated[str | None, typer.Option(help="For another user (needs its ownership)")] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            help="Scope it to this service's ingress endpoints (repeat for several); a scoped "
            "token can do nothing else",
        ),
    ] = None,
    comment: Annotated[str | None, typer.Option(help="A comment shown by list")] = None,
) -> None:
    """Create a programmatic access token and print it (shown once, stored only hashed)."""
    body: dict[str, Any] = {"name": name, "days_to_expiry": days}
    if restrict_role:
        body["role"] = restrict_role
    if user:
        body["user"] = user
    if service:
        body["services"] = list(service)
    if comment:
        body["comment"] = comment
    result = _run(_call, "POST", "/api/v1/tokens", json=body)
    scope = (
        f", scoped to service(s) {', '.join(result['services'])}" if result.get("services") else ""
    )
    err_console.print(
        f"token {result['name']} of user {result['user']}, expires {result['expires_on']}{scope}"
    )
    typer.echo(result["token"])


@tokens_app.command("list")
def list_tokens(user: Annotated[str | None, typer.Option()] = None) -> None:
    """List programmatic access tokens (never their secrets)."""
    params = {"user": user} if user else None
    print_table(
        _run(_call, "GET", "/api/v1/tokens", params=params),
        ["name", "user", "role", "services", "status", "created_on", "expires_on", "comment"],
    )


@tokens_app.command("revoke")
def revoke_token(name: str, user: Annotated[str | None, typer.Option()] = None) -> None:
    """Revoke a programmatic access token."""
    params = {"user": user} if user else None
    _run(_call, "DELETE", f"/api/v1/tokens/{name}", params=params)
    console.print(f"Token {name.upper()} revoked.")
