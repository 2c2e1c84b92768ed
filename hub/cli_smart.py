"""``yijian smart-apps``: SMART on FHIR apps that an EHR may launch and that users authorize
(the workstation itself is built in as ``yijian-workstation``).

Registered on the main command group by ``hub.cli`` (imported at its end).
"""

from __future__ import annotations

import json
from typing import Any

import click

from hub.cli import _Admin, _admin_command, main


@main.group("smart-apps")
def smart_apps() -> None:
    """SMART App Launch clients (authorization code + PKCE)."""


@smart_apps.command("add")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", required=True, multiple=True)
@click.option("--confidential", is_flag=True, help="give it a client secret (shown once)")
@click.option("--json", "as_json", is_flag=True)
def smart_apps_add(
    name: str, redirect_uris: tuple[str, ...], confidential: bool, as_json: bool
) -> None:
    """Register an app; prints its client_id (and secret, once, if confidential)."""
    from hub.security.smart import SmartRepository

    for uri in redirect_uris:
        if not uri.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise click.ClickException(f"redirect URI {uri!r} must be https (or loopback http)")

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            client_id, secret = await SmartRepository(conn).register(
                name, list(redirect_uris), confidential
            )
        await admin.audit("C", "smart-app-add", [f"smart-app/{client_id}"])
        return {"client_id": client_id, "client_secret": secret}

    created = _admin_command(work)
    if as_json:
        click.echo(json.dumps(created))
        return
    click.echo(f"client_id: {created['client_id']}")
    if created["client_secret"]:
        click.echo(f"client_secret: {created['client_secret']}  (shown only now)")


@smart_apps.command("list")
@click.option("--json", "as_json", is_flag=True)
def smart_apps_list(as_json: bool) -> None:
    from hub.security.smart import SmartRepository

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            return await SmartRepository(conn).apps()

    apps = _admin_command(work)
    if as_json:
        click.echo(json.dumps(apps, default=str))
        return
    for app in apps:
        state = "revoked" if app["revoked_at"] else "active"
        kind = "confidential" if app["confidential"] else "public"
        click.echo(
            f"{app['client_id']}  {app['name']}  {kind}  {state}  {' '.join(app['redirect_uris'])}"
        )


@smart_apps.command("revoke")
@click.argument("client_id")
def smart_apps_revoke(client_id: str) -> None:
    from hub.security.smart import SmartRepository

    async def work(admin: _Admin) -> bool:
        async with admin.hub.database.connection() as conn:
            done = await SmartRepository(conn).revoke(client_id)
        if done:
            await admin.audit("D", "smart-app-revoke", [f"smart-app/{client_id}"])
        return done

    if not _admin_command(work):
        raise click.ClickException(f"no active app {client_id}")
    click.echo(f"revoked {client_id}")
