"""The ``yijian`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from hub.settings import Settings, load_settings

T = TypeVar("T")


def _run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


def _settings() -> Settings:
    return load_settings()


def _database_url(settings: Settings) -> str:
    from hub.storage.database import resolve_database_url

    return resolve_database_url(settings)


@click.group()
@click.version_option(package_name="yijian-hub")
def main() -> None:
    """Yijian Hub (医检互认平台): mutual recognition of lab and imaging results."""


# -- serving -----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="interface to bind (default 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default 8000)")
@click.option("--workers", default=1, show_default=True, help="worker processes")
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="apply database migrations first",
)
def serve(host: str | None, port: int | None, workers: int, migrate: bool) -> None:
    """Run the HTTP API and web UI."""
    import uvicorn

    from hub import logs

    settings = _settings()
    logs.configure(settings.log_level)
    url = _database_url(settings)
    os.environ["YIJIAN_DATABASE_URL"] = url  # workers share the (possibly embedded) server
    if migrate:
        from hub.storage.migrate import upgrade

        upgrade(url)
    if workers > 1:  # Prometheus metrics are merged across worker processes through files
        import shutil

        metrics_dir = settings.data_dir.resolve() / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from hub.lifecycle import exit_cleanly_after_shutdown

    exit_cleanly_after_shutdown()
    uvicorn.run(
        "hub.api.asgi:create",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        proxy_headers=False,
    )


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations (safe to repeat)."""
    from hub.storage.migrate import upgrade

    upgrade(_database_url(_settings()))
    click.echo("database schema is up to date")


# -- organizations and clients -----------------------------------------------------------------


class _Admin:
    """A CLI session: the database, the record service and the audit chain, as an operator."""

    def __init__(self) -> None:
        from hub.runtime import Hub
        from hub.security.principals import ClientKind, Principal

        settings = _settings()
        os.environ.setdefault("YIJIAN_DATABASE_URL", _database_url(settings))
        self.hub = Hub.build(load_settings())
        user = os.environ.get("USER", "operator")
        self.principal = Principal(
            f"cli:{user}",
            f"yijian CLI ({user})",
            ClientKind.ADMIN,
            "hub",
            frozenset({"system/*.cruds"}),
        )

    async def audit(
        self,
        action: str,
        interaction: str,
        entities: list[str],
        status: int = 200,
        detail: str | None = None,
    ) -> None:
        from hub.security.audit import AuditRecord

        await self.hub.audit.write_now(
            [
                AuditRecord.for_status(
                    status,
                    action=action,
                    interaction=interaction,
                    client_id=self.principal.client_id,
                    client_kind="admin",
                    organization="hub",
                    source_ip="cli",
                    entities=entities,
                    detail=detail,
                )
            ]
        )

    async def close(self) -> None:
        if "ingest" in self.hub.__dict__:  # finish work the broker could not take
            await self.hub.ingest.drain()
        await self.hub.database.dispose()


def _admin_command(work: Callable[[_Admin], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        admin = _Admin()
        try:
            return await work(admin)
        finally:
            await admin.close()

    return _run(run)


@main.group()
def orgs() -> None:
    """Hospitals and other organizations (FHIR Organization)."""


@orgs.command("add")
@click.option("--name", required=True, help="organization name, e.g. 杭州市第一人民医院")
@click.option("--identifier", required=True, help="SYSTEM|VALUE, e.g. the USCC or hospital code")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def orgs_add(name: str, identifier: str, as_json: bool) -> None:
    """Register an organization; running it again with the same identifier changes nothing."""
    system, sep, value = identifier.partition("|")
    if not sep or not system or not value:
        raise click.BadParameter("must be SYSTEM|VALUE", param_hint="--identifier")

    async def work(admin: _Admin) -> Any:
        from hub.records.unit_of_work import unit_of_work
        from hub.storage.resources import WriteContext

        resource = {
            "resourceType": "Organization",
            "active": True,
            "name": name,
            "identifier": [{"system": system, "value": value}],
        }
        async with unit_of_work(admin.hub.database, transaction=True) as uow:
            outcome = await admin.hub.records.create(
                uow,
                admin.principal,
                "Organization",
                resource,
                WriteContext(admin.principal.client_id, "hub", None),
                if_none_exist=f"identifier={system}|{value}",
            )
        await admin.audit("C", "create", uow.entities)
        return outcome

    from hub.fhir.outcomes import FhirError

    try:
        outcome = _admin_command(work)
    except FhirError as error:
        raise click.ClickException(error.diagnostics) from None
    stored = outcome.stored
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": stored.resource_id,
                    "name": name,
                    "identifier": identifier,
                    "created": outcome.created,
                },
                ensure_ascii=False,
            )
        )
    else:
        verb = "registered" if outcome.created else "already registered"
        click.echo(f"Organization/{stored.resource_id} {verb}: {name}")


@main.group()
def clients() -> None:
    """API clients (OAuth 2.0 client credentials)."""


@clients.command("add")
@click.option(
    "--kind", required=True, type=click.Choice(["hospital", "doctor", "consultant", "admin"])
)
@click.option("--organization", required=True, help="Organization id the client acts for")
@click.option("--name", required=True)
@click.option("--scope", default=None, help="SMART scopes (default depends on --kind)")
@click.option("--json", "as_json", is_flag=True)
def clients_add(kind: str, organization: str, name: str, scope: str | None, as_json: bool) -> None:
    """Register a client. Its secret is printed once and stored only as a hash."""
    from hub.security.clients import ClientRegistry, UnknownOrganization
    from hub.security.principals import ClientKind

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            try:
                record, secret = await ClientRegistry(conn).add(
                    ClientKind(kind), organization, name, scope
                )
            except UnknownOrganization as error:
                raise click.ClickException(f"{error} (yijian orgs add)") from None
            except ValueError as error:
                raise click.ClickException(str(error)) from None
        await admin.audit("C", "client-add", [f"client/{record.client_id}"])
        return record, secret

    record, secret = _admin_command(work)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "client_id": record.client_id,
                    "client_secret": secret,
                    "kind": kind,
                    "organization": organization,
                    "name": name,
                    "scope": " ".join(sorted(record.scopes)),
                },
                ensure_ascii=False,
            )
        )
    else:
        click.echo(
            f"client_id:     {record.client_id}\nclient_secret: {secret}\n"
            f"scope:         {' '.join(sorted(record.scopes))}\n"
            "(the secret is shown only now; store it safely)"
        )


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
def clients_list(as_json: bool) -> None:
    """List registered clients (never their secrets)."""
    from hub.security.clients import ClientRegistry

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            return await ClientRegistry(conn).list()

    records = _admin_command(work)
    rows = [
        {
            "client_id": r.client_id,
            "name": r.name,
            "kind": str(r.kind),
            "organization": r.organization,
            "scope": " ".join(sorted(r.scopes)),
            "created": r.created_at.isoformat(),
            "revoked": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked']}" if row["revoked"] else "active"
        click.echo(
            f"{row['client_id']}\t{row['kind']}\tOrganization/{row['organization']}\t"
            f"{row['name']}\t{state}"
        )


@clients.command("revoke")
@click.argument("client_id")
def clients_revoke(client_id: str) -> None:
    """Revoke a client: no new tokens, and its existing tokens stop working within seconds."""
    from hub.security.clients import ClientRegistry

    async def work(admin: _Admin) -> bool:
        async with admin.hub.database.connection() as conn:
            done = await ClientRegistry(conn).revoke(client_id)
        await admin.audit("D", "client-revoke", [f"client/{client_id}"], 200 if done else 404)
        return done

    if not _admin_command(work):
        raise click.ClickException(f"no active client {client_id}")
    click.echo(f"revoked {client_id}")


# -- audit and keys --------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
def audit_verify() -> None:
    """Check every audit hash chain; exit 1 if any record was edited or deleted."""
    from hub.security.audit import verify

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            return await verify(conn, admin.hub.audit.key)

    report = _admin_command(work)
    for problem in report.problems:
        click.echo(f"TAMPERED: {problem}", err=True)
    click.echo(
        f"{report.chains} chains, {report.records} records: "
        + ("intact" if report.ok else f"{len(report.problems)} problems")
    )
    sys.exit(0 if report.ok else 1)


@main.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Add a new signing key; older keys keep verifying until removed."""
    from hub.security.keys import KeyRing

    key = KeyRing(_settings().resolved_keys_dir).rotate()
    click.echo(f"new signing key {key.kid}; restart API processes to sign with it")


# -- patient identity ------------------------------------------------------------------------


@main.group()
def identity() -> None:
    """Patient identity: review queue, link decisions, identifier keys."""


def _identity_decision(interaction: str, decide: Callable[[Any, Any, str], Awaitable[int]]) -> int:
    async def work(admin: _Admin) -> int:
        from hub.records.unit_of_work import unit_of_work

        actor = f"client:{admin.principal.client_id}"
        async with unit_of_work(admin.hub.database, transaction=True) as uow:
            event = await decide(admin.hub.identity, uow, actor)
        await admin.audit("U", interaction, uow.entities)
        return event

    from hub.fhir.outcomes import FhirError

    try:
        result: int = _admin_command(work)
    except FhirError as error:
        raise click.ClickException(error.diagnostics) from None
    return result


@identity.command("reviews")
@click.option("--status", default="open", show_default=True)
@click.option("--limit", default=100, show_default=True, help="at most this many")
@click.option("--after", default=0, help="only reviews with a larger id (paging)")
@click.option("--json", "as_json", is_flag=True)
def identity_reviews(status: str, limit: int, after: int, as_json: bool) -> None:
    """Probable and possible matches waiting for an operator, oldest first."""

    async def work(admin: _Admin) -> Any:
        from hub.records.unit_of_work import unit_of_work

        async with unit_of_work(admin.hub.database, transaction=False) as uow:
            return await admin.hub.identity.reviews(uow, status, limit, after)

    found = _admin_command(work)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in found], ensure_ascii=False))
        return
    for r in found:
        click.echo(
            f"#{r.id} {r.grade:8} {r.score:6.2f}  Patient/{r.source_id} → Patient/{r.master_id}"
        )


@identity.command("link")
@click.argument("source")
@click.argument("master")
@click.option("--reason", default=None)
def identity_link(source: str, master: str, reason: str | None) -> None:
    """Link SOURCE (a hospital's Patient id) to MASTER (a master Patient id)."""
    event = _identity_decision(
        "identity-link", lambda s, uow, actor: s.link(uow, source, master, actor, reason)
    )
    click.echo(f"linked Patient/{source} to Patient/{master} (event {event})")


@identity.command("unlink")
@click.argument("source")
@click.option("--reason", default=None)
def identity_unlink(source: str, reason: str | None) -> None:
    """Detach SOURCE into a master of its own."""
    event = _identity_decision(
        "identity-unlink", lambda s, uow, actor: s.unlink(uow, source, actor, reason)
    )
    click.echo(f"unlinked Patient/{source} (event {event})")


@identity.command("merge")
@click.argument("from_master")
@click.argument("into_master")
@click.option("--reason", default=None)
def identity_merge(from_master: str, into_master: str, reason: str | None) -> None:
    """Merge master FROM_MASTER into INTO_MASTER."""
    event = _identity_decision(
        "identity-merge",
        lambda s, uow, actor: s.merge(uow, from_master, into_master, actor, reason),
    )
    click.echo(f"merged Patient/{from_master} into Patient/{into_master} (event {event})")


@identity.command("undo")
@click.argument("event_id", type=int)
@click.option("--reason", default=None)
def identity_undo(event_id: int, reason: str | None) -> None:
    """Undo a link decision (see `yijian identity events`)."""
    event = _identity_decision(
        "identity-undo", lambda s, uow, actor: s.undo(uow, event_id, actor, reason)
    )
    click.echo(f"undid event {event_id} (event {event})")


@identity.command("events")
@click.option("--patient", default=None, help="a source or master Patient id")
@click.option("--limit", default=50, show_default=True)
def identity_events(patient: str | None, limit: int) -> None:
    """The history of link decisions, newest first."""

    async def work(admin: _Admin) -> Any:
        from hub.records.unit_of_work import unit_of_work

        async with unit_of_work(admin.hub.database, transaction=False) as uow:
            return await admin.hub.identity.events(uow, patient, limit)

    for e in _admin_command(work):
        undone = f" (undone by {e['undone_by']})" if e["undone_by"] else ""
        click.echo(
            f"{e['id']:>6} {e['at'][:19]} {e['action']:10} source={e['source_id']} "
            f"master={e['master_id']} previous={e['previous_master_id']} by={e['decided_by']}"
            f"{undone}"
        )


@identity.command("rotate-key")
def identity_rotate_key() -> None:
    """Add an identifier encryption key; it encrypts from now on (then run `reencrypt`)."""
    from hub.identity.protection import rotate_identifier_keys

    settings = _settings()
    if settings.identifier_keys:
        raise click.ClickException(
            "keys come from YIJIAN_IDENTIFIER_KEYS: put a new key first in that list instead"
        )
    kid = rotate_identifier_keys(settings.resolved_keys_dir)
    click.echo(f"new identifier key {kid}; running processes switch to it within seconds")


@identity.command("reencrypt")
def identity_reencrypt() -> None:
    """Re-seal every stored identifier value with the current key."""
    from hub.identity.rekeying import reencrypt

    async def work(admin: _Admin) -> int:
        async with admin.hub.database.connection() as conn:
            return await reencrypt(conn, admin.hub.identity.protection)

    count = _admin_command(work)
    click.echo(f"{count} stored versions re-encrypted with the current key")


# -- inbound results ---------------------------------------------------------------------------


def _prepare_service(migrate: bool) -> Settings:
    """Settings for a long-running service, the database resolved (and migrated)."""
    from hub import logs

    settings = _settings()
    logs.configure(settings.log_level)
    url = _database_url(settings)
    os.environ["YIJIAN_DATABASE_URL"] = url
    if migrate:
        from hub.storage.migrate import upgrade

        upgrade(url)
    return load_settings()


@main.command()
@click.option("--host", default=None, help="interface to bind (default 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default 2575)")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="listener processes sharing the port (SO_REUSEPORT); the kernel spreads connections",
)
@click.option("--migrate/--no-migrate", default=True, show_default=True)
@click.option(
    "--drop-folders/--no-drop-folders",
    default=True,
    show_default=True,
    help="also poll the feeds' file-drop folders (in the first process)",
)
def mllp(
    host: str | None, port: int | None, workers: int, migrate: bool, drop_folders: bool
) -> None:
    """Run the HL7 v2 MLLP listener (and the feeds' drop folders)."""
    settings = _prepare_service(migrate)
    host = host or settings.mllp_host
    port = port or settings.mllp_port
    if workers <= 1:
        _run(lambda: _serve_mllp(settings, host, port, drop_folders, reuse_port=False))
        return
    _fork_listeners(settings, host, port, workers, drop_folders)


async def _serve_mllp(
    settings: Settings, host: str, port: int, drop_folders: bool, *, reuse_port: bool
) -> None:
    """One listener process: the MLLP server (and the drop folders) until SIGTERM/SIGINT."""
    import signal

    from hub.ingest.files import DropFolders
    from hub.ingest.mllp import MllpServer
    from hub.runtime import Hub

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for handled in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(handled, stop.set)
    hub = Hub.build(settings)
    await hub.start()
    server = MllpServer(hub, host, port, reuse_port=reuse_port)
    folders = asyncio.create_task(DropFolders(hub).run(stop)) if drop_folders else None
    try:
        await server.start()
        click.echo(f"MLLP listening on {server.host}:{server.port} (pid {os.getpid()})", err=True)
        await stop.wait()
    finally:
        await server.stop()
        if folders is not None:
            await folders
        await hub.stop()


def _fork_listeners(
    settings: Settings, host: str, port: int, workers: int, drop_folders: bool
) -> None:
    """Fork ``workers`` listener processes on one port (the first polls the drop folders)."""
    from hub.processes import run_forked

    run_forked(
        workers,
        lambda number: asyncio.run(
            _serve_mllp(settings, host, port, drop_folders and number == 0, reuse_port=True)
        ),
    )


@main.command()
@click.option("--concurrency", default=None, type=int, help="worker processes (default: CPUs)")
@click.option("--beat/--no-beat", default=False, help="also run the periodic schedule")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int | None, beat: bool, loglevel: str) -> None:
    """Run the Celery worker (back-fills, dead-letter replays, statistics)."""
    from hub.tasks.worker import run_worker

    settings = _prepare_service(migrate=True)
    run_worker(settings, concurrency=concurrency, loglevel=loglevel, beat=beat)


@main.group()
def feeds() -> None:
    """Hospital feeds (where results come from)."""


@feeds.command("add")
@click.option("--organization", required=True, help="the hospital's Organization id")
@click.option("--sending-facility", required=True, help="MSH-4 of its messages")
@click.option(
    "--encoding", default="utf-8", show_default=True, type=click.Choice(["utf-8", "gbk", "gb18030"])
)
@click.option("--feed", "feed_id", default=None, help="feed id (default: from the facility)")
@click.option("--name", default="", help="a name for people")
@click.option("--sending-application", default=None, help="MSH-3, when one facility has several")
@click.option(
    "--authority",
    multiple=True,
    metavar="AUTHORITY=SYSTEM",
    help="PID-3 assigning authority → system (URI, resident-id, mrn...); repeatable",
)
@click.option("--json", "as_json", is_flag=True)
def feeds_add(
    organization: str,
    sending_facility: str,
    encoding: str,
    feed_id: str | None,
    name: str,
    sending_application: str | None,
    authority: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register a feed without writing a file (stored in the database)."""
    import re

    from pydantic import ValidationError

    from hub.ingest.feeds import FeedConfig

    identifiers = {}
    for item in authority:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r} is not AUTHORITY=SYSTEM", param_hint="--authority")
        identifiers[key] = value
    default_id = re.sub(r"[^A-Za-z0-9\-.]+", "-", f"{organization}-{sending_facility}").strip("-")
    try:
        feed = FeedConfig(
            feed=feed_id or default_id.lower()[:64],
            organization=organization,
            name=name,
            sending_facility=sending_facility,
            sending_application=sending_application,
            encoding=encoding,  # type: ignore[arg-type]
            identifiers=identifiers,
        )
    except ValidationError as error:
        raise click.ClickException(str(error)) from None

    async def work(admin: _Admin) -> None:
        from hub.security.clients import ClientRegistry

        async with admin.hub.database.connection() as conn:
            if not await ClientRegistry(conn).organization_exists(organization):
                raise click.ClickException(f"there is no Organization {organization!r}")
        await admin.hub.ingest.feeds.register(feed)
        await admin.audit("C", "feeds-add", [f"feed/{feed.feed}"], 201)

    _admin_command(work)
    if as_json:
        click.echo(json.dumps(feed.model_dump(mode="json"), ensure_ascii=False))
    else:
        click.echo(f"feed {feed.feed}: {sending_facility} → Organization/{organization}")


@feeds.command("list")
@click.option("--json", "as_json", is_flag=True)
def feeds_list(as_json: bool) -> None:
    """Every feed, from files and from the database."""

    async def work(admin: _Admin) -> tuple[list[Any], list[str]]:
        found = await admin.hub.ingest.feeds.all()
        return found, admin.hub.ingest.feeds.errors

    found, errors = _admin_command(work)
    if as_json:
        rows = [{**f.model_dump(mode="json"), "source": s} for f, s in found]
        click.echo(json.dumps({"feeds": rows, "errors": errors}, ensure_ascii=False))
        return
    for feed, source in found:
        click.echo(
            f"{feed.feed}\t{feed.sending_facility}\tOrganization/{feed.organization}"
            f"\t{feed.encoding}\t{source}"
        )
    for error in errors:
        click.echo(f"error: {error}", err=True)


@feeds.command("stats")
@click.option("--days", default=7, show_default=True)
@click.option("--feed", default=None)
@click.option(
    "--refresh/--no-refresh",
    default=True,
    show_default=True,
    help="recompute the figures first (the worker does it every 5 minutes)",
)
@click.option("--json", "as_json", is_flag=True)
def feeds_stats(days: int, feed: str | None, refresh: bool, as_json: bool) -> None:
    """Messages, resources, errors and dead letters per feed and day."""
    from hub.ingest.ledger import ingest_statistics
    from hub.tasks.statistics import refresh_statistics

    async def work(admin: _Admin) -> list[dict[str, Any]]:
        async with admin.hub.database.connection() as conn:
            if refresh:
                await refresh_statistics(
                    conn, admin.hub.settings.default_timezone, min(max(days, 1), 366)
                )
            return await ingest_statistics(conn, days, feed)

    rows = _admin_command(work)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    click.echo("day\tfeed\tmessages\tresources\terrors\tdead letters")
    for row in rows:
        click.echo(
            f"{row['day']}\t{row['feed_id']}\t{row['messages']}\t{row['resources']}"
            f"\t{row['errors']}\t{row['dead_letters']}"
        )


@feeds.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def feeds_check(paths: tuple[str, ...]) -> None:
    """Check feed files without loading them into a hub."""
    from pathlib import Path

    from hub.ingest.feeds import FeedConfigError, load_feed_file

    failed = False
    for path in paths:
        try:
            feed = load_feed_file(Path(path))
            click.echo(f"{path}: feed {feed.feed} ok")
        except FeedConfigError as error:
            failed = True
            click.echo(str(error), err=True)
    if failed:
        sys.exit(1)


@main.group()
def deadletter() -> None:
    """Messages that could not be accepted: list, inspect, replay, discard."""


@deadletter.command("list")
@click.option(
    "--status",
    default="open",
    show_default=True,
    type=click.Choice(["open", "replayed", "discarded", "all"]),
)
@click.option("--feed", default=None)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def deadletter_list(status: str, feed: str | None, limit: int, as_json: bool) -> None:
    async def work(admin: _Admin) -> list[Any]:
        letters = await admin.hub.ingest.dead_letters(
            None if status == "all" else status, feed, limit
        )
        await admin.audit("R", "dead-letters", [])
        return letters

    letters = _admin_command(work)
    if as_json:
        click.echo(json.dumps([x.summary() for x in letters], ensure_ascii=False))
        return
    for letter in letters:
        click.echo(
            f"{letter.id}\t{letter.received_at:%Y-%m-%d %H:%M:%S}\t{letter.feed_id or '-'}"
            f"\t{letter.control_id or '-'}\t{letter.ack_code}\t{letter.status}"
            f"\t{letter.error[:100]}"
        )


@deadletter.command("show")
@click.argument("entry_id", type=int)
@click.option("--raw", is_flag=True, help="write the message bytes exactly as received")
def deadletter_show(entry_id: int, raw: bool) -> None:
    async def work(admin: _Admin) -> Any:
        letter = await admin.hub.ingest.dead_letter(entry_id)
        await admin.audit("R", "dead-letter", [f"dead-letter/{entry_id}"])
        return letter

    try:
        letter = _admin_command(work)
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    if raw:
        sys.stdout.buffer.write(letter.payload)
        return
    for key, value in letter.summary().items():
        click.echo(f"{key}: {value}")
    click.echo("")
    click.echo(letter.text())


@deadletter.command("replay")
@click.argument("entry_ids", type=int, nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="every open entry (of --feed)")
@click.option("--feed", default=None)
@click.option(
    "--background", is_flag=True, help="queue the replays for `yijian worker` instead of waiting"
)
def deadletter_replay(
    entry_ids: tuple[int, ...], replay_all: bool, feed: str | None, background: bool
) -> None:
    """Run entries through the pipeline again, after fixing their cause."""
    if not entry_ids and not replay_all:
        raise click.UsageError("name entries or use --all")

    async def work(admin: _Admin) -> int:
        ids = list(entry_ids)
        if replay_all:
            ids += [x.id for x in await admin.hub.ingest.dead_letters("open", feed, 100_000)]
        if background:
            ids = sorted(set(ids))
            queued = await admin.hub.ingest.schedule_replays(ids)
            await admin.audit("U", "dead-letters-replay", [f"dead-letter/{i}" for i in ids])
            await admin.hub.ingest.drain()  # replays the broker could not take ran here
            click.echo(f"{len(queued)} replays queued for the worker")
            return 0
        failures = 0
        for entry_id in sorted(set(ids)):
            try:
                receipt = await admin.hub.ingest.replay(entry_id)
            except (LookupError, ValueError) as error:
                click.echo(f"{entry_id}: {error}", err=True)
                failures += 1
                continue
            await admin.audit("U", "dead-letter-replay", [f"dead-letter/{entry_id}"])
            if receipt.accepted:
                note = " (already accepted before)" if receipt.duplicate else ""
                click.echo(f"{entry_id}: accepted, {receipt.resources} resources{note}")
            else:
                failures += 1
                click.echo(f"{entry_id}: {receipt.code} {receipt.reason}", err=True)
        return failures

    sys.exit(1 if _admin_command(work) else 0)


@deadletter.command("discard")
@click.argument("entry_id", type=int)
def deadletter_discard(entry_id: int) -> None:
    """Mark an entry as not to be replayed (it is kept)."""

    async def work(admin: _Admin) -> None:
        await admin.hub.ingest.discard(entry_id)
        await admin.audit("D", "dead-letter-discard", [f"dead-letter/{entry_id}"])

    try:
        _admin_command(work)
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{entry_id}: discarded")


@main.group()
def codes() -> None:
    """Code maps: local test codes → LOINC, and the unmapped-code worklist."""


@codes.command("unmapped")
@click.option("--organization", default=None)
@click.option("--json", "as_json", is_flag=True)
def codes_unmapped(organization: str | None, as_json: bool) -> None:
    """Local codes seen without a mapping, by hospital, most frequent first."""

    async def work(admin: _Admin) -> list[dict[str, Any]]:
        return await admin.hub.ingest.unmapped(organization)

    rows = _admin_command(work)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        click.echo(
            f"{row['organization']}\t{row['local_code']}\t{row['local_display']}"
            f"\t{row['unit']}\t{row['occurrences']}\t{row['reason']}"
        )


def _change_code_map(feed_id: str, resource: dict[str, Any]) -> None:
    async def work(admin: _Admin) -> tuple[list[str], int]:
        ingest = admin.hub.ingest
        changed = await ingest.import_concept_map(feed_id, resource, admin.principal.client_id)
        await admin.audit("U", "code-map-update", [f"code-map/{feed_id}"])
        feed = await ingest.feed(feed_id)
        return changed, await ingest.backfill(feed.local_code_system, changed)

    try:
        changed, filled = _admin_command(work)
    except (LookupError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{len(changed)} mappings added or changed; {filled} stored results back-filled")


@codes.command("map")
@click.argument("feed_id")
@click.argument("local_code")
@click.argument("loinc")
@click.option("--display", default="", help="LOINC display")
@click.option("--unit", default=None, help="UCUM unit the hospital reports in")
@click.option("--catalogue", default=None, help="recognition catalogue item")
def codes_map(
    feed_id: str, local_code: str, loinc: str, display: str, unit: str | None, catalogue: str | None
) -> None:
    """Map one local code, and back-fill the results stored with it."""
    from hub.ingest.codemaps import CodeTarget, concept_map

    target = CodeTarget(loinc, display, unit, catalogue)
    _change_code_map(feed_id, concept_map("cli", "", [(local_code, "", target)]))


@codes.command("import")
@click.argument("feed_id")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def codes_import(feed_id: str, path: str) -> None:
    """Add or change mappings from a ConceptMap file (JSON)."""
    with open(path, encoding="utf-8") as handle:
        resource = json.load(handle)
    for group in resource.get("group") or []:
        group.pop("source", None)  # the feed's own code system is meant
    _change_code_map(feed_id, resource)


@codes.command("export")
@click.argument("feed_id")
def codes_export(feed_id: str) -> None:
    """Print a feed's code map as a ConceptMap."""

    async def work(admin: _Admin) -> dict[str, Any]:
        return await admin.hub.ingest.export_concept_map(feed_id)

    try:
        click.echo(json.dumps(_admin_command(work), ensure_ascii=False, indent=2))
    except LookupError as error:
        raise click.ClickException(str(error)) from None


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--feed", "feed_id", default=None, help="the feed (default: by MSH-4)")
def import_files(paths: tuple[str, ...], feed_id: str | None) -> None:
    """Load HL7 v2 files (.hl7/.txt, one or many messages), FHIR transaction Bundles (.json)
    and FHIR NDJSON (.ndjson, 500 resources a transaction) through the ingest pipeline, with
    a progress bar. Bundles and NDJSON need --feed (they name no sending facility)."""
    from pathlib import Path

    from hub.ingest.files import file_format, ingest_file

    files: list[Path] = []
    for item in map(Path, paths):
        files += sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
    files = [f for f in files if file_format(f)]

    async def work(admin: _Admin) -> tuple[int, int]:
        await admin.hub.audit.start()
        accepted = refused = 0
        try:
            with click.progressbar(files, label="importing", file=sys.stderr) as bar:
                for path in bar:
                    result = await ingest_file(admin.hub, path, feed_id=feed_id)
                    for receipt in result.receipts:
                        if receipt.accepted:
                            accepted += 1
                        else:
                            refused += 1
                            click.echo(
                                f"\n{path}: {receipt.code} {receipt.reason}"
                                f" (dead letter {receipt.dead_letter})",
                                err=True,
                            )
        finally:
            await admin.hub.audit.close()
        return accepted, refused

    accepted, refused = _admin_command(work)
    click.echo(f"{accepted} messages accepted, {refused} refused (see 'yijian deadletter list')")
    sys.exit(1 if refused else 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="HTTP port of the API")
@click.option("--mllp-port", default=2575, show_default=True, help="HL7 v2 MLLP listener port")
@click.option("--dicom-port", default=11112, show_default=True, help="DICOM C-STORE receiver port")
def demo(host: str, port: int, mllp_port: int, dicom_port: int) -> None:
    """Run everything on one machine with demo data from several simulated hospitals."""
    from hub.demo import run_demo

    run_demo(host, port, mllp_port, dicom_port)


if __name__ == "__main__":
    main()


import hub.cli_recognition  # noqa: E402, F401  (registers the recognition commands on `main`)
from hub import cli_users  # noqa: E402, F401  (registers `yijian users` on `main`)
from hub.extensions import extension_commands  # noqa: E402

for _command in extension_commands():  # `yijian dicom-scp`, `yijian dicom …` (imaging/)
    main.add_command(_command)
from hub import cli_smart  # noqa: E402, F401  (registers `yijian smart-apps` on `main`)
