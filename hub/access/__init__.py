"""Access by purpose of use: who may read which patient's record, why, and for how long.

A doctor reads a person's record only with a purpose — the patient in their care at their
organization, an order being placed (CDS Hooks, a card link, an EHR launch) or emergency
break-glass with a reason — and a consultant only within a consultation's grant. A patient's
opt-out Consent keeps their record from crossing hospitals. ``AccessService`` turns a caller's
live grants into the ``AccessFilter`` that every FHIR query, ``$everything``, DICOMweb and the
workstation apply alike.
"""
