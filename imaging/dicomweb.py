"""DICOMweb at /dicomweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI). Placeholder: being written."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
