"""``yijian dicom-scp`` and ``yijian dicom …``, added to the hub's command line through the
entry-point group ``yijian.commands`` (the hub never imports this package)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import click

from hub.cli import _Admin, _admin_command, _prepare_service
from hub.processes import run_forked

PATIENT_NUMBER_KINDS = ("mrn", "outpatient", "inpatient")  # a hospital's own patient numbers
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: no backslash, no controls


def _ae_title(value: str) -> str:
    title = value.strip()
    if not AE_TITLE.fullmatch(title):
        raise click.BadParameter("an AE title is 1 to 16 printable ASCII characters, no '\\'")
    return title


@click.command("dicom-scp")
@click.option("--host", default=None, help="interface to bind (default 127.0.0.1)")
@click.option("--port", default=None, type=int, help="port (default 11112)")
@click.option("--ae-title", default=None, help="the receiver's AE title (default YIJIAN)")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="receiver processes sharing the port (one core each; pynetdicom is pure Python)",
)
@click.option(
    "--migrate/--no-migrate", default=True, show_default=True, help="apply migrations first"
)
def dicom_scp(
    host: str | None, port: int | None, ae_title: str | None, workers: int, migrate: bool
) -> None:
    """Run the DICOM storage receiver (C-STORE SCP): stores, indexes, publishes ImagingStudy."""
    settings = _prepare_service(migrate)
    title = _ae_title(ae_title or settings.dicom_ae_title)
    bind = (host or settings.dicom_host, port if port is not None else settings.dicom_port)
    if workers <= 1:
        _receive(settings, bind, title, reuse_port=False)
        return
    if bind[1] == 0:
        raise click.BadParameter("several workers need a fixed port", param_hint="--port")
    run_forked(workers, lambda _number: _receive(settings, bind, title, reuse_port=True))


def _receive(settings: Any, bind: tuple[str, int], title: str, *, reuse_port: bool) -> None:
    """One receiver process until SIGTERM/SIGINT; then it finishes and stops cleanly."""
    from imaging.scp import StorageReceiver

    receiver = StorageReceiver(settings, bind[0], bind[1], title, reuse_port=reuse_port)
    stop = threading.Event()
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: stop.set())
    receiver.start()
    click.echo(
        f"DICOM storage SCP {receiver.ae_title} listening on {receiver.host}:{receiver.port}"
        f" (pid {os.getpid()})",
        err=True,
    )
    try:
        stop.wait()
    finally:
        receiver.stop()


@click.group("dicom")
def dicom() -> None:
    """The imaging cloud: calling AE titles, pending ImagingStudies, de-identified export."""


@dicom.group("ae")
def ae() -> None:
    """Modalities and PACS allowed to send (calling AE titles), each for one hospital."""


@ae.command("add")
@click.argument("ae_title")
@click.option("--organization", required=True, help="the hospital's Organization id")
@click.option("--host", "hosts", multiple=True, help="address it may send from (repeatable)")
@click.option(
    "--issuer",
    "issuers",
    multiple=True,
    help="ISSUER=SYSTEM: Issuer of Patient ID → identifier system (a URI, a NamingSystem id "
    "such as resident-id, or mrn/outpatient/inpatient); '*' for any issuer (default: mrn)",
)
@click.option("--description", default="", help="e.g. 'CT room 2 (Siemens)'")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ae_add(
    ae_title: str,
    organization: str,
    hosts: tuple[str, ...],
    issuers: tuple[str, ...],
    description: str,
    as_json: bool,
) -> None:
    """Register (or change) a calling AE title; the receiver picks it up within seconds."""
    title = _ae_title(ae_title)
    mapping: dict[str, str] = {}
    for item in issuers:
        issuer, sep, system = item.partition("=")
        if not sep or not issuer.strip() or not system.strip():
            raise click.BadParameter(f"{item!r} is not ISSUER=SYSTEM", param_hint="--issuer")
        mapping[issuer.strip()] = _issuer_target(system.strip())

    async def work(admin: _Admin) -> dict[str, Any]:
        async with admin.hub.database.connection() as conn:
            kind = await conn.fetchval(
                "SELECT res_type FROM resource WHERE res_type = 'Organization' AND res_id = $1"
                " AND NOT deleted",
                organization,
            )
            if kind is None:
                raise click.ClickException(f"no Organization {organization!r} in the hub")
            await conn.execute(
                "INSERT INTO dicom_ae (ae_title, organization, description, hosts, identifiers)"
                " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (ae_title) DO UPDATE SET"
                " organization = EXCLUDED.organization, description = EXCLUDED.description,"
                " hosts = EXCLUDED.hosts, identifiers = EXCLUDED.identifiers",
                title,
                organization,
                description,
                list(hosts) or None,
                json.dumps(mapping),
            )
        await admin.audit("U", "dicom-ae", [f"Organization/{organization}"], detail=title)
        return {
            "ae_title": title,
            "organization": organization,
            "hosts": list(hosts) or None,
            "issuers": mapping,
            "description": description,
        }

    result = _admin_command(work)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        click.echo(f"{title} sends for Organization/{organization}")


def _issuer_target(target: str) -> str:
    """An identifier system the hub knows how to use: a URI, a NamingSystem id, or a hospital
    number kind. A typo here would make every study of the AE unpublishable."""
    from hub.identity.identifiers import ORGANIZATION_KINDS, IdentifierSystems

    if ":" in target or target in {"mrn", "outpatient", "inpatient"}:
        return target
    try:
        IdentifierSystems.default().by_key(target)
    except KeyError:
        kinds = ", ".join(
            sorted(k for k in ORGANIZATION_KINDS if k in {"mrn", "outpatient", "inpatient"})
        )
        raise click.BadParameter(
            f"{target!r} is neither a URI, a NamingSystem id (e.g. resident-id) nor {kinds}",
            param_hint="--issuer",
        ) from None
    return target


@ae.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ae_list(as_json: bool) -> None:
    """The registered calling AE titles."""

    async def work(admin: _Admin) -> list[dict[str, Any]]:
        async with admin.hub.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT ae_title, organization, description, hosts, identifiers::text AS ids"
                " FROM dicom_ae ORDER BY ae_title"
            )
        return [
            {
                "ae_title": r["ae_title"],
                "organization": r["organization"],
                "description": r["description"],
                "hosts": r["hosts"],
                "issuers": json.loads(r["ids"]),
            }
            for r in rows
        ]

    rows = _admin_command(work)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        hosts = ",".join(row["hosts"] or ["any address"])
        click.echo(f"{row['ae_title']:<16} {row['organization']:<24} {hosts}  {row['description']}")


@ae.command("remove")
@click.argument("ae_title")
def ae_remove(ae_title: str) -> None:
    """Stop accepting a calling AE title (its stored studies stay)."""
    title = _ae_title(ae_title)

    async def work(admin: _Admin) -> str | None:
        async with admin.hub.database.connection() as conn:
            organization = await conn.fetchval(
                "DELETE FROM dicom_ae WHERE ae_title = $1 RETURNING organization", title
            )
        if organization is not None:
            await admin.audit("D", "dicom-ae", [f"Organization/{organization}"], detail=title)
        return str(organization) if organization is not None else None

    if _admin_command(work) is None:
        raise click.ClickException(f"no calling AE title {title!r}")
    click.echo(f"{title} removed")


@dicom.command("refused")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def refused(limit: int, as_json: bool) -> None:
    """Instances the hub refused, newest first: who sent them, the status and why (each
    file is kept in the object store under its key)."""

    async def work(admin: _Admin) -> list[dict[str, Any]]:
        async with admin.hub.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, received_at, organization, sender, channel, peer, status, reason,"
                " sop_instance_uid, study_uid, object_key, size FROM dicom_refused"
                " ORDER BY id DESC LIMIT $1",
                limit,
            )
        return [{**dict(r), "received_at": r["received_at"].isoformat()} for r in rows]

    rows = _admin_command(work)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        click.echo(
            f"{row['id']:>6} {row['received_at'][:19]} {row['sender']:<16} 0x{row['status']:04X}"
            f" {row['reason'][:90]}"
        )


@dicom.command("init-store")
def init_store() -> None:
    """Prepare the object store (create the S3 bucket if missing) and check it round-trips."""
    from imaging.stores import object_store

    settings = _prepare_service(migrate=False)
    store = object_store(settings)
    ensure = getattr(store, "ensure_bucket", None)
    if ensure is not None:
        ensure()
    probe = store.put_chunks([b"yijian object store probe"])
    with store.open(probe.key) as read_back:
        if read_back.read() != b"yijian object store probe":
            raise click.ClickException("the object store returned other bytes than written")
    store.delete(probe.key)
    click.echo(f"object store ready: {settings.object_store}")


@dicom.command("sync")
def sync() -> None:
    """Write every pending ImagingStudy now (normally the receiver does it within seconds)."""

    async def work(admin: _Admin) -> int:
        from imaging.service import imaging_service

        await admin.hub.audit.start()
        try:
            return await imaging_service(admin.hub).sync_pending(older_than=0, limit=100_000)
        finally:
            await admin.hub.audit.close()

    click.echo(f"{_admin_command(work)} studies synced")


@dicom.command("export")
@click.argument("study_uid")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--pseudonym", default=None, help="PatientName/PatientID of the export")
@click.option("--keep-dates", is_flag=True, help="retain full dates (PS3.15 option)")
def export(study_uid: str, out_dir: Path, pseudonym: str | None, keep_dates: bool) -> None:
    """Write a de-identified copy of a study (PS3.15 basic profile) for research or teaching."""

    async def work(admin: _Admin) -> int:
        from imaging.export import deidentified_study

        out_dir.mkdir(parents=True, exist_ok=True)
        count = 0
        async for name, data in deidentified_study(
            admin.hub, study_uid, pseudonym=pseudonym, keep_dates=keep_dates
        ):
            (out_dir / name).write_bytes(data)
            count += 1
        await admin.audit("R", "dicom-export", [f"ImagingStudy?uid={study_uid}"], detail="deid")
        return count

    click.echo(f"{_admin_command(work)} de-identified instances written to {out_dir}")
