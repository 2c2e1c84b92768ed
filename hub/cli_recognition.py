"""``yijian`` commands for mutual recognition: the catalogue, hospitals' regions and QC
passes, EHR keys for CDS Hooks, the reuse check and statistics.

Registered on the main command group by ``hub.cli`` (imported at its end).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hub.cli import _Admin, _admin_command, clients, main, orgs


def _fail(error: Exception) -> click.ClickException:
    from hub.fhir.outcomes import FhirError

    if isinstance(error, FhirError):
        return click.ClickException(error.diagnostics)
    return click.ClickException(str(error))


def _read_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot read {path}: {error}") from None


# -- hospitals: region, medical community, quality control ------------------------------------


async def _edit_organization(admin: _Admin, organization: str, change: Any) -> dict[str, Any]:
    import orjson

    from hub.records.unit_of_work import unit_of_work
    from hub.storage.resources import WriteContext

    async with unit_of_work(admin.hub.database, transaction=True) as uow:
        stored = await admin.hub.records.read(uow, admin.principal, "Organization", organization)
        assert stored.content is not None
        resource = orjson.loads(stored.content)
        resource.pop("meta", None)
        change(resource)
        await admin.hub.records.update(
            uow,
            admin.principal,
            "Organization",
            organization,
            resource,
            WriteContext(admin.principal.client_id, "hub", None),
        )
    await admin.audit("U", "update", [f"Organization/{organization}"])
    return dict(resource)


@orgs.command("recognition")
@click.argument("organization")
@click.option("--region", help="GB/T 2260 division code, e.g. 330106 (Xihu, Hangzhou)")
@click.option("--community", help="the medical community (医共体) it belongs to")
def orgs_recognition(organization: str, region: str | None, community: str | None) -> None:
    """Set where a hospital is, for recognition scopes and regional windows."""
    from hub.recognition.institutions import COMMUNITY_URL, REGION_URL

    if region is not None and (not region.isdigit() or len(region) != 6):
        raise click.BadParameter("must be a 6-digit division code", param_hint="--region")

    def change(resource: dict[str, Any]) -> None:
        extensions = resource.get("extension") or []
        for url, key, value in (
            (REGION_URL, "valueCode", region),
            (COMMUNITY_URL, "valueString", community),
        ):
            if value is None:
                continue
            extensions = [e for e in extensions if e.get("url") != url]
            if value:
                extensions.append({"url": url, key: value})
        resource["extension"] = extensions

    try:
        _admin_command(lambda admin: _edit_organization(admin, organization, change))
    except Exception as error:
        raise _fail(error) from None
    click.echo(f"Organization/{organization}: region {region or '-'}, community {community or '-'}")


@orgs.command("qc-pass")
@click.argument("organization")
@click.option(
    "--discipline",
    required=True,
    help="hematology, clinical-chemistry, immunology, radiology... or an item id",
)
@click.option("--from", "start", required=True, help="first day it is valid (YYYY-MM-DD)")
@click.option("--to", "end", required=True, help="last day it is valid (YYYY-MM-DD)")
@click.option("--program", help="the EQA programme, e.g. 国家卫健委临检中心室间质评")
def orgs_qc_pass(
    organization: str, discipline: str, start: str, end: str, program: str | None
) -> None:
    """Record a passed external quality assessment on a hospital's Organization."""
    from hub.recognition.institutions import qc_pass_extension

    def change(resource: dict[str, Any]) -> None:
        resource["extension"] = [
            *(resource.get("extension") or []),
            qc_pass_extension(discipline, start, end, program),
        ]

    try:
        _admin_command(lambda admin: _edit_organization(admin, organization, change))
    except Exception as error:
        raise _fail(error) from None
    click.echo(f"Organization/{organization}: QC pass {discipline} {start} – {end}")


@clients.command("cds-key")
@click.argument("client_id")
@click.option("--issuer", required=True, help="the EHR's JWT iss (its CDS client identifier)")
@click.option("--jwks", "jwks_path", required=True, help="JWK Set file of its public keys")
def clients_cds_key(client_id: str, issuer: str, jwks_path: str) -> None:
    """Trust CDS Hooks requests signed by an EHR's key, as this client."""
    from hub.security.cds_clients import parse_jwks
    from hub.security.clients import ClientRegistry

    try:
        jwks = parse_jwks(Path(jwks_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise click.ClickException(str(error)) from None

    async def work(admin: _Admin) -> None:
        async with admin.hub.database.connection() as conn:
            if await ClientRegistry(conn).get(client_id) is None:
                raise click.ClickException(f"no client {client_id}")
            await admin.hub.cds_clients.register(conn, client_id, issuer, jwks)
        await admin.audit("U", "cds-key", [f"client/{client_id}"])

    _admin_command(work)
    click.echo(f"CDS Hooks JWTs from {issuer} now act as {client_id}")


# -- the catalogue ----------------------------------------------------------------------------


@main.group()
def catalogue() -> None:
    """The recognition catalogue (versioned; every change is a new version)."""


async def _catalogue(admin: _Admin) -> Any:
    from hub.recognition.repository import RecognitionRepository

    async with admin.hub.database.connection() as conn:
        return await admin.hub.recognition.catalogue(RecognitionRepository(conn))


@catalogue.command("list")
@click.option("--json", "as_json", is_flag=True)
def catalogue_list(as_json: bool) -> None:
    """The items in force."""
    current = _admin_command(_catalogue)
    if as_json:
        click.echo(current.document.model_dump_json(exclude_none=True, indent=2))
        return
    click.echo(f"catalogue version {current.version} ({current.document.version})")
    for item in current.document.items:
        click.echo(
            f"{item.id:18} {item.category:8} {item.validity_days:>4} d  {item.scope:10}"
            f" ¥{item.price_cny:>7.2f}  {item.name.zh} / {item.name.en}"
        )


@catalogue.command("show")
@click.argument("item_id")
def catalogue_show(item_id: str) -> None:
    """One item, as JSON."""
    item = _admin_command(_catalogue).items.get(item_id)
    if item is None:
        raise click.ClickException(f"no catalogue item {item_id}")
    click.echo(
        json.dumps(item.model_dump(mode="json", exclude_none=True), ensure_ascii=False, indent=2)
    )


@catalogue.command("versions")
def catalogue_versions() -> None:
    """Every version: number, when, by whom, why."""
    from hub.recognition.repository import RecognitionRepository

    async def work(admin: _Admin) -> list[dict[str, Any]]:
        async with admin.hub.database.connection() as conn:
            return await RecognitionRepository(conn).catalogue_versions()

    for row in _admin_command(work):
        click.echo(
            f"{row['version']:>4}  {row['created_at']:%Y-%m-%d %H:%M}  {row['items']:>3} items"
            f"  {row['created_by']}  {row['note'] or ''}"
        )


@catalogue.command("export")
@click.option("--version", "version", type=int, help="an earlier version (default: in force)")
def catalogue_export(version: int | None) -> None:
    """The catalogue document as JSON (to edit and import)."""
    from hub.recognition.repository import RecognitionRepository

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            if version is None:
                current = await admin.hub.recognition.catalogue(RecognitionRepository(conn))
                return current.document.model_dump(mode="json", exclude_none=True)
            found = await RecognitionRepository(conn).catalogue(version)
            if found is None:
                raise click.ClickException(f"no catalogue version {version}")
            return found[1]

    click.echo(json.dumps(_admin_command(work), ensure_ascii=False, indent=2))


def _save(change: Any, action: str) -> Any:
    from hub.recognition.repository import RecognitionRepository

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn, conn.transaction():
            saved = await change(admin, RecognitionRepository(conn))
        await admin.audit("U", f"catalogue:{action}", [f"catalogue/{saved.version}"])
        return saved

    try:
        saved = _admin_command(work)
    except click.ClickException:
        raise
    except Exception as error:
        raise _fail(error) from None
    click.echo(f"catalogue version {saved.version}: {len(saved.items)} items")


@catalogue.command("import")
@click.argument("path")
@click.option("--note", help="why (kept with the version)")
def catalogue_import(path: str, note: str | None) -> None:
    """Replace the catalogue with a document (JSON; - for stdin)."""
    raw = _read_json(path)
    _save(
        lambda a, r: a.hub.recognition.save_catalogue(r, raw, a.principal.client_id, note),
        "replace",
    )


@catalogue.command("set")
@click.argument("path")
@click.option("--note", help="why (kept with the version)")
def catalogue_set(path: str, note: str | None) -> None:
    """Add or replace one item (its JSON; - for stdin)."""
    raw = _read_json(path)
    _save(lambda a, r: a.hub.recognition.put_item(r, raw, a.principal.client_id, note), "put-item")


@catalogue.command("remove")
@click.argument("item_id")
@click.option("--note", help="why (kept with the version)")
def catalogue_remove(item_id: str, note: str | None) -> None:
    """Withdraw one item from recognition."""
    _save(
        lambda a, r: a.hub.recognition.remove_item(r, item_id, a.principal.client_id, note),
        "remove-item",
    )


# -- checks and statistics ----------------------------------------------------------------------


@main.group()
def recognition() -> None:
    """The reuse check and recognition statistics."""


@recognition.command("check")
@click.option("--patient", "patients", multiple=True, help="hub Patient id")
@click.option("--identifier", "identifiers", multiple=True, help="SYSTEM|VALUE of the patient")
@click.option(
    "--code",
    "codes",
    multiple=True,
    required=True,
    help="SYSTEM|CODE (LOINC, a hospital's local code) or a catalogue item id",
)
@click.option("--organization", required=True, help="the ordering hospital (Organization id)")
def recognition_check(
    patients: tuple[str, ...],
    identifiers: tuple[str, ...],
    codes: tuple[str, ...],
    organization: str,
) -> None:
    """What the CDS service would say for these orders (nothing is recorded)."""
    from hub.api.recognition import parse_code, parse_identifier
    from hub.recognition.repository import RecognitionRepository
    from hub.recognition.service import CheckQuery

    query = CheckQuery(
        [parse_code(c) for c in codes],
        organization,
        list(patients),
        [parse_identifier(i) for i in identifiers],
    )

    async def work(admin: _Admin) -> Any:
        async with admin.hub.database.connection() as conn:
            return await admin.hub.recognition.check(RecognitionRepository(conn), query)

    try:
        check = _admin_command(work)
    except Exception as error:
        raise _fail(error) from None
    if not check.found:
        raise click.ClickException("no such patient")
    click.echo(f"patient {check.patient} ({len(check.person.patients)} records)")
    for verdict in check.verdicts:
        result = verdict.result.primary.reference if verdict.result else "-"
        click.echo(
            f"{verdict.requested.token:40} {verdict.outcome:16} {result:40} {verdict.reason}"
        )


@recognition.command("stats")
@click.option(
    "--group",
    default="organization,item",
    show_default=True,
    help="organization, department, practitioner, item, result_organization, source",
)
@click.option("--period", type=click.Choice(["day", "week", "month", "quarter", "year"]))
@click.option("--from", "start", help="YYYY-MM-DD (inclusive)")
@click.option("--to", "end", help="YYYY-MM-DD (exclusive)")
@click.option("--organization", help="only reminders shown at this hospital")
@click.option("--csv", "as_csv_flag", is_flag=True, help="CSV instead of a table")
def recognition_stats(
    group: str,
    period: str | None,
    start: str | None,
    end: str | None,
    organization: str | None,
    as_csv_flag: bool,
) -> None:
    """Reminders, views, acceptances, declines, savings."""
    from hub.fhir.datetimes import parse_range
    from hub.recognition.statistics import StatisticsQuery, as_csv, recognition_statistics

    async def work(admin: _Admin) -> Any:
        zone = admin.hub.recognition.zone
        query = StatisticsQuery(
            [g.strip() for g in group.split(",") if g.strip()],
            period,
            parse_range(start, zone)[0] if start else None,
            parse_range(end, zone)[0] if end else None,
            organization,
            admin.hub.settings.default_timezone,
        )
        reasons = list(admin.hub.recognition.decline_reasons)
        async with admin.hub.database.connection() as conn:
            return query, reasons, await recognition_statistics(conn, query, reasons)

    try:
        query, reasons, rows = _admin_command(work)
    except Exception as error:
        raise _fail(error) from None
    if as_csv_flag:
        click.echo(as_csv(rows, query.group_by, bool(period), reasons).lstrip("\ufeff"), nl=False)
        return
    for row in rows:
        keys = " ".join(
            str(row.get(k) or "-") for k in (["period"] if period else []) + list(query.group_by)
        )
        click.echo(
            f"{keys}: shown {row['reminders']}, viewed {row['viewed']}, accepted "
            f"{row['accepted']}, declined {row['declined']}, overlooked {row['overlooked']},"
            f" saved ¥{row['saved_cny']:.2f}"
        )
