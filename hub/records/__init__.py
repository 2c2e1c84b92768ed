"""The service layer for clinical records: FHIR interactions with authorization, integrity
and audit, over a unit of work. HTTP, bundles and the CLI call this; it never sees HTTP."""
