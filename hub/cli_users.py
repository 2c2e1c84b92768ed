"""``yijian users``: the web workstation's accounts (doctors, consultants, admins).

A new account gets the password read from stdin (``--password-stdin``) or a generated one,
printed once. ``--totp`` turns on a second factor and prints the secret and its
``otpauth://`` URI for an authenticator app. Disabling an account or resetting its password
ends its sessions. Every change is audited as the CLI operator.

Registered on the main command group by ``hub.cli`` (imported at its end).
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any

import click

from hub.cli import _Admin, _admin_command, main


@main.group()
def users() -> None:
    """Web workstation accounts (login with password, TOTP, or a hospital's OIDC)."""


def _read_password(from_stdin: bool) -> tuple[str, bool]:
    """The password to set and whether it was generated (then it is printed once)."""
    if not from_stdin:
        return secrets.token_urlsafe(15), True
    password = sys.stdin.readline().rstrip("\r\n")
    from hub.web.accounts import AccountError, check_password_strength

    try:
        check_password_strength(password)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    return password, False


def _totp_output(username: str, secret: str) -> dict[str, str]:
    from hub.web.totp import provisioning_uri

    return {"totp_secret": secret, "totp_uri": provisioning_uri(secret, username)}


@users.command("add")
@click.option("--username", required=True, help="login name (lower case letters, digits . _ @ -)")
@click.option("--role", required=True, type=click.Choice(["doctor", "consultant", "admin"]))
@click.option("--organization", required=True, help="Organization id the person works for")
@click.option("--name", required=True, help="display name, e.g. 李明")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@click.option("--totp", is_flag=True, help="require a TOTP code at login; prints the secret")
@click.option("--json", "as_json", is_flag=True)
def users_add(
    username: str,
    role: str,
    organization: str,
    name: str,
    password_stdin: bool,
    totp: bool,
    as_json: bool,
) -> None:
    """Create an account. A generated password is shown only now."""
    from hub.security.principals import ClientKind
    from hub.web.accounts import (
        AccountError,
        AccountRepository,
        hash_password,
        normalize_username,
        seal_totp_secret,
    )
    from hub.web.totp import new_secret

    password, generated = _read_password(password_stdin)
    secret = new_secret() if totp else None

    async def work(admin: _Admin) -> Any:
        try:
            login = normalize_username(username)
            password_hash = await hash_password(password)
            async with admin.hub.database.connection() as conn:
                accounts = AccountRepository(conn)
                account = await accounts.create(
                    login, name, ClientKind(role), organization, password_hash
                )
                if secret:
                    sealed = seal_totp_secret(admin.hub.identity.protection, login, secret)
                    await accounts.set_totp(login, sealed, True)
        except AccountError as error:
            raise click.ClickException(str(error)) from None
        await admin.audit("C", "web-user-add", [f"web-user/{login}"])
        return account

    account = _admin_command(work)
    output: dict[str, Any] = {
        "username": account.username,
        "role": role,
        "organization": organization,
        "name": account.display_name,
    }
    if generated:
        output["password"] = password
    if secret:
        output.update(_totp_output(account.username, secret))
    if as_json:
        click.echo(json.dumps(output, ensure_ascii=False))
        return
    for key, value in output.items():
        click.echo(f"{key + ':':<15}{value}")
    if generated or secret:
        click.echo("(the password and TOTP secret are shown only now; store them safely)")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
def users_list(as_json: bool) -> None:
    """List accounts (never their password hashes or TOTP secrets)."""
    from hub.web.accounts import AccountRepository

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            return await AccountRepository(conn).list()

    rows = [account.public() for account in _admin_command(work)]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        flags = [
            "active" if row["active"] else "disabled",
            *(["totp"] if row["totp"] else []),
            *(["sso"] if row["oidc"] else []),
        ]
        click.echo(
            f"{row['username']:<24} {row['role']:<11} {row['organization']:<38} "
            f"{row['display_name']}  [{', '.join(flags)}]"
        )


def _change(username: str, interaction: str, change: Any) -> Any:
    """Run ``change(accounts, sessions, login)``; fail when there is no such account."""
    from hub.web.accounts import AccountRepository
    from hub.web.sessions import SessionStore

    login = username.strip().lower()

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            accounts = AccountRepository(conn)
            if await accounts.get(login) is None:
                raise click.ClickException(f"no web user {login!r}")
            result = await change(admin, accounts, SessionStore(conn, admin.hub.settings), login)
        await admin.audit("U", interaction, [f"web-user/{login}"])
        return result

    return _admin_command(work)


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable an account and end its sessions."""

    async def change(admin: _Admin, accounts: Any, sessions: Any, login: str) -> int:
        await accounts.set_active(login, False)
        return int(await sessions.close_all(login))

    ended = _change(username, "web-user-disable", change)
    click.echo(f"disabled {username.strip().lower()} ({ended} session(s) ended)")


@users.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Enable a disabled account again."""

    async def change(admin: _Admin, accounts: Any, sessions: Any, login: str) -> None:
        await accounts.set_active(login, True)

    _change(username, "web-user-enable", change)
    click.echo(f"enabled {username.strip().lower()}")


@users.command("reset-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the new password from stdin")
def users_reset_password(username: str, password_stdin: bool) -> None:
    """Set a new password (generated and printed once unless read from stdin), unlock the
    account and end its sessions."""
    from hub.web.accounts import hash_password

    password, generated = _read_password(password_stdin)

    async def change(admin: _Admin, accounts: Any, sessions: Any, login: str) -> None:
        await accounts.set_password(login, await hash_password(password))
        await sessions.close_all(login)

    _change(username, "web-user-reset-password", change)
    if generated:
        click.echo(f"password: {password}\n(shown only now; store it safely)")
    else:
        click.echo(f"password of {username.strip().lower()} changed")


@users.command("totp")
@click.argument("username")
@click.option("--enable/--disable", required=True, help="require a TOTP code at login, or not")
@click.option("--json", "as_json", is_flag=True)
def users_totp(username: str, enable: bool, as_json: bool) -> None:
    """Turn the second factor on (a new secret, printed once) or off."""
    from hub.web.accounts import seal_totp_secret
    from hub.web.totp import new_secret

    secret = new_secret() if enable else None

    async def change(admin: _Admin, accounts: Any, sessions: Any, login: str) -> None:
        sealed = seal_totp_secret(admin.hub.identity.protection, login, secret) if secret else None
        await accounts.set_totp(login, sealed, enable)

    _change(username, "web-user-totp", change)
    login = username.strip().lower()
    output: dict[str, Any] = {"username": login, "totp": enable}
    if secret:
        output.update(_totp_output(login, secret))
    if as_json:
        click.echo(json.dumps(output, ensure_ascii=False))
    elif secret:
        click.echo(f"totp_secret:   {secret}\ntotp_uri:      {output['totp_uri']}")
    else:
        click.echo(f"TOTP turned off for {login}")
