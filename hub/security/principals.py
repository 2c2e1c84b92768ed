"""Who is calling: the authenticated API client behind a request."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ClientKind(StrEnum):
    HOSPITAL = "hospital"  # a hospital system pushing its own results
    DOCTOR = "doctor"  # a doctor-facing system reading results (EHR, workstation)
    CONSULTANT = "consultant"  # a telemedicine consultant (reads only what a consult grants)
    ADMIN = "admin"  # platform operators


@dataclass(frozen=True)
class Principal:
    client_id: str
    name: str
    kind: ClientKind
    organization: str  # Organization resource id
    scopes: frozenset[str]
    # A SMART patient-level token: only this patient's record (with a purpose of use for it).
    patient: str | None = None

    @property
    def is_person(self) -> bool:
        """A workstation user (or an app acting as one), not a registered system."""
        return self.client_id.startswith("user:")
