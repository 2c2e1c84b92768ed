"""FHIR literal references: local (``Type/id``) or not."""

from __future__ import annotations


def split_reference(
    reference: str, base_url: str = ""
) -> tuple[str | None, str | None, str | None]:
    """A literal reference as ``(type, id, None)`` when local, else ``(None, None, url)``."""
    if base_url and reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1 :]
    parts = reference.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    if len(parts) == 2 and parts[0][:1].isupper() and "://" not in reference:
        return parts[0], parts[1], None
    return None, None, reference
