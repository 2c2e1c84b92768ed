"""Telemedicine consultations: a requesting doctor shares part of a patient's record with a
consultant, with the patient's consent, for a limited time; the consultant replies."""
