"""The doctor's workstation, below the web pages: finding a patient, the record as a timeline
of results (lab panels, imaging studies, reports), trends of one value, and what each result's
recognition label says. Pure functions over FHIR resources where possible; data always comes
through the services (``hub.records``, ``hub.identity``, ``hub.recognition``), which apply the
caller's purpose of use and audit.
"""
