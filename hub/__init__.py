"""Yijian Hub (医检互认平台): the central service.

The hub holds the FHIR store and REST API, patient identity, recognition, security (auth,
consent, audit, encryption), background tasks, the command line and the web UI.
"""

__version__ = "0.1.0"
