"""FHIR R4 semantics independent of storage: search parameters, search parsing, validation,
bundles, outcomes and the CapabilityStatement."""
