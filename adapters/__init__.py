"""Per-hospital inbound adapters (HL7 v2, files, vendor JSON) → FHIR. Arrives with the lab-ingestion issue."""
