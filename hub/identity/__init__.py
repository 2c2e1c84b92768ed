"""Patient identity: one hub (master) patient per person, linked to each hospital's records.

Modules, one job each:

- ``identifiers``  the identifier systems (NamingSystems in ``fhir_profiles``), validation and
                   normalisation of their values (GB 11643 checksum, 15 → 18 digits), masking
- ``names``        Chinese personal names compared in characters and in pinyin, with variants
- ``matching``     demographics of a Patient, blocking keys and the probabilistic score, with
                   weights and thresholds held as data (``fhir_profiles/identity``)
- ``protection``   identifier values encrypted at rest (AES-GCM) and found by a keyed hash
- ``links``        the link tables in PostgreSQL (links, features, events, reviews)
- ``service``      the identity service: match on every source write, masters, link/unlink/
                   merge/undo, ``$match`` and ``$ihe-pix``
"""
