"""Per-hospital inbound adapters (HL7 v2, files, vendor JSON) mapped to FHIR.

Arrives with the lab-ingestion issue; adapters call the hub's ingest service, never the reverse.
"""
