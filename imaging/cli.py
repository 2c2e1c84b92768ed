"""``yijian dicom-scp`` and ``yijian dicom …`` (added to the hub's CLI by entry points)."""

from __future__ import annotations

import click


@click.command("dicom-scp")
def dicom_scp() -> None:
    """Run the DICOM storage receiver (C-STORE SCP)."""
    raise click.ClickException("not yet")


@click.group("dicom")
def dicom() -> None:
    """The imaging cloud: calling AE titles, studies."""
