"""Inbound results: feeds, code maps, the ingest pipeline, dead letters and transports.

Everything a hospital pushes (HL7 v2 over MLLP, files, HTTP) goes through one pipeline:
find the feed, skip a replayed message, translate it to a FHIR transaction with the feed's
adapter and code map, write it in one unit of work with the message record, and only then
acknowledge. What cannot be accepted is dead-lettered with the raw bytes and the reason.
"""
